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

// The attention-mask overlay of the chosen image; with an example's true mask, beside it.
async function overlay() {
  const box = $("#overlay");
  const threshold = Number($("#threshold").value || "0.6");
  const res = await call(`/attention?format=json&threshold=${encodeURIComponent(threshold)}`,
    { method: "POST", body: form() });
  const body = await res.json();
  const [gh, gw] = body.grid;
  // The heads' mean attention, then its own mask: one outline at a glance (per head: below).
  const mean = Array.from({ length: gh }, (_, y) => Array.from({ length: gw },
    (_, x) => body.attention.reduce((s, head) => s + head[y][x], 0) / body.attention.length));
  const keep = massMask(mean, threshold);
  const cropPct = (state.meta && state.meta.crop_pct) || 1;
  const base = seen(await loadImage(URL.createObjectURL(state.file)), OVERLAY_PX, cropPct);
  const predicted = new Array(OVERLAY_PX * OVERLAY_PX);
  for (let y = 0; y < OVERLAY_PX; y++) {
    for (let x = 0; x < OVERLAY_PX; x++) {
      predicted[y * OVERLAY_PX + x] = keep[Math.floor(y * gh / OVERLAY_PX) * gw + Math.floor(x * gw / OVERLAY_PX)];
    }
  }
  const tiles = [figure(outlined(base, predicted, "#6ea8fe"),
    `attention mask: the patches holding ${Math.round(threshold * 100)}% of the heads' mean attention`)];
  const sample = state.sample;
  if (sample && sample.mask) {
    const maskImg = await loadImage(URL.createObjectURL(await (await call(sample.mask)).blob()));
    const m = seen(maskImg, OVERLAY_PX, cropPct).getContext("2d").getImageData(0, 0, OVERLAY_PX, OVERLAY_PX).data;
    const truth = Array.from({ length: OVERLAY_PX * OVERLAY_PX }, (_, i) => m[4 * i] >= 128);
    let inter = 0, union = 0;
    truth.forEach((t, i) => { inter += t && predicted[i]; union += t || predicted[i]; });
    const j = union ? inter / union : 1;
    tiles.push(figure(outlined(base, truth, "#4cc38a"),
      `true mask of ${sample.name}: Jaccard with the attention mask ${j.toFixed(2)}`));
    tiles[tiles.length - 1].querySelector("figcaption").id = "mask-jaccard";
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
