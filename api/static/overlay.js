// Example images to try (GET /samples), and the attention mask drawn over the image with the
// true mask beside it where the image is an example that has one. Uses app.js's $, el, call,
// state and form (classic scripts share one global scope).
"use strict";

const OVERLAY_PX = 224;

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = src;
  });
}

// The central square the model sees (resize, centre crop of crop_pct), drawn size × size.
function seen(img, size, cropPct) {
  const canvas = el("canvas", { width: size, height: size });
  const side = Math.min(img.naturalWidth, img.naturalHeight) * cropPct;
  const sx = (img.naturalWidth - side) / 2, sy = (img.naturalHeight - side) / 2;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, sx, sy, side, side, 0, 0, size, size);
  return canvas;
}

// The smallest set of patches holding `threshold` of the mass (as the service's masks).
function massMask(grid, threshold) {
  const flat = grid.flat();
  const total = flat.reduce((a, b) => a + b, 0) || 1;
  const order = flat.map((v, i) => [v, i]).sort((a, b) => a[0] - b[0]);
  const keep = new Array(flat.length).fill(false);
  let cum = 0;
  for (const [v, i] of order) { cum += v / total; keep[i] = cum > 1 - threshold; }
  return keep;
}

// The image with what lies outside `inside` (size² booleans) dimmed and its outline drawn.
function outlined(base, inside, colour) {
  const size = base.width;
  const canvas = el("canvas", { width: size, height: size, class: "overlay-canvas" });
  const ctx = canvas.getContext("2d");
  ctx.drawImage(base, 0, 0);
  const px = ctx.getImageData(0, 0, size, size);
  const [r, g, b] = [1, 3, 5].map((o) => parseInt(colour.slice(o, o + 2), 16));
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const i = y * size + x, o = 4 * i;
      const edge = inside[i] && (x === 0 || y === 0 || x === size - 1 || y === size - 1
        || !inside[i - 1] || !inside[i + 1] || !inside[i - size] || !inside[i + size]);
      if (edge) { px.data[o] = r; px.data[o + 1] = g; px.data[o + 2] = b; }
      else if (!inside[i]) { for (let c = 0; c < 3; c++) px.data[o + c] *= 0.3; }
    }
  }
  ctx.putImageData(px, 0, 0);
  return canvas;
}

function figure(canvas, caption) {
  return el("figure", {}, canvas, el("figcaption", {}, caption));
}

// The head choice: the heads' mean (one outline at a glance) or one head, as the service masks it.
function headOptions(count) {
  const select = $("#overlay-head");
  if (select.options.length === count + 1) return;
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "mean" }, "the heads' mean attention"),
    ...Array.from({ length: count }, (_, h) => el("option", { value: String(h) }, `head ${h}`)));
  select.value = Number(chosen) < count ? chosen : "mean";
}

// The attention-mask overlay of the chosen image; with an example's true mask, beside it, the
// Jaccard of the two and the share of the attention that falls on the object (against the
// object's share of the image, which a head spread evenly would give): the first depends on how
// a head spreads its mass, the second only on where it looks.
async function overlay() {
  const box = $("#overlay");
  const threshold = Number($("#threshold").value || "0.6");
  const res = await call(`/attention?format=json&threshold=${encodeURIComponent(threshold)}`,
    { method: "POST", body: form() });
  const body = await res.json();
  const [gh, gw] = body.grid;
  headOptions(body.attention.length);
  const head = $("#overlay-head").value;
  const map = head === "mean"
    ? Array.from({ length: gh }, (_, y) => Array.from({ length: gw },
      (_, x) => body.attention.reduce((s, h) => s + h[y][x], 0) / body.attention.length))
    : body.attention[Number(head)];
  const keep = massMask(map, threshold);
  const cropPct = (state.meta && state.meta.crop_pct) || 1;
  const base = seen(await loadImage(URL.createObjectURL(state.file)), OVERLAY_PX, cropPct);
  const cell = (i) => Math.floor(Math.floor(i / OVERLAY_PX) * gh / OVERLAY_PX) * gw
    + Math.floor((i % OVERLAY_PX) * gw / OVERLAY_PX);
  const predicted = Array.from({ length: OVERLAY_PX * OVERLAY_PX }, (_, i) => keep[cell(i)]);
  const whose = head === "mean" ? "the heads' mean attention" : `head ${head}'s attention`;
  const tiles = [figure(outlined(base, predicted, "#6ea8fe"),
    `attention mask: the ${body.cell && body.cell < body.patch_size ? `${body.cell}-px cells` : "patches"} `
    + `holding ${Math.round(threshold * 100)}% of ${whose}`
    + (body.smooth ? ` (the map smoothed, σ ${body.smooth} cells)` : ""))];
  const sample = state.sample;
  if (sample && sample.mask) {
    const maskImg = await loadImage(URL.createObjectURL(await (await call(sample.mask)).blob()));
    const m = seen(maskImg, OVERLAY_PX, cropPct).getContext("2d").getImageData(0, 0, OVERLAY_PX, OVERLAY_PX).data;
    const truth = Array.from({ length: OVERLAY_PX * OVERLAY_PX }, (_, i) => m[4 * i] >= 128);
    let inter = 0, union = 0, area = 0, onObject = 0, mass = 0;
    const flat = map.flat();
    truth.forEach((t, i) => {
      inter += t && predicted[i]; union += t || predicted[i]; area += t;
      const a = flat[cell(i)];  // each pixel carries its patch's attention
      mass += a; onObject += t ? a : 0;
    });
    const j = union ? inter / union : 1;
    const figureEl = figure(outlined(base, truth, "#4cc38a"), "");
    figureEl.querySelector("figcaption").replaceChildren(
      el("span", { id: "mask-jaccard" }, `true mask of ${sample.name}: Jaccard with the attention mask ${j.toFixed(2)}`),
      el("br"),
      el("span", { id: "mask-mass" }, `${Math.round(100 * onObject / (mass || 1))}% of the attention on the object, `
        + `which is ${Math.round(100 * area / truth.length)}% of the image`));
    tiles.push(figureEl);
  }
  box.replaceChildren(...tiles);
}

// A row of example images (DINOSERVE_SAMPLES_DIR): one click classifies, searches and shows
// the attention of one, as a dropped file would.
async function loadSamples() {
  const panel = $("#samples"), strip = $("#sample-strip");
  let body;
  try {
    body = await (await call("/samples")).json();
  } catch (_) { return; }  // an older service, or no key yet: the row stays hidden
  const shown = body.results.slice(0, 10);
  if (!shown.length) return;
  strip.replaceChildren(...shown.map((s) => {
    const button = el("button", { type: "button", class: "sample", title: s.name, "data-name": s.name },
      el("img", { src: s.image, alt: s.label || s.name }));
    button.addEventListener("click", () => pickSample(s, button));
    return button;
  }));
  panel.hidden = false;
}

async function pickSample(sample, button) {
  try {
    const blob = await (await call(sample.image)).blob();
    document.querySelectorAll(".sample.chosen").forEach((b) => b.classList.remove("chosen"));
    button.classList.add("chosen");
    const base = sample.name.split("/").pop();
    await analyse(new File([blob], base, { type: blob.type || "image/png" }), sample);
    $("#add-button").disabled = false;
  } catch (err) { showError(err.message); }
}

document.addEventListener("DOMContentLoaded", loadSamples);
