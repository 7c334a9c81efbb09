// dinoserve web page: choose or drop an image → label, similar images, attention maps.
// Plain browser APIs only (no CDN, works offline).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { file: null };

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.classList.toggle("show", Boolean(message));
}

// With DINOSERVE_API_KEY set, the API answers 401/403: ask for the key once and keep it in a
// SameSite=Strict cookie, which fetch() and <img src="/images/…"> then send (and other sites'
// pages do not). The probes and this page itself are served without a key.
function askForKey(status) {
  const key = window.prompt(status === 401 ? "This service needs an API key:" : "Wrong API key; try again:");
  if (!key) return false;
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `dinoserve_key=${encodeURIComponent(key)}; path=/; SameSite=Strict${secure}`;
  return true;
}

async function call(path, options = {}, retried = false) {
  const res = await fetch(path, options);
  if ((res.status === 401 || res.status === 403) && !path.startsWith("/admin") && !retried
      && askForKey(res.status)) {
    return call(path, options, true);
  }
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body && body.error) message = `${body.error.message} (${body.error.code})`;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return res;
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

function card(hit) {
  const img = el("img", { src: `/images/${encodeURIComponent(hit.id)}`, alt: hit.label || "image", loading: "lazy" });
  const cap = el("div", { class: "cap" }, el("b", {}, hit.label ?? "—"), hit.score.toFixed(3));
  return el("div", { class: "card", "data-id": hit.id, title: hit.uri || "" }, img, cap);
}

async function classify() {
  const out = $("#prediction");
  try {
    const res = await call(`/classify?${params()}`, { method: "POST", body: form() });
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
    $("#neighbors").replaceChildren(...body.neighbors.slice(0, 8).map(card));
  } catch (err) {
    out.replaceChildren(el("div", { class: "empty" }, `No prediction: ${err.message}`));
    $("#neighbors").replaceChildren();
    throw err;
  }
}

async function search() {
  const res = await call(`/search?${params({ k: 12 })}`, { method: "POST", body: form() });
  const body = await res.json();
  const grid = $("#similar");
  grid.replaceChildren(...body.results.map(card));
  if (!body.results.length) grid.replaceChildren(el("div", { class: "empty" }, "No similar images."));
}

async function attention() {
  const threshold = $("#threshold").value || "0.6";
  const res = await call(`/attention?format=png&threshold=${encodeURIComponent(threshold)}`,
    { method: "POST", body: form() });
  const url = URL.createObjectURL(await res.blob());
  $("#attention").replaceChildren(el("img", { src: url, alt: "attention maps", id: "attention-img" }));
}

async function analyse(file) {
  state.file = file;
  showError("");
  const preview = $("#preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  document.body.classList.add("busy");
  const results = await Promise.allSettled([classify(), search(), attention()]);
  document.body.classList.remove("busy");
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length) showError([...new Set(failed)].join(" · "));
}

async function header() {
  try {
    const meta = await (await call("/model")).json();
    $("#model").textContent = `${meta.name} · ${meta.version} · ${meta.embed_dim}-d`;
  } catch (err) { $("#model").textContent = "no model"; }
  try {
    await call("/readyz");
    $("#ready").className = "dot ok"; $("#ready").title = "ready";
  } catch (err) { $("#ready").className = "dot down"; $("#ready").title = err.message; }
}

function wire() {
  const drop = $("#drop"), input = $("#file");
  drop.addEventListener("click", () => input.click());
  input.addEventListener("change", () => input.files[0] && analyse(input.files[0]));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) analyse(f); });
  $("#threshold").addEventListener("change", () => state.file && attention().catch((e) => showError(e.message)));
  $("#collection").addEventListener("change", () => state.file && analyse(state.file));
  header();
}

document.addEventListener("DOMContentLoaded", wire);
