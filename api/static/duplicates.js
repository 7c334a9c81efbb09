// dinoserve web page, "Duplicates": groups of near-duplicate images of the collection
// (GET /collections/{name}/duplicates), a row of thumbnails per group, a page at a time.
// Uses app.js's helpers (call, el, card, targetCollection, showError); loaded after it.
"use strict";

const DUP_PAGE = 10;
const dups = { offset: 0, collection: null, threshold: "" };

function dupRow(group, collection) {
  const head = el("div", { class: "dup-head" },
    el("b", {}, `${group.size} images`),
    ` · min similarity ${group.min_similarity.toFixed(3)} · weakest link ${group.min_edge.toFixed(3)}`);
  const row = el("div", { class: "grid dup-row" },
    ...group.members.map((m) => card(m, collection, m.similarity.toFixed(3))));
  return el("div", { class: "dup-group" }, head, row);
}

async function findDuplicates(more = false) {
  const out = $("#duplicates");
  const button = $("#dup-find");
  if (!more) {
    dups.offset = 0;
    dups.collection = targetCollection();
    dups.threshold = $("#dup-threshold").value.trim();
  }
  if (!dups.collection) return;
  const p = new URLSearchParams({ offset: dups.offset, limit: DUP_PAGE });
  if (dups.threshold) p.set("threshold", dups.threshold);
  button.disabled = true;
  out.classList.add("busy");
  try {
    const url = `/collections/${encodeURIComponent(dups.collection)}/duplicates?${p}`;
    const body = await (await call(url)).json();
    const rows = body.groups.map((g) => dupRow(g, body.collection));
    const summary = el("p", { class: "empty", id: "dup-summary" },
      `${body.total_groups} groups (${body.duplicated} of ${body.points} images) at similarity ≥ ${body.threshold}`
      + ` in ${body.collection}`);
    if (!more) out.replaceChildren(summary); else $("#dup-more")?.remove();
    out.append(...rows);
    dups.offset += body.groups.length;
    if (dups.offset < body.total_groups) {
      const next = el("button", { type: "button", id: "dup-more" }, "More groups");
      next.addEventListener("click", () => findDuplicates(true));
      out.append(next);
    }
    showError("");
  } catch (e) {
    out.replaceChildren(el("div", { class: "empty" }, "No groups."));
    showError(e.message);
  } finally {
    button.disabled = false;
    out.classList.remove("busy");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#dup-find").addEventListener("click", () => findDuplicates(false));
});
