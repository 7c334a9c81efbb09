"""Cluster jobs over HTTP (api/routes/clusters.py) on the indexed synthetic shapes: the job, its
cache, labelling a cluster (and /classify after it), restarts, keys and the error shape."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from discovery.clusters import ClusterParams, Tuning
from discovery.results import ClusterResults, new_record


def wait_done(client, name: str, job: str, timeout: float = 60, **headers) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/collections/{name}/clusters/{job}", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["state"] != "running":
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def run_clusters(client, name: str = "shapes", **body) -> dict:
    r = client.post(f"/collections/{name}/clusters", json=body)
    assert r.status_code in (200, 202), r.text
    return r.json() if r.status_code == 200 else wait_done(client, name, r.json()["job"])


@pytest.fixture
def discovery(tmp_path) -> dict:
    return {"clusters_dir": str(tmp_path / "clusters")}


def test_job_result_and_cache(make_client, discovery):
    client = make_client(discovery=discovery)
    r = client.post("/collections/shapes/clusters", json={"k": 10, "seed": 3})
    assert r.status_code == 202
    started = r.json()
    assert started["state"] in ("running", "done") and len(started["job"]) == 12
    done = wait_done(client, "shapes", started["job"])
    assert done["state"] == "done" and done["error"] is None
    result = done["result"]
    assert result["k"] == 10 and result["points"] == 120 and result["labelled"] == 120
    assert 0 < result["purity"] <= 1 and 0 <= result["nmi"] <= 1
    clusters = result["clusters"]
    assert sum(c["size"] for c in clusters) == 120
    assert [c["size"] for c in clusters] == sorted((c["size"] for c in clusters), reverse=True)
    for c in clusters:
        assert "members" not in c and 1 <= len(c["nearest"]) <= 12
        assert c["majority_label"] and 0 < c["purity"] <= 1
        assert {"id", "uri", "label", "similarity"} <= set(c["nearest"][0])

    # The same request on the unchanged collection: the cached result at once (200).
    again = client.post("/collections/shapes/clusters", json={"k": 10, "seed": 3})
    assert again.status_code == 200 and again.json()["job"] == started["job"]
    assert again.json()["result"] == result
    assert result["algorithm"] == "SpectralClustering" and result["graph_neighbors"] >= 10
    # Another seed is another job, and so is another method.
    other = client.post("/collections/shapes/clusters", json={"k": 10, "seed": 4})
    assert other.status_code == 202 and other.json()["job"] != started["job"]
    wait_done(client, "shapes", other.json()["job"])
    km = client.post("/collections/shapes/clusters", json={"k": 10, "seed": 3, "method": "kmeans"})
    assert km.status_code == 202 and km.json()["job"] != started["job"]
    assert wait_done(client, "shapes", km.json()["job"])["result"]["algorithm"] == "KMeans"

    # Members, a page at a time, nearest first.
    first = client.get(f"/collections/shapes/clusters/{started['job']}/0?limit=3").json()
    assert first["size"] == clusters[0]["size"] and len(first["members"]) == 3
    assert [m["id"] for m in first["members"]] == [n["id"] for n in clusters[0]["nearest"][:3]]
    rest = client.get(
        f"/collections/shapes/clusters/{started['job']}/0",
        params={"offset": first["next_offset"], "limit": 10_000},
    ).json()
    assert rest["next_offset"] is None and len(rest["members"]) == first["size"] - 3


def test_a_job_seen_done_is_cached_and_frees_the_runner(make_client, discovery, monkeypatch):
    """A client that sees "done" gets the cache (200) and may start another job at once (202):
    the end is published only after the record is saved, and with the runner freed. Saving the
    done record slowly widens the window in which it used to be seen early."""
    from discovery.results import ClusterResults

    save = ClusterResults.save

    def slow_save(self, record):
        if record.get("state") == "done":
            time.sleep(0.3)
        save(self, record)

    monkeypatch.setattr(ClusterResults, "save", slow_save)
    client = make_client(discovery=discovery)
    started = client.post("/collections/shapes/clusters", json={"k": 3, "seed": 1}).json()
    assert wait_done(client, "shapes", started["job"])["state"] == "done"
    again = client.post("/collections/shapes/clusters", json={"k": 3, "seed": 1})
    assert again.status_code == 200 and again.json()["job"] == started["job"]
    other = client.post("/collections/shapes/clusters", json={"k": 3, "seed": 2})
    assert other.status_code == 202, other.text
    wait_done(client, "shapes", other.json()["job"])


def test_change_to_the_collection_invalidates_the_cache(make_client, discovery):
    client = make_client(discovery=discovery)
    first = run_clusters(client, k=4)
    some = first["result"]["clusters"][0]["nearest"][0]["id"]
    assert (
        client.patch(f"/collections/shapes/images/{some}", json={"label": "x"}).status_code == 200
    )
    r = client.post("/collections/shapes/clusters", json={"k": 4})
    assert r.status_code == 202 and r.json()["job"] != first["job"]
    second = wait_done(client, "shapes", r.json()["job"])
    # The same vectors and seed: the same clusters, with the new label.
    nearest = {n["id"]: n["label"] for c in second["result"]["clusters"] for n in c["nearest"]}
    assert nearest[some] == "x"
    # The first job's result stays readable under its id.
    assert client.get(f"/collections/shapes/clusters/{first['job']}").json()["state"] == "done"


def test_labelling_a_cluster_changes_classify_for_its_members(make_client, discovery):
    client = make_client(discovery=discovery)
    done = run_clusters(client, k=10, seed=0)
    job, c = done["job"], done["result"]["clusters"][0]
    url = f"/collections/shapes/clusters/{job}/0/label"

    none = client.post(url, json={"label": "near", "max_distance": 0}).json()
    assert none["selected"] <= 1 and none["labelled"] == none["selected"]

    r = client.post(url, json={"label": "zebra"})
    assert r.status_code == 200, r.text
    assert r.json()["labelled"] == r.json()["selected"] == r.json()["members"] == c["size"]
    info = client.get("/collections/shapes").json()
    assert info["labels"]["zebra"] == c["size"]
    # Each member's own image now votes for "zebra" (its own point is its nearest neighbour).
    for near in c["nearest"][:3]:
        data = Path(near["uri"]).read_bytes()
        got = client.post("/classify?k=1", files={"image": ("x.png", data, "image/png")}).json()
        assert got["label"] == "zebra", got
    members = client.get(f"/collections/shapes/clusters/{job}/0?limit=10000").json()["members"]
    assert len({m["id"] for m in members}) == c["size"]

    # Within a distance of the centre: only those.
    cut = 1 - members[len(members) // 2]["similarity"]
    some = client.post(url, json={"label": "okapi", "max_distance": cut}).json()
    assert 0 < some["selected"] < c["size"] or c["size"] < 3
    assert client.get("/collections/shapes").json()["labels"]["okapi"] == some["labelled"]


def test_results_survive_a_restart_and_a_cut_job_reads_interrupted(make_client, discovery):
    first = make_client(discovery=discovery)
    done = run_clusters(first, k=5)
    first.__exit__(None, None, None)  # the service stops; a new one starts on the same state
    second = make_client(discovery=discovery)
    assert (
        second.get(f"/collections/shapes/clusters/{done['job']}").json()["result"]
        == (done["result"])
    )
    again = second.post("/collections/shapes/clusters", json={"k": 5})
    assert again.status_code == 200 and again.json()["job"] == done["job"]

    # A job that was running when its service died: its record still says "running".
    physical = done["physical_collection"]
    cut = new_record("shapes", physical, ClusterParams(k=7), Tuning(), "k" * 32)
    ClusterResults(Path(discovery["clusters_dir"])).save(cut)
    seen = second.get(f"/collections/shapes/clusters/{cut['job']}").json()
    assert seen["state"] == "interrupted" and "start it again" in seen["error"]
    label = second.post(f"/collections/shapes/clusters/{cut['job']}/0/label", json={"label": "a"})
    assert label.status_code == 409 and label.json()["error"]["code"] == "job_not_done"


JSON = {"Content-Type": "application/json"}


def _error(r, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    if code:
        assert body["error"]["code"] == code, body


def test_errors_in_the_one_shape(make_client, discovery):
    client = make_client(discovery=discovery)
    _error(client.post("/collections/nope/clusters", json={"k": 3}), 404, "unknown_collection")
    _error(client.post("/collections/shapes/clusters", json={"k": 1}), 422, "invalid_parameter")
    _error(client.post("/collections/shapes/clusters", json={"k": 1001}), 422, "invalid_parameter")
    _error(client.post("/collections/shapes/clusters", content=b"{", headers=JSON), 422)
    _error(client.post("/collections/shapes/clusters", content=b"k=3"), 415)
    _error(client.post("/collections/shapes/clusters", json={"kk": 3}), 422, "invalid_parameter")
    _error(client.post("/collections/shapes/clusters", json={"k_min": 9, "k_max": 3}), 422)
    bad = {"k": 3, "method": "dbscan"}
    _error(client.post("/collections/shapes/clusters", json=bad), 422, "invalid_parameter")
    _error(client.post("/collections/a__b/clusters", json={"k": 3}), 422, "invalid_collection")
    _error(client.get("/collections/shapes/clusters/0123456789ab"), 404, "unknown_job")
    _error(client.get("/collections/shapes/clusters/../x"), 404)
    _error(client.get("/collections/shapes/clusters/NOTAJOB"), 422, "invalid_parameter")
    # Too few points for k: the job fails and says why.
    r = client.post("/collections/nolabels/clusters", json={"k": 30})
    failed = wait_done(client, "nolabels", r.json()["job"])
    assert failed["state"] == "failed" and "cannot make 30 clusters" in failed["error"]
    r = client.post("/collections/nolabels/clusters", json={"k_min": 6, "k_max": 9})
    failed = wait_done(client, "nolabels", r.json()["job"])
    assert failed["state"] == "failed" and "no k to try in 6..9 for 20 points" in failed["error"]
    done = run_clusters(client, "nolabels", k=2)
    assert done["result"]["purity"] is None and done["result"]["nmi"] is None
    _error(client.get(f"/collections/nolabels/clusters/{done['job']}/2"), 404, "unknown_cluster")
    _error(client.get(f"/collections/shapes/clusters/{done['job']}"), 404, "unknown_job")
    _error(client.post(f"/collections/nolabels/clusters/{done['job']}/0/label", json={}), 422)
    _error(
        client.post(
            f"/collections/nolabels/clusters/{done['job']}/0/label",
            json={"label": "a", "max_distance": 3},
        ),
        422,
    )
    # `stale` holds another model version's embeddings: clusters, yes; labels through the
    # write path, no (as for PATCH).
    stale = run_clusters(client, "stale", k=2)
    _error(
        client.post(f"/collections/stale/clusters/{stale['job']}/0/label", json={"label": "a"}),
        409,
        "model_version_mismatch",
    )


def test_keys(make_client, discovery):
    client = make_client(discovery=discovery, api_key="read", write_api_key="write")
    read, write = {"X-API-Key": "read"}, {"X-API-Key": "write"}
    _error(client.post("/collections/shapes/clusters", json={"k": 3}), 401)
    _error(client.post("/collections/shapes/clusters", json={"k": 3}, headers=read), 403)
    r = client.post("/collections/shapes/clusters", json={"k": 3}, headers=write)
    assert r.status_code == 202
    job = r.json()["job"]
    _error(client.get(f"/collections/shapes/clusters/{job}"), 401)
    assert wait_done(client, "shapes", job, **read)["state"] == "done"
    url = f"/collections/shapes/clusters/{job}/0/label"
    _error(client.post(url, json={"label": "a"}, headers=read), 403)
    assert client.post(url, json={"label": "a"}, headers=write).json()["labelled"] > 0
    _error(client.get("/collections/shapes/clusters/abcdefabcdef", headers=read), 404)
