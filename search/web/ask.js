// "Ask about these": select hits in the grid, ask a vision-language model about them, watch the answer stream.
// Kept apart from app.js: it only watches the grid for cards and talks to /api/conversations.
"use strict";

(() => {
  const panel = document.querySelector("#ask");
  const grid = document.querySelector("#grid");
  const form = panel.querySelector("form");
  const question = form.elements.question;
  const log = panel.querySelector(".log");
  const chosen = panel.querySelector(".chosen");
  const selected = new Map(); // image id -> thumbnail url, in the order picked
  let conversation = null; // {id, images}: a new one starts whenever the selection changes

  async function call(url, options = {}) {
    const response = await fetch(url, { credentials: "same-origin", headers: { "Content-Type": "application/json" }, ...options });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
      throw new Error(detail || `${response.status} ${response.statusText}`);
    }
    return response;
  }

  function render() {
    panel.hidden = selected.size === 0;
    chosen.replaceChildren(
      ...[...selected].map(([id, src]) => {
        const img = document.createElement("img");
        img.src = src;
        img.alt = `image ${id}`;
        return img;
      }),
    );
    for (const box of grid.querySelectorAll(".pick input")) box.checked = selected.has(Number(box.value));
  }

  function selectionChanged() {
    if (conversation) call(`/api/conversations/${conversation.id}`, { method: "DELETE" }).catch(() => {});
    conversation = null;
    log.replaceChildren();
    render();
  }

  function toggle(id, src, on) {
    if (on) selected.set(id, src);
    else selected.delete(id);
    selectionChanged();
  }

  // Every card the grid gets also gets a checkbox that adds its image to the selection.
  function addPicker(li) {
    const hit = li.querySelector(".hit");
    if (!hit || li.querySelector(".pick")) return;
    const id = Number(hit.dataset.id);
    const label = document.createElement("label");
    label.className = "pick";
    label.title = "Select to ask about it";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = id;
    box.checked = selected.has(id);
    box.setAttribute("aria-label", "Select to ask about this image");
    box.addEventListener("change", () => toggle(id, hit.querySelector("img").src, box.checked));
    label.append(box);
    li.append(label);
  }
  new MutationObserver(() => grid.querySelectorAll(".hit-wrap").forEach(addPicker)).observe(grid, { childList: true });

  function entry(cls, text) {
    const p = document.createElement("p");
    p.className = cls;
    p.textContent = text;
    log.append(p);
    log.scrollTop = log.scrollHeight;
    return p;
  }

  // The answer arrives as Server-Sent Events on a POST, so it is read from the fetch body, not EventSource.
  async function stream(response, onEvent) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = block.match(/^event: (.*)$/m)?.[1];
        const data = block.match(/^data: (.*)$/m)?.[1];
        if (event && data) onEvent(event, JSON.parse(data));
      }
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = question.value.trim();
    if (!text) return;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    entry("question", text);
    const answer = entry("answer pending", "");
    try {
      if (!conversation) {
        const body = JSON.stringify({ image_ids: [...selected.keys()] });
        conversation = await (await call("/api/conversations", { method: "POST", body })).json();
      }
      const body = JSON.stringify({ question: text });
      const response = await call(`/api/conversations/${conversation.id}/questions`, { method: "POST", body });
      question.value = "";
      await stream(response, (name, data) => {
        if (name === "token") answer.textContent += data.text;
        if (name === "done") answer.textContent = data.answer;
        if (name === "error") throw new Error(data.detail);
        log.scrollTop = log.scrollHeight;
      });
    } catch (error) {
      answer.classList.add("error");
      answer.textContent = error.message;
    } finally {
      answer.classList.remove("pending");
      button.disabled = false;
      question.focus();
    }
  });

  panel.querySelector(".clear").addEventListener("click", async () => {
    if (conversation) await call(`/api/conversations/${conversation.id}/history`, { method: "DELETE" }).catch(() => {});
    log.replaceChildren();
  });
  panel.querySelector(".close").addEventListener("click", () => {
    selected.clear();
    selectionChanged();
  });
})();
