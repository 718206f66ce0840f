// clipdex web page: plain DOM and fetch, no build step.
"use strict";

const PAGE = 24;
const $ = (sel) => document.querySelector(sel);
const form = $("#search");
const grid = $("#grid");
const status = $("#status");
const more = $("#more");
const fileInput = $("#file");

// What the grid shows: {kind: "browse"} (the collection newest first, narrowed by the filters) | {kind: "folders"}
// | {kind: "text", q, like: [{id, name}]} | {kind: "image", file} | {kind: "similar", id, name}
// | {kind: "duplicates"} | {kind: "clusters"} | {kind: "cluster", number, title}. Every kind but an upload is also
// a URL (/, /?folder=..., /?view=folders, /?q=..., /?similar=ID, /?view=duplicates, /?view=clusters&cluster=N).
const FILTERS = ["folder", "tag", "keyword", "taken_from", "taken_to", "min_score"];
let current = null;
let offset = 0;
let latest = 0; // the newest run: answers to older ones arrive late and are dropped
const hitOf = new WeakMap(); // a grid cell -> its hit, so the photo view knows a video's moments

// Seconds as a clock: 42 -> "0:42", 3723 -> "1:02:03".
function clock(seconds) {
  const s = Math.floor(seconds);
  const mmss = `${Math.floor((s % 3600) / 60)}:${String(s % 60).padStart(2, "0")}`;
  return s >= 3600 ? `${Math.floor(s / 3600)}:${mmss.padStart(5, "0")}` : mmss;
}

function filterParams() {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  $("#filter-count").textContent = [...params.keys()].length || "";
  if (form.elements.relevant.checked) params.set("relevant", "true");
  return params;
}

// The address of what the grid shows, so a search is a link and the back button steps through searches.
function pageUrl() {
  const params = filterParams();
  params.delete("relevant");
  if (!form.elements.relevant.checked) params.set("relevant", "false");
  if (current.kind === "text") {
    if (current.q) params.set("q", current.q);
    for (const image of current.like) params.append("like", image.id);
    if (form.elements.mode.value !== "hybrid") params.set("mode", form.elements.mode.value);
    if (form.elements.sort.value !== "score") params.set("sort", form.elements.sort.value);
  } else if (current.kind === "similar") {
    params.set("similar", current.id);
  } else if (["duplicates", "clusters", "folders"].includes(current.kind)) {
    params.set("view", current.kind);
  } else if (current.kind === "cluster") {
    params.set("view", "clusters");
    params.set("cluster", current.number);
  }
  return params.size ? `/?${params}` : "/";
}

// The page for an address: fills the form from it and shows what it names.
async function openUrl() {
  const params = new URLSearchParams(location.search);
  for (const name of FILTERS) form.elements[name].value = params.get(name) || "";
  form.elements.mode.value = params.get("mode") || "hybrid";
  form.elements.sort.value = params.get("sort") || "score";
  form.elements.relevant.checked = params.get("relevant") !== "false";
  form.elements.q.value = params.get("q") || "";
  if ([...FILTERS, "mode", "sort"].some((name) => params.get(name))) $("#filters").open = true;
  $("#query-image").hidden = true;
  const like = params.getAll("like").filter((id) => /^\d+$/.test(id));
  const cluster = params.get("cluster") || "";
  if (params.get("view") === "duplicates" || params.get("view") === "folders") current = { kind: params.get("view") };
  else if (params.get("view") === "clusters" && /^\d+$/.test(cluster)) {
    current = { kind: "cluster", number: cluster, title: `cluster ${cluster}` };
  } else if (params.get("view") === "clusters") current = { kind: "clusters" };
  else if (/^\d+$/.test(params.get("similar") || "")) current = { kind: "similar", id: params.get("similar") };
  else if (params.get("q") || like.length) current = { kind: "text", q: params.get("q") || "", like: like.map((id) => ({ id })) };
  else current = { kind: "browse" };
  const shown = current.kind === "similar" ? [current] : current.like || [];
  await Promise.all(shown.map(async (image) => {
    image.name = await api(`/api/images/${image.id}`).then((info) => info.name, () => `image ${image.id}`);
  }));
  showQuery();
  run(false, false);
}

async function api(url, options = {}) {
  const response = await fetch(url, { credentials: "same-origin", ...options });
  if (response.status === 401) {
    // The service has an API key: ask once, keep it in a cookie so thumbnails (plain <img>) carry it too.
    const key = prompt("This clipdex needs its API key:");
    if (key) {
      document.cookie = `clipdex_api_key=${encodeURIComponent(key)}; path=/; SameSite=Strict`;
      return api(url, options);
    }
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(body.detail)
      ? body.detail.map((d) => `${d.loc.at(-1)}: ${d.msg}`).join("; ")
      : body.detail;
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return body;
}

async function run(append = false, remember = true) {
  if (!current) return;
  more.textContent = current.kind === "browse" ? "More photos" : "More results";
  if (!append) $("#drop-marked").hidden = true;
  if (current.kind === "browse") return showBrowse(append, remember);
  if (current.kind === "folders") return showFolders(remember);
  if (current.kind === "duplicates") return showDuplicates(append, remember);
  if (current.kind === "clusters") return showClusters(remember);
  const mine = ++latest;
  offset = append ? offset + PAGE : 0;
  if (!append && remember && current.kind !== "image" && pageUrl() !== location.pathname + location.search) {
    history.pushState(null, "", pageUrl());
  }
  const params = filterParams();
  params.set("k", PAGE);
  params.set("offset", offset);
  const started = performance.now();
  let request;
  if (current.kind === "text") {
    params.set("q", current.q);
    for (const image of current.like) params.append("like", image.id);
    params.set("mode", form.elements.mode.value);
    params.set("sort", form.elements.sort.value);
    request = api(`/api/search?${params}`);
  } else if (current.kind === "cluster") {
    params.delete("k"); // here k is the number of clusters: the clustering /api/clusters chose
    params.set("limit", PAGE);
    request = api(`/api/clusters/${current.number}/images?${params}`);
  } else if (current.kind === "image") {
    const body = new FormData();
    body.append("file", current.file);
    request = api(`/api/search/image?${params}`, { method: "POST", body });
  } else {
    request = api(`/api/images/${current.id}/similar?${params}`);
  }
  status.classList.remove("error");
  status.textContent = "Searching…";
  try {
    const { hits } = await request;
    if (mine !== latest) return;
    if (!append) grid.replaceChildren();
    grid.className = "";
    hits.forEach((hit, i) => grid.append(card(hit, offset + i)));
    const ms = Math.round(performance.now() - started);
    const shown = grid.children.length;
    if (shown) status.textContent = `${shown} result${shown === 1 ? "" : "s"} ${describe()} · ${ms} ms`;
    else if (form.elements.relevant.checked) showClosestOffer();
    else status.textContent = `Nothing found ${describe()}.`;
    more.hidden = hits.length < PAGE;
    $("#hint").hidden = true;
    if (!append && shown && current.kind !== "text") grid.querySelector(".hit").focus({ preventScroll: true });
  } catch (error) {
    if (mine !== latest) return;
    status.classList.add("error");
    status.textContent = error.message;
    more.hidden = true;
  }
}

// "Only relevant" found nothing: say so, and offer the plain ranking in one click.
function showClosestOffer() {
  status.textContent = `Nothing stands out ${describe()}: no image scores clearly above the rest. `;
  const closest = document.createElement("button");
  closest.type = "button";
  closest.id = "closest";
  closest.textContent = "Show the closest matches";
  closest.addEventListener("click", () => {
    form.elements.relevant.checked = false;
    run();
  });
  status.append(closest);
}

function describe() {
  if (current.kind === "text" && current.like.length) {
    const names = current.like.map((image) => image.name).join(", ");
    return current.q ? `like ${names}, but “${current.q}”` : `like ${names}`;
  }
  if (current.kind === "text") return `for “${current.q}”`;
  if (current.kind === "image") return `like ${current.file.name || "your image"}`;
  if (current.kind === "cluster") return `in ${current.title}, most typical first`;
  return `like ${current.name}`;
}

// A cell of the grid: a search hit (click: images like it) or, without a score, a photo of the collection (click:
// its larger view). A video shows the frame of its best moment (the API's thumbnail), with a badge: the second of
// that moment in a search, its length in the collection.
function card(hit, rank) {
  const li = document.createElement("li");
  li.className = "hit-wrap";
  const button = document.createElement("button");
  button.className = "hit";
  button.type = "button";
  button.dataset.id = hit.id;
  hitOf.set(button, hit);
  const thumb = document.createElement("span");
  thumb.className = "thumb";
  const img = document.createElement("img");
  img.src = hit.thumbnail_url;
  img.alt = hit.caption || hit.name;
  img.loading = "lazy";
  thumb.append(img);
  let video = "";
  if (hit.media === "video") {
    const seconds = hit.score == null ? hit.duration_s : hit.timestamp_s;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = seconds == null ? "▶" : `▶ ${clock(seconds)}`;
    thumb.append(badge);
    if (seconds == null) video = ", video";
    else video = hit.score == null ? `, video of ${clock(seconds)}` : `, video at ${clock(seconds)}`;
  }
  button.append(thumb);
  if (hit.score == null) {
    const date = hit.date.replace("T", " ").slice(0, 16);
    button.title = `${hit.path}\n${hit.taken_at ? "Taken" : "File dated"} ${date}\nClick to view larger`;
    button.setAttribute("aria-label", `${hit.name}${video}, ${date}. View larger`);
    button.addEventListener("click", () => viewImage(hit.id, hit));
  } else {
    button.title = `${hit.path}\nClick for similar images`;
    const relevance = hit.relevance == null ? "" : `, relevance ${hit.relevance.toFixed(1)}`;
    button.setAttribute("aria-label", `${rank + 1}: ${hit.name}${video}, score ${hit.score.toFixed(3)}${relevance}. Show similar images`);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3) + (hit.relevance == null ? "" : ` · ${hit.relevance.toFixed(1)}σ`);
    score.title = hit.relevance == null ? "cosine similarity" : "cosine similarity · spreads above this query's typical score";
    button.append(score);
    button.addEventListener("click", () => showSimilar(hit));
  }
  const meta = document.createElement("span");
  meta.className = "meta";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = hit.name;
  meta.append(name);
  if (hit.caption) {
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = hit.caption;
    meta.append(caption);
  }
  button.append(meta);
  li.append(button);
  if (hit.score == null) return li; // a photo of the collection opens its larger view by itself
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.title = "View larger, with its details";
  open.setAttribute("aria-label", `View ${hit.name}`);
  open.textContent = "⤢";
  open.addEventListener("click", () => viewImage(hit.id, hit));
  li.append(open);
  return li;
}

function showQueryImage(src, label, name) {
  const box = $("#query-image");
  box.hidden = false;
  box.querySelector("img").src = src;
  box.querySelector("strong").textContent = label;
  box.querySelector(".name").textContent = name;
}

// The query image box, for what `current` holds.
function showQuery() {
  $("#query-image").hidden = true;
  if (current.kind === "similar") showQueryImage(`/api/images/${current.id}/thumbnail`, "Similar to", current.name);
  if (current.kind === "text" && current.like.length) {
    const first = current.like[0];
    showQueryImage(`/api/images/${first.id}/thumbnail`, "Like", current.q ? `${first.name}, but “${current.q}”` : first.name);
  }
}

function showSimilar(hit) {
  current = { kind: "similar", id: hit.id, name: hit.name };
  showQuery();
  window.scrollTo({ top: 0, behavior: "smooth" });
  run();
}

function searchByFile(file) {
  if (!file) return;
  current = { kind: "image", file };
  showQueryImage(URL.createObjectURL(file), "Similar to", file.name || "your image");
  run();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = form.elements.q.value.trim();
  if (q) current = { kind: "text", q, like: [] };
  else if (!current || current.kind === "text") current = { kind: "browse" }; // an empty search: the collection
  if (current.kind === "text" || current.kind === "browse") $("#query-image").hidden = true;
  run();
});
more.addEventListener("click", () => run(true));
fileInput.addEventListener("change", () => searchByFile(fileInput.files[0]));
$("#pick").addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    fileInput.click();
  }
});
$("#clear-filters").addEventListener("click", () => {
  for (const name of FILTERS) form.elements[name].value = "";
  run();
});
for (const name of ["taken_from", "taken_to", "mode", "sort", "relevant"]) {
  form.elements[name].addEventListener("change", () => run());
}
window.addEventListener("popstate", () => {
  viewer.close();
  openUrl();
});
for (const kind of ["folders", "duplicates", "clusters"]) {
  $(`#show-${kind}`).addEventListener("click", () => {
    current = { kind };
    $("#query-image").hidden = true;
    run();
  });
}

// --- the larger view of one photo: its metadata, captions and tags; "more like this, but..." ----------------

const viewer = $("#viewer");
const frame = viewer.querySelector(".photo");
const player = viewer.querySelector("video");

// `hit`: the grid's hit, when the view opens from one: a video then plays from its best moment, and lists the
// other moments found.
async function viewImage(id, hit = null) {
  const info = await api(`/api/images/${id}`).catch((error) => {
    status.classList.add("error");
    status.textContent = error.message;
  });
  if (!info) return;
  viewer.dataset.id = info.id;
  viewer.dataset.name = info.name;
  stopPlayer();
  const img = viewer.querySelector("img");
  img.src = info.media === "video" ? info.thumbnail_url : info.image_url;
  img.alt = info.captions[0] || info.name;
  if (info.media === "video") playVideo(info, hit);
  else viewer.querySelector(".moments").hidden = true;
  viewer.querySelector(".live").hidden = !info.motion_url;
  viewer.dataset.motion = info.motion_url || "";
  viewer.querySelector("h2").textContent = info.name;
  const facts = [
    ["Path", info.path],
    ["Taken", info.taken_at ? info.taken_at.replace("T", " ").slice(0, 16) : "unknown"],
    ["Size", `${info.width ?? "?"} × ${info.height ?? "?"} px · ${(info.size / 1e6).toFixed(1)} MB · ${info.format || "?"}`],
    ...(info.duration_s == null ? [] : [["Length", clock(info.duration_s)]]),
    ...info.captions.map((text) => ["Caption", text]),
  ];
  if (info.title) facts.push(["Title", info.title]);
  if (info.description) facts.push(["Description", info.description]);
  if (info.keywords.length) facts.push(["Keywords", info.keywords.join(", ")]);
  if (info.tags.length) facts.push(["Tags", info.tags.map((t) => `${t.label} (${t.score.toFixed(2)})`).join(", ")]);
  if (info.text.length) facts.push(["Text", info.text.map((line) => line.text).join(" · ")]);
  drawTextBoxes(info.text);
  viewer.querySelector("dl").replaceChildren(
    ...facts.flatMap(([name, value]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = value;
      return [dt, dd];
    }),
  );
  viewer.querySelector("a.original").href = info.image_url;
  viewer.querySelector("form").reset();
  viewer.showModal();
}

// A video in the view: loaded from its best moment (a media fragment: the browser seeks there once it knows the
// length), its poster that moment's frame; the moments a search found (else its scenes, the kept frames) are
// buttons that seek, in time order.
function playVideo(info, hit) {
  const found = hit?.moments?.length ? hit.moments : null;
  const start = found ? hit.timestamp_s : info.timestamp_s;
  frame.classList.add("video");
  player.hidden = false;
  player.poster = hit?.thumbnail_url || info.thumbnail_url;
  player.src = `${info.image_url}#t=${start}`;
  player.setAttribute("aria-label", `${info.name}, from ${clock(start)}`);
  const moments = found || info.frames.map((seconds) => ({ timestamp_s: seconds }));
  const box = viewer.querySelector(".moments");
  box.hidden = moments.length < 2;
  box.setAttribute("aria-label", found ? "Matching moments" : "Scenes");
  box.querySelector(".label").textContent = found ? "Matching moments" : "Scenes";
  const buttons = [...moments].sort((a, b) => a.timestamp_s - b.timestamp_s).map((moment) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = clock(moment.timestamp_s);
    button.dataset.seconds = moment.timestamp_s;
    button.setAttribute("aria-label", `Play from ${clock(moment.timestamp_s)}`);
    if (moment.score != null) button.title = `score ${moment.score.toFixed(3)}`;
    if (moment.timestamp_s === start) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => {
      box.querySelector("[aria-current]")?.removeAttribute("aria-current");
      button.setAttribute("aria-current", "true");
      player.currentTime = moment.timestamp_s;
      player.play().catch(() => {}); // a browser may refuse to play; the seek stands
    });
    return button;
  });
  box.replaceChildren(box.querySelector(".label"), ...buttons);
}

// Nothing plays once the view shows something else or closes.
function stopPlayer() {
  player.pause();
  player.removeAttribute("src");
  player.removeAttribute("poster");
  player.load();
  player.hidden = true;
  frame.classList.remove("video", "live");
}

// A Live Photo's movie plays over its still, once, then the still shows again.
viewer.querySelector(".live").addEventListener("click", () => {
  stopPlayer();
  frame.classList.add("live");
  player.hidden = false;
  player.src = viewer.dataset.motion;
  player.setAttribute("aria-label", `${viewer.dataset.name}, Live Photo`);
  player.play().catch(() => {});
});
player.addEventListener("ended", () => {
  if (frame.classList.contains("live")) stopPlayer();
});

// The lines read in the photo, outlined where they sit; those holding a word of the current query stand out.
function drawTextBoxes(lines) {
  const svg = viewer.querySelector("svg");
  const words = current?.kind === "text" ? current.q.toLowerCase().match(/[\p{L}\p{N}]+/gu) || [] : [];
  svg.replaceChildren(
    ...lines.map((line) => {
      const shape = document.createElementNS("http://www.w3.org/2000/svg", "polygon");
      shape.setAttribute("points", line.box.map(([x, y]) => `${x * 100},${y * 100}`).join(" "));
      const text = line.text.toLowerCase();
      if (words.some((word) => text.includes(word))) shape.classList.add("match");
      const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      title.textContent = `${line.text} (${Math.round(line.confidence * 100)}%)`;
      shape.append(title);
      return shape;
    }),
  );
}

viewer.querySelector(".close").addEventListener("click", () => viewer.close());
viewer.addEventListener("close", () => {
  stopPlayer();
  grid.querySelector(`.hit[data-id="${viewer.dataset.id}"]`)?.focus();
});
viewer.addEventListener("keydown", async (event) => {
  const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
  // A shown video seeks with the arrows when focused (Chromium's dialog focuses the player even while hidden).
  if (step === undefined || event.target.matches("input, video:not([hidden])")) return;
  event.preventDefault();
  let cells = [...grid.querySelectorAll(".hit")];
  const at = cells.findIndex((cell) => cell.dataset.id === viewer.dataset.id);
  if (step > 0 && at === cells.length - 1 && !more.hidden) {
    await run(true); // past the last photo loaded: the next page, so the arrows go through everything
    cells = [...grid.querySelectorAll(".hit")];
  }
  const next = cells[at + step];
  if (next) viewImage(next.dataset.id, hitOf.get(next));
});
viewer.addEventListener("click", (event) => {
  if (event.target === viewer) viewer.close(); // a click on the backdrop
});
viewer.querySelector(".similar").addEventListener("click", () => {
  viewer.close();
  showSimilar({ id: viewer.dataset.id, name: viewer.dataset.name });
});
viewer.querySelector("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const but = event.target.elements.but.value.trim();
  viewer.close();
  if (!but) return showSimilar({ id: viewer.dataset.id, name: viewer.dataset.name });
  current = { kind: "text", q: but, like: [{ id: viewer.dataset.id, name: viewer.dataset.name }] };
  form.elements.q.value = but;
  showQuery();
  run();
});

// --- the collection without a query: photos newest first under year and month headings, page after page ---------

const DEFAULT_PLACEHOLDER = form.elements.q.placeholder;
let before = null; // the last photo shown: the next page starts after it
let lastMonth = ""; // the "YYYY-MM" of the last photo shown, to head each new month (and year)

async function showBrowse(append, remember) {
  const mine = ++latest;
  if (!append && remember && pageUrl() !== location.pathname + location.search) history.pushState(null, "", pageUrl());
  const params = filterParams();
  params.delete("relevant");
  params.delete("min_score"); // a cut-off of a ranking: browsing has none
  params.set("k", PAGE);
  if (append) params.set("before", before);
  const folder = form.elements.folder.value.trim();
  form.elements.q.placeholder = folder ? `Search in ${folder.split("/").filter(Boolean).at(-1) || folder}` : DEFAULT_PLACEHOLDER;
  status.classList.remove("error");
  if (!append) status.textContent = "Loading the photos…";
  more.hidden = true; // shown again below, when there is more: scrolling it into view loads the next page
  try {
    const { photos, next_before } = await api(`/api/images?${params}`);
    if (mine !== latest) return;
    if (!append) {
      grid.replaceChildren();
      lastMonth = "";
    }
    grid.className = "timeline";
    for (const photo of photos) {
      const month = photo.date.slice(0, 7);
      if (month.slice(0, 4) !== lastMonth.slice(0, 4)) grid.append(heading("year", month.slice(0, 4)));
      if (month !== lastMonth) grid.append(heading("month", monthName(month)));
      lastMonth = month;
      grid.append(card(photo));
    }
    before = next_before;
    const shown = grid.querySelectorAll(".hit").length;
    const where = folder ? ` in ${folder}` : "";
    const filtered = [...filterParams().keys()].some((name) => name !== "relevant" && name !== "folder");
    status.textContent = shown
      ? `${shown} photo${shown === 1 ? "" : "s"}${where}, newest first${next_before ? " · scroll for more" : ""}`
      : `No photos${where}${filtered ? " that meet the filters" : ""}.`;
    $("#hint").hidden = Boolean(shown || folder || filtered);
    more.hidden = next_before == null;
  } catch (error) {
    if (mine !== latest) return;
    status.classList.add("error");
    status.textContent = error.message;
  }
}

function heading(level, text) {
  const li = document.createElement("li");
  li.className = level;
  const h = document.createElement(level === "year" ? "h2" : "h3");
  h.textContent = text;
  li.append(h);
  return li;
}

function monthName(month) {
  const [year, number] = month.split("-").map(Number);
  return new Date(Date.UTC(year, number - 1)).toLocaleString(undefined, { month: "long", year: "numeric", timeZone: "UTC" });
}

// The next page loads as the "More photos" button nears the viewport (it stays a button for those who click).
new IntersectionObserver((entries) => {
  if (entries.some((entry) => entry.isIntersecting) && current?.kind === "browse" && !more.hidden) run(true);
}, { rootMargin: "400px" }).observe(more);

// --- folders: the indexed roots and the folders under them with their counts; one opens its photos ---------------

async function showFolders(remember) {
  const mine = ++latest;
  if (remember && pageUrl() !== location.pathname + location.search) history.pushState(null, "", pageUrl());
  status.classList.remove("error");
  status.textContent = "Counting the folders…";
  try {
    const [folders, stats] = await Promise.all([api("/api/folders"), api("/api/stats")]);
    if (mine !== latest) return;
    grid.replaceChildren();
    grid.className = "folders";
    for (const folder of folders) {
      const li = document.createElement("li");
      li.className = "folder";
      const depth = folder.folder ? folder.folder.split("/").length : 0;
      li.style.setProperty("--depth", depth);
      const button = document.createElement("button");
      button.type = "button";
      button.title = `${folder.path}\nShow its photos, newest first, and search in it`;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = depth ? folder.folder.split("/").at(-1) : folder.root;
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = folder.images.toLocaleString();
      button.append(name, count);
      button.addEventListener("click", () => {
        form.elements.folder.value = folder.path;
        current = { kind: "browse" };
        run();
      });
      li.append(button);
      grid.append(li);
    }
    const skipped = stats.skipped ? " (clipdex stats --skipped says why)" : "";
    status.textContent = `${stats.indexed.toLocaleString()} images indexed, ${stats.skipped.toLocaleString()} skipped${skipped} · ${folders.length} folder${folders.length === 1 ? "" : "s"}`;
    more.hidden = true;
    $("#hint").hidden = true;
    grid.querySelector(".folder button")?.focus({ preventScroll: true });
  } catch (error) {
    if (mine !== latest) return;
    status.classList.add("error");
    status.textContent = error.message;
  }
}

// --- duplicates: groups of copies side by side, the suggested keeper first --------------------------------------

const GROUPS_PAGE = 20;

async function showDuplicates(append, remember) {
  const mine = ++latest;
  offset = append ? offset + GROUPS_PAGE : 0;
  if (!append && remember && pageUrl() !== location.pathname + location.search) history.pushState(null, "", pageUrl());
  const params = new URLSearchParams({ limit: GROUPS_PAGE, offset });
  const folder = form.elements.folder.value.trim();
  if (folder) params.set("folder", folder);
  status.classList.remove("error");
  status.textContent = "Looking for duplicates… (a large collection takes a while the first time)";
  try {
    const { groups, total } = await api(`/api/duplicates?${params}`);
    if (mine !== latest) return;
    if (!append) grid.replaceChildren();
    grid.className = "groups";
    for (const group of groups) grid.append(duplicateGroup(group));
    const mb = (bytes) => (bytes / 1e6).toFixed(1);
    status.textContent = total
      ? `${total} group${total === 1 ? "" : "s"} of copies and similar shots${folder ? ` in ${folder}` : ""}, exact copies first, then copies of one picture, then similar shots; clipdex deletes nothing`
      : "No duplicates found.";
    if (groups.length) status.textContent += ` · this page: ${mb(groups.reduce((s, g) => s + g.reclaimable_bytes, 0))} MB besides the keepers`;
    more.hidden = offset + groups.length >= total;
    $("#hint").hidden = true;
  } catch (error) {
    if (mine !== latest) return;
    status.classList.add("error");
    status.textContent = error.message;
  }
}

// What each kind of group is called (the API's DuplicateGroupPublic.kind).
const KIND_NAMES = { exact: "exact copies", "same-picture": "copies of one picture", similar: "similar shots" };

function duplicateGroup(group) {
  const title = `${group.members.length} ${KIND_NAMES[group.kind]} · ${(group.reclaimable_bytes / 1e6).toFixed(1)} MB besides the keeper`;
  return thumbGroup(title, group.members.map((member, i) => ({
    id: member.id,
    thumbnail_url: member.thumbnail_url,
    name: member.path.split("/").at(-1),
    title: member.path,
    keeper: i === 0,
    droppable: i > 0,
    note: `${i === 0 ? "keep · " : ""}${member.width ?? "?"}×${member.height ?? "?"}${member.taken_at ? ` · ${member.taken_at.slice(0, 10)}` : ""} · ${group.kind === "same-picture" ? `${member.distance} bits` : member.similarity.toFixed(3)}`,
  })));
}

// A row of thumbnails under a title (a duplicate group, a cluster); a click shows a photo's details.
function thumbGroup(title, items) {
  const li = document.createElement("li");
  li.className = "group";
  const heading = document.createElement("p");
  heading.textContent = title;
  const row = document.createElement("div");
  row.className = "members";
  for (const item of items) {
    const figure = document.createElement("button");
    figure.type = "button";
    figure.className = "member" + (item.keeper ? " keeper" : "");
    figure.title = `${item.title}\nClick for its details`;
    const img = document.createElement("img");
    img.src = item.thumbnail_url;
    img.alt = item.title;
    img.loading = "lazy";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = item.name;
    const note = document.createElement("span");
    note.textContent = item.note;
    figure.append(img, name, note);
    figure.addEventListener("click", () => viewImage(item.id));
    row.append(item.droppable ? dropMark(figure, item) : figure);
  }
  li.append(heading, row);
  return li;
}

// A duplicate to drop is marked with a box under it; the marked move to their roots' trash folders, never deleted.
function dropMark(figure, item) {
  const wrap = document.createElement("div");
  wrap.className = "droppable";
  const label = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.className = "drop";
  box.value = item.id;
  box.addEventListener("change", () => {
    $("#drop-marked").hidden = !document.querySelector("input.drop:checked");
  });
  label.append(box, " drop");
  wrap.append(figure, label);
  return wrap;
}

$("#drop-marked").addEventListener("click", async () => {
  const ids = [...document.querySelectorAll("input.drop:checked")].map((box) => Number(box.value));
  status.classList.remove("error");
  try {
    const moved = await api("/api/trash", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ids }),
    });
    $("#drop-marked").hidden = true;
    await showDuplicates(false, false);
    status.textContent = `Moved ${moved.length} photo${moved.length === 1 ? "" : "s"} to the trash (clipdex trash restore brings them back). ` + status.textContent;
  } catch (error) {
    status.classList.add("error");
    status.textContent = error.message;
  }
});

// --- clusters: the collection in groups of look-alikes, each named and shown by its most typical photos ------------

async function showClusters(remember) {
  const mine = ++latest;
  if (remember && pageUrl() !== location.pathname + location.search) history.pushState(null, "", pageUrl());
  status.classList.remove("error");
  status.textContent = "Grouping the collection… (a large one takes a while the first time)";
  try {
    const result = await api("/api/clusters?typical=8");
    if (mine !== latest) return;
    grid.replaceChildren();
    grid.className = "groups";
    for (const cluster of result.clusters) {
      const names = cluster.labels.map((l) => l.label).join(", ");
      const title = `Cluster ${cluster.number} · ${cluster.size.toLocaleString()} image${cluster.size === 1 ? "" : "s"} · ${names}`;
      const group = thumbGroup(title, cluster.typical.map((hit) => ({
        id: hit.id, thumbnail_url: hit.thumbnail_url, name: hit.name, title: hit.path, note: hit.score.toFixed(3),
      })));
      const all = document.createElement("button");
      all.type = "button";
      all.className = "all";
      all.textContent = `Show all ${cluster.size.toLocaleString()}`;
      all.addEventListener("click", () => {
        current = { kind: "cluster", number: cluster.number, title: `cluster ${cluster.number} (${names})` };
        run();
      });
      group.querySelector("p").append(" ", all);
      grid.append(group);
    }
    status.textContent = `${result.clusters.length} clusters of ${result.images.toLocaleString()} images, largest first (k ${result.k}: ${result.chosen}) · ${result.seconds.toFixed(1)} s`;
    more.hidden = true;
    $("#hint").hidden = true;
  } catch (error) {
    if (mine !== latest) return;
    status.classList.add("error");
    status.textContent = error.message;
  }
}

openUrl();

// Drag and drop anywhere on the page.
const drop = $("#drop");
let dragDepth = 0;
document.addEventListener("dragenter", (event) => {
  if (![...event.dataTransfer.types].includes("Files")) return;
  dragDepth += 1;
  drop.hidden = false;
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) drop.hidden = true;
});
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  drop.hidden = true;
  searchByFile(event.dataTransfer.files[0]);
});
// Pasting an image searches by it too.
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) searchByFile(file);
});

// Keyboard: "/" to search, arrows to move through the grid, Escape back to the box.
// The cell above or below `from`: in the nearest row that way, the one nearest across. Rows are found by position,
// since the timeline's headings break the grid into rows of any length; by the cells' list items, which do not
// move (a focused cell is lifted a little).
function verticalNeighbour(cells, from, down) {
  const box = from.closest("li").getBoundingClientRect();
  const x = box.left + box.width / 2;
  const centre = (cell) => {
    const b = cell.closest("li").getBoundingClientRect();
    return { cell, top: b.top, x: b.left + b.width / 2 };
  };
  const beyond = cells.map(centre).filter((c) => (down ? c.top > box.top + 1 : c.top < box.top - 1));
  if (!beyond.length) return null;
  const rowTop = down ? Math.min(...beyond.map((c) => c.top)) : Math.max(...beyond.map((c) => c.top));
  const row = beyond.filter((c) => Math.abs(c.top - rowTop) <= 1);
  return row.reduce((best, c) => (Math.abs(c.x - x) < Math.abs(best.x - x) ? c : best)).cell;
}

document.addEventListener("keydown", (event) => {
  const typing = event.target.matches("input, textarea");
  if (event.key === "/" && !typing) {
    event.preventDefault();
    form.elements.q.focus();
    form.elements.q.select();
    return;
  }
  if (event.key === "Escape") {
    form.elements.q.focus();
    return;
  }
  if (event.key === "ArrowDown" && event.target === form.elements.q) {
    event.preventDefault();
    grid.querySelector(".hit")?.focus();
    return;
  }
  if (!event.target.matches(".hit, .folder button")) return;
  const cells = [...grid.querySelectorAll(".hit, .folder button")];
  const at = cells.indexOf(event.target);
  let next;
  if (event.key === "ArrowRight") next = cells[at + 1] || event.target;
  else if (event.key === "ArrowLeft") next = cells[at - 1];
  else if (event.key === "ArrowDown") next = verticalNeighbour(cells, event.target, true) || cells.at(-1);
  else if (event.key === "ArrowUp") next = verticalNeighbour(cells, event.target, false);
  else return;
  event.preventDefault();
  (next || form.elements.q).focus();
});
