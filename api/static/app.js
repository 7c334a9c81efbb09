// dinoserve web page: choose or drop an image → label, similar images, attention maps.
// Plain browser APIs only (no CDN, works offline).
"use strict";

const $ = (sel) => document.querySelector(sel);
// keyAnswers counts answered key prompts; keyEntered and keyRejected describe the last answer.
// sample: the example image being shown (overlay.js), null for a file of the user's own.
const state = { file: null, sample: null, meta: null, keyPrompt: null, keyAnswers: 0, keyEntered: false, keyRejected: false };
// The vote's parameters, sent with every /classify so that the page can say what it shows.
const K = 20, TEMPERATURE = 0.07;

// A response, or its error in the API's one shape as an Error.
async function ok(res) {
  if (res.ok) return res;
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error) message = `${body.error.message} (${body.error.code})`;
  } catch (_) { /* not JSON */ }
  throw new Error(message);
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.classList.toggle("show", Boolean(message));
}

// With DINOSERVE_API_KEY set, the API answers 401/403: ask for the key once and keep it in a
// SameSite=Strict cookie, which fetch() and <img src="/images/…"> then send (and other sites'
// pages do not). The probes and this page itself are served without a key.
function setKey(key) {
  const secure = location.protocol === "https:" ? "; Secure" : "";
  const life = key ? "" : "; max-age=0";  // no key: forget the stored one
  document.cookie = `dinoserve_key=${encodeURIComponent(key)}; path=/; SameSite=Strict${life}${secure}`;
}

// One prompt at a time: the requests of one image (classify, search, attention) that all
// answer 401 share it instead of asking three times. Resolves to whether a key was entered.
function askForKey(status) {
  if (!state.keyPrompt) {
    state.keyPrompt = new Promise((resolve) => {
      const key = window.prompt(status === 401 ? "This service needs an API key:" : "Wrong API key; try again:");
      const entered = Boolean(key && key.trim());
      if (entered) setKey(key.trim());
      state.keyAnswers += 1;
      state.keyEntered = entered;
      state.keyRejected = false;
      resolve(entered);
    }).finally(() => setTimeout(() => { state.keyPrompt = null; }, 0));
  }
  return state.keyPrompt;
}

async function call(path, options = {}, retried = false) {
  const answers = state.keyAnswers;
  const res = await fetch(path, options);
  const refused = res.status === 401 || res.status === 403;
  if (refused && !path.startsWith("/admin")) {
    if (!retried) {
      // A request sent before the prompt was answered comes back refused after it closed (a
      // slow attention map): it takes that answer instead of asking a second time.
      const entered = answers !== state.keyAnswers ? state.keyEntered : await askForKey(res.status);
      if (entered) {
        const again = await call(path, options, true);
        if (path !== "/model") header();  // the key works: the header may show the model now
        return again;
      }
    } else {
      setKey("");  // a wrong key is not kept: the next call asks again
      state.keyEntered = false;
      state.keyRejected = res.status === 403;
    }
    throw new Error(state.keyRejected
      ? "Wrong API key: it was not kept; choose an image again to enter another."
      : "This service needs an API key: reload the page or choose an image to enter it.");
  }
  return ok(res);
}

function params(extra = {}) {
  const p = new URLSearchParams(extra);
  const collection = $("#collection").value.trim();
  if (collection) p.set("collection", collection);
  return p.toString();
}

function form() {
  const data = new FormData();
  data.append("image", state.file, state.file.name || "upload");
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// A thumbnail of an indexed image of `collection` (the one the answer came from), captioned
// with its label and `value` (a similarity, or a voter's weight).
function card(hit, collection, value) {
  const src = `/images/${encodeURIComponent(hit.id)}?${new URLSearchParams({ collection })}`;
  const img = el("img", { src, alt: hit.label || "image", loading: "lazy" });
  const cap = el("div", { class: "cap" }, el("b", {}, hit.label ?? "—"), value);
  return el("div", { class: "card", "data-id": hit.id, title: hit.uri || "" }, img, cap);
}

// Each neighbour's share of the vote: exp(similarity / T), normalised over the k voters.
function weights(neighbors, temperature) {
  const w = neighbors.map((n) => Math.exp((n.score - neighbors[0].score) / temperature));
  const total = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / total);
}

async function classify() {
  const out = $("#prediction");
  try {
    const res = await call(`/classify?${params({ k: K, temperature: TEMPERATURE })}`,
      { method: "POST", body: form() });
    const body = await res.json();
    const bars = el("div", { class: "bars" });
    Object.entries(body.scores).sort((a, b) => b[1] - a[1]).slice(0, 5).forEach(([name, p]) => {
      const fill = el("div", { class: "fill" });
      fill.style.width = `${(p * 100).toFixed(1)}%`;
      bars.append(el("div", { class: "bar" }, el("span", {}, name), el("div", { class: "track" }, fill),
        el("span", { class: "pct" }, `${(p * 100).toFixed(0)}%`)));
    });
    out.replaceChildren(
      el("div", {}, el("span", { class: "label", id: "predicted-label" }, body.label),
        el("span", { class: "conf" }, `${(body.confidence * 100).toFixed(1)}% confidence`)),
      bars,
    );
    const share = weights(body.neighbors, TEMPERATURE);
    $("#voters-note").textContent = `k = ${K}: the ${body.neighbors.length} nearest labelled `
      + `images voted, each weighted exp(similarity / ${TEMPERATURE}); shown with its share.`;
    $("#neighbors").replaceChildren(...body.neighbors.map(
      (n, i) => card(n, body.collection, `${(share[i] * 100).toFixed(1)}%`)));
  } catch (err) {
    out.replaceChildren(el("div", { class: "empty" }, "No prediction."));
    throw err;
  }
}

async function search() {
  const res = await call(`/search?${params({ k: 12 })}`, { method: "POST", body: form() });
  const body = await res.json();
  const grid = $("#similar");
  grid.replaceChildren(...body.results.map((h) => card(h, body.collection, h.score.toFixed(3))));
  if (!body.results.length) grid.replaceChildren(el("div", { class: "empty" }, "No similar images."));
}

async function attention() {
  const threshold = $("#threshold").value || "0.6";
  const res = await call(`/attention?format=png&threshold=${encodeURIComponent(threshold)}`,
    { method: "POST", body: form() });
  const url = URL.createObjectURL(await res.blob());
  $("#attention").replaceChildren(el("img", { src: url, alt: "attention maps", id: "attention-img" }));
}

// Forget the previous image's answers: after an error nothing of another image stays shown.
function clearResults() {
  $("#prediction").replaceChildren(el("div", { class: "empty" }, "…"));
  $("#voters-note").textContent = "";
  $("#neighbors").replaceChildren();
  $("#similar").replaceChildren(el("div", { class: "empty" }, "…"));
  $("#attention").replaceChildren(el("div", { class: "empty" }, "…"));
  $("#overlay").replaceChildren();
}

async function analyse(file, sample = null) {
  state.file = file;
  state.sample = sample;
  if (!sample) document.querySelectorAll(".sample.chosen").forEach((b) => b.classList.remove("chosen"));
  showError("");
  clearResults();
  const preview = $("#preview");
  preview.hidden = true;
  preview.onload = () => { preview.hidden = false; };
  preview.onerror = () => { preview.hidden = true; };  // not an image the browser shows
  preview.src = URL.createObjectURL(file);
  document.body.classList.add("busy");
  const results = await Promise.allSettled([classify(), search(), attention(), overlay()]);
  document.body.classList.remove("busy");
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length) {
    showError([...new Set(failed)].join(" · "));  // the one place an error is told
    if (results[1].status === "rejected") $("#similar").replaceChildren(el("div", { class: "empty" }, "Nothing to show."));
    if (results[2].status === "rejected") $("#attention").replaceChildren(el("div", { class: "empty" }, "Nothing to show."));
    if (results[3].status === "rejected") $("#overlay").replaceChildren();
  }
}

async function header() {
  try {
    const meta = await (await call("/model")).json();
    state.meta = meta;
    $("#model").textContent = `${meta.name} · ${meta.version} · ${meta.embed_dim}-d`;
  } catch (err) {
    $("#model").textContent = "model unknown";
    showError(err.message);
  }
  try {
    await call("/readyz");
    $("#ready").className = "dot ok"; $("#ready").title = "ready";
  } catch (err) { $("#ready").className = "dot down"; $("#ready").title = err.message; }
}

function wire() {
  const drop = $("#drop"), input = $("#file");
  drop.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    const file = input.files[0];
    input.value = "";  // choosing the same file again (e.g. after entering the key) reruns it
    if (file) analyse(file);
  });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) analyse(f); });
  $("#threshold").addEventListener("change", () => state.file
    && Promise.all([attention(), overlay()]).catch((e) => showError(e.message)));
  $("#overlay-head").addEventListener("change", () => state.file && overlay().catch((e) => showError(e.message)));
  $("#collection").addEventListener("change", () => state.file && analyse(state.file));
  header();
}

document.addEventListener("DOMContentLoaded", wire);

// --- collections: add the image with a label, fix or delete a neighbour, counts -------------
// Writes need the write (or admin) key in a header whenever the service has keys: never the
// read key's cookie (another site's form could send that). Asked once, kept for this tab.
const collections = { default: null };

function targetCollection() {
  return $("#collection").value.trim() || collections.default;
}

async function writeCall(path, options = {}, retried = false) {
  const key = sessionStorage.getItem("dinoserve_write_key");
  const headers = new Headers(options.headers || {});
  if (key) headers.set("X-API-Key", key);
  const res = await fetch(path, { ...options, headers });
  if ((res.status === 401 || res.status === 403) && !retried) {
    const asked = window.prompt(res.status === 401 ? "Changing a collection needs the write key:"
      : "This key may not write; the write key:");
    if (asked) {
      sessionStorage.setItem("dinoserve_write_key", asked);
      return writeCall(path, options, true);
    }
  }
  return ok(res);
}

function imagesUrl(id = "") {
  const base = `/collections/${encodeURIComponent(targetCollection())}/images`;
  return id ? `${base}/${encodeURIComponent(id)}` : base;
}

async function loadCollections() {
  const list = $("#collections");
  try {
    const body = await (await call("/collections")).json();
    collections.default = body.default;
    const current = targetCollection();
    list.replaceChildren(...body.collections.map((c) => {
      const tags = el("div", { class: "tags" }, ...Object.entries(c.labels).slice(0, 12)
        .map(([name, n]) => el("span", { class: "tag" }, `${name} ${n}`)));
      const item = el("li", { class: `coll${c.name === current ? " current" : ""}`, "data-name": c.name,
        title: `${c.physical_collection}` },
        el("b", {}, c.name), " ",
        el("span", { class: "counts" }, `${c.points} images · ${c.labelled} labelled · ${c.model_version}`),
        tags);
      item.addEventListener("click", () => {
        $("#collection").value = c.name === body.default ? "" : c.name;
        $("#collection").dispatchEvent(new Event("change"));
        loadCollections();
      });
      return item;
    }));
    if (!body.collections.length) list.replaceChildren(el("li", { class: "empty" }, "No collections yet."));
  } catch (err) {
    list.replaceChildren(el("li", { class: "empty" }, `Collections unavailable: ${err.message}`));
  }
}

async function addImage(event) {
  event.preventDefault();
  if (!state.file) return;
  const status = $("#add-status");
  const label = $("#add-label").value.trim();
  const data = new FormData();
  data.append("images", state.file, state.file.name || "upload");
  if (label) data.append("label", label);
  try {
    const body = await (await writeCall(imagesUrl(), { method: "POST", body: data })).json();
    const unchanged = body.images[0].unchanged ? " (already there)" : "";
    status.textContent = `Added to ${body.collection}${label ? ` as “${label}”` : ""}${unchanged}.`;
    await loadCollections();
    await analyse(state.file); // the prediction and neighbours now include it
  } catch (err) {
    status.textContent = "";
    showError(`Not added: ${err.message}`);
  }
}

// The vote follows a relabel or a delete at once: classify the chosen image again.
function revote() {
  if (state.file) classify().catch((err) => showError(err.message));
}

// Neighbour cards get a label field (Enter saves) and a delete button.
function editable(card) {
  if (card.querySelector(".edit")) return;
  const id = card.getAttribute("data-id");
  const shown = card.querySelector(".cap b");
  const input = el("input", { value: shown && shown.textContent !== "—" ? shown.textContent : "",
    placeholder: "no label", "aria-label": "label" });
  const remove = el("button", { type: "button", title: "delete from the collection" }, "✕");
  input.addEventListener("keydown", async (e) => {
    if (e.key !== "Enter") return;
    const label = input.value.trim() || null;
    try {
      await writeCall(imagesUrl(id), { method: "PATCH", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ label }) });
      if (shown) shown.textContent = label ?? "—";
      card.classList.add("saved");
      loadCollections();
      revote();
    } catch (err) { showError(`Label not saved: ${err.message}`); }
  });
  remove.addEventListener("click", async () => {
    try {
      await writeCall(imagesUrl(id), { method: "DELETE" });
      document.querySelectorAll(`.card[data-id="${CSS.escape(id)}"]`).forEach((c) => c.remove());
      loadCollections();
      revote();
    } catch (err) { showError(`Not deleted: ${err.message}`); }
  });
  card.append(el("div", { class: "edit" }, input, remove));
}

function wireCollections() {
  $("#add-form").addEventListener("submit", addImage);
  // After wire()'s listener, which empties the input (to allow the same file again) and has
  // already handed the file to analyse(): state.file is the chosen image.
  $("#file").addEventListener("change", () => { $("#add-button").disabled = !state.file; });
  $("#drop").addEventListener("drop", () => { $("#add-button").disabled = false; });
  $("#collection").addEventListener("change", loadCollections);
  const grids = ["#neighbors", "#similar"].map((s) => $(s));
  const observer = new MutationObserver(() => grids.forEach((g) => g.querySelectorAll(".card").forEach(editable)));
  grids.forEach((g) => observer.observe(g, { childList: true }));
  loadCollections();
}

document.addEventListener("DOMContentLoaded", wireCollections);
