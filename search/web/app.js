// clipdex web page: plain DOM and fetch, no build step.
"use strict";

const PAGE = 24;
const $ = (sel) => document.querySelector(sel);
const form = $("#search");
const grid = $("#grid");
const status = $("#status");
const more = $("#more");
const fileInput = $("#file");

// What the grid shows: {kind: "text", q} | {kind: "image", file} | {kind: "similar", id, name, thumb}
let current = null;
let offset = 0;
let latest = 0; // the newest run: answers to older ones arrive late and are dropped

function filterParams() {
  const params = new URLSearchParams();
  for (const name of ["folder", "tag", "taken_from", "taken_to", "min_score"]) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  $("#filter-count").textContent = [...params.keys()].length || "";
  return params;
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

async function run(append = false) {
  if (!current) return;
  const mine = ++latest;
  offset = append ? offset + PAGE : 0;
  const params = filterParams();
  params.set("k", PAGE);
  params.set("offset", offset);
  const started = performance.now();
  let request;
  if (current.kind === "text") {
    params.set("q", current.q);
    params.set("mode", form.elements.mode.value);
    request = api(`/api/search?${params}`);
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
    hits.forEach((hit, i) => grid.append(card(hit, offset + i)));
    const ms = Math.round(performance.now() - started);
    const shown = grid.children.length;
    status.textContent = shown ? `${shown} result${shown === 1 ? "" : "s"} ${describe()} · ${ms} ms` : `Nothing found ${describe()}.`;
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

function describe() {
  if (current.kind === "text") return `for “${current.q}”`;
  if (current.kind === "image") return `like ${current.file.name || "your image"}`;
  return `like ${current.name}`;
}

function card(hit, rank) {
  const li = document.createElement("li");
  li.className = "hit-wrap";
  const button = document.createElement("button");
  button.className = "hit";
  button.type = "button";
  button.dataset.id = hit.id;
  button.title = `${hit.path}\nClick for similar images`;
  button.setAttribute("aria-label", `${rank + 1}: ${hit.name}, score ${hit.score.toFixed(3)}. Show similar images`);
  const img = document.createElement("img");
  img.src = hit.thumbnail_url;
  img.alt = hit.caption || hit.name;
  img.loading = "lazy";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
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
  button.append(img, score, meta);
  button.addEventListener("click", () => showSimilar(hit));
  const open = document.createElement("a");
  open.className = "open";
  open.href = hit.image_url;
  open.target = "_blank";
  open.rel = "noopener";
  open.title = "Open the full image";
  open.setAttribute("aria-label", `Open ${hit.name}`);
  open.textContent = "↗";
  li.append(button, open);
  return li;
}

function showQueryImage(src, name) {
  const box = $("#query-image");
  box.hidden = false;
  box.querySelector("img").src = src;
  box.querySelector(".name").textContent = name;
}

function showSimilar(hit) {
  current = { kind: "similar", id: hit.id, name: hit.name };
  showQueryImage(hit.thumbnail_url, hit.name);
  window.scrollTo({ top: 0, behavior: "smooth" });
  run();
}

function searchByFile(file) {
  if (!file) return;
  current = { kind: "image", file };
  showQueryImage(URL.createObjectURL(file), file.name || "your image");
  run();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = form.elements.q.value.trim();
  if (q) {
    current = { kind: "text", q };
    $("#query-image").hidden = true;
  }
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
  for (const name of ["folder", "tag", "taken_from", "taken_to", "min_score"]) form.elements[name].value = "";
  run();
});
for (const name of ["taken_from", "taken_to", "mode"]) form.elements[name].addEventListener("change", () => run());

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
function columns() {
  const cells = [...grid.querySelectorAll(".hit")];
  if (cells.length < 2) return 1;
  const top = cells[0].getBoundingClientRect().top;
  const index = cells.findIndex((c) => c.getBoundingClientRect().top !== top);
  return index === -1 ? cells.length : index;
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
  if (!event.target.classList.contains("hit")) return;
  const cells = [...grid.querySelectorAll(".hit")];
  const at = cells.indexOf(event.target);
  const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() }[event.key];
  if (step === undefined) return;
  event.preventDefault();
  const next = at + step;
  if (next < 0) form.elements.q.focus();
  else cells[Math.min(next, cells.length - 1)].focus();
});
