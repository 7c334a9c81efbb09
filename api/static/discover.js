// dinoserve web page, "Discover" view: the groups the model found in a collection (clusters of
// its embeddings, POST /collections/{name}/clusters), one row of thumbnails per cluster, each
// with a box to name the whole cluster at once (POST …/clusters/{job}/{n}/label).
// Loaded after app.js, whose helpers it uses: $, el, call (read key), writeCall (the write
// key prompt), showError, targetCollection and loadCollections.
"use strict";

const discover = { job: null, collection: null };

function clustersUrl(collection, rest = "") {
  return `/collections/${encodeURIComponent(collection)}/clusters${rest}`;
}

function pct(v) {
  return v === null || v === undefined ? "–" : `${(v * 100).toFixed(0)}%`;
}

function showDiscover(on) {
  $("#discover-view").hidden = !on;
  document.querySelector("main").hidden = on;
  $("#discover-tab").setAttribute("aria-pressed", String(on));
  $("#discover-tab").classList.toggle("active", on);
  if (on) $("#discover-collection").textContent = targetCollection() || "the default collection";
}

function buildDiscover() {
  const k = el("input", { id: "discover-k", type: "number", min: "2", max: "50", placeholder: "auto",
    "aria-label": "number of clusters (empty: chosen automatically)" });
  const seed = el("input", { id: "discover-seed", type: "number", min: "0", value: "0", "aria-label": "seed" });
  const method = el("select", { id: "discover-method", "aria-label": "clustering method" },
    el("option", { value: "auto" }, "auto"), el("option", { value: "spectral" }, "neighbour graph"),
    el("option", { value: "kmeans" }, "k-means"));
  const run = el("button", { id: "discover-run", type: "submit" }, "Find clusters");
  const controls = el("form", { id: "discover-form", class: "row" },
    el("label", {}, "k ", k), el("label", {}, "seed ", seed), el("label", {}, "method ", method), run);
  controls.addEventListener("submit", (e) => { e.preventDefault(); findClusters(); });
  $("#discover-view").replaceChildren(el("section", {},
    el("h2", {}, "Discover: clusters of ", el("span", { id: "discover-collection" }, "…")),
    el("p", { class: "empty" }, "Groups the model found without labels (neighbour-graph clusters of the embeddings). "
      + "Name a cluster to label all its images at once; /classify uses the labels at once."),
    controls,
    el("div", { id: "discover-status", class: "empty" }),
    el("div", { id: "discover-summary" }),
    el("div", { id: "clusters" })));
}

async function findClusters() {
  const collection = targetCollection();
  const body = { seed: Number($("#discover-seed").value || 0), method: $("#discover-method").value };
  if ($("#discover-k").value) body.k = Number($("#discover-k").value);
  const status = $("#discover-status");
  showError("");
  $("#discover-run").disabled = true;
  try {
    status.textContent = "Starting…";
    let record = await (await writeCall(clustersUrl(collection), { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).json();
    while (record.state === "running") {
      const p = record.progress;
      status.textContent = `Job ${record.job}: ${p.phase}${p.total ? ` ${p.done} / ${p.total}` : ""}…`;
      await new Promise((r) => setTimeout(r, 500));
      record = await (await call(clustersUrl(collection, `/${record.job}`))).json();
    }
    if (record.state !== "done") throw new Error(`clustering ${record.state}: ${record.error}`);
    status.textContent = `Job ${record.job}, ${record.seconds ?? 0} s.`;
    render(record);
  } catch (err) {
    status.textContent = "";
    showError(`Clusters: ${err.message}`);
  } finally {
    $("#discover-run").disabled = false;
  }
}

function render(record) {
  discover.job = record.job;
  discover.collection = record.collection;
  const r = record.result;
  const labelled = r.labelled ? ` · ${r.labelled} labelled · purity ${pct(r.purity)} · NMI ${r.nmi.toFixed(2)}` : "";
  const how = r.algorithm === "SpectralClustering" ? `neighbour graph (${r.graph_neighbors} neighbours)` : r.algorithm;
  $("#discover-summary").textContent = `k = ${r.k} (${r.k_chosen_by}) · ${how} · ${r.points} images${labelled}`;
  $("#clusters").replaceChildren(...r.clusters.map(clusterRow));
}

function clusterRow(c) {
  const majority = c.majority_label ? `${c.majority_label} ${pct(c.purity)}` : "no labels";
  const name = el("input", { placeholder: c.majority_label || "name this cluster", "aria-label": `name of cluster ${c.cluster}` });
  const save = el("button", { type: "submit" }, "Name");
  const done = el("span", { class: "named empty" });
  const form = el("form", { class: "row name" }, name, save);
  form.addEventListener("submit", (e) => { e.preventDefault(); nameCluster(c, name, done, row); });
  const thumbs = el("div", { class: "thumbs" }, ...c.nearest.map((n) => {
    const src = `/images/${encodeURIComponent(n.id)}?${new URLSearchParams({ collection: discover.collection })}`;
    return el("img", { src, alt: n.label || "image", title: `${n.label ?? "no label"} · ${n.similarity.toFixed(3)}`, loading: "lazy" });
  }));
  const row = el("div", { class: "cluster", "data-cluster": String(c.cluster) },
    el("div", { class: "head" }, el("b", {}, `#${c.cluster}`), el("span", { class: "size" }, `${c.size} images`),
      el("span", { class: "purity" }, majority), form, done),
    thumbs);
  return row;
}

async function nameCluster(c, input, done, row) {
  const label = input.value.trim();
  if (!label) return;
  try {
    const url = clustersUrl(discover.collection, `/${discover.job}/${c.cluster}/label`);
    const body = await (await writeCall(url, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ label }) })).json();
    done.textContent = `“${label}”: ${body.labelled} labelled`;
    row.classList.add("saved");
    loadCollections();
  } catch (err) { showError(`Cluster not named: ${err.message}`); }
}

function wireDiscover() {
  buildDiscover();
  $("#discover-tab").addEventListener("click", () => showDiscover($("#discover-view").hidden));
  $("#collection").addEventListener("change", () => {
    if (!$("#discover-view").hidden) showDiscover(true);
  });
}

document.addEventListener("DOMContentLoaded", wireDiscover);
