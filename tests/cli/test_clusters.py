"""`dinoserve clusters NAME`: in this process, cached, as JSON, and handed to a running service
that owns the embedded store."""

from __future__ import annotations

import json

from api.main import create_app
from core.settings import InferenceSettings, Settings
from dinoserve.cli import main
from tests.discovery.test_clusters import blobs, fill
from tests.servers import free_port, start_uvicorn, stop_uvicorn
from tests.stores import edge_store


def _store(path) -> None:
    db = edge_store(path)
    x, truth = blobs(20, 3)
    fill(db, "blobs", x, [f"c{t}" for t in truth])
    db.close()


def test_clusters_in_this_process_cached_and_json(tmp_path, monkeypatch, capsys):
    _store(tmp_path / "q")
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(tmp_path / "q"))
    monkeypatch.setenv("DINOSERVE_DISCOVERY__CLUSTERS_DIR", str(tmp_path / "clusters"))

    assert main(["clusters", "blobs", "--k", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        "60 points, 60 labelled; k = 3 (given), SpectralClustering; purity 1.000, NMI 1.000"
        in out[0]
    )
    assert not out[1].endswith("(cached)")
    rows = [line.split() for line in out[3:]]
    assert [r[:2] for r in rows] == [["0", "20"], ["1", "20"], ["2", "20"]]
    assert {r[2] for r in rows} == {"c0", "c1", "c2"} and {r[3] for r in rows} == {"1.000"}
    assert "/data/" in out[3]  # the uris nearest the centre

    assert main(["clusters", "blobs", "--k", "3", "--seed", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("(cached)")

    assert main(["clusters", "blobs", "--k-max", "6", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["state"] == "done" and record["result"]["k"] == 3
    assert record["result"]["k_chosen_by"] == "silhouette"
    assert "members" not in record["result"]["clusters"][0]

    assert main(["clusters", "nope", "--k", "3"]) == 2
    assert "no collection named 'nope'" in capsys.readouterr().err
    assert main(["clusters", "blobs", "--k", "70"]) == 1  # the job fails, and says why
    assert "60 points cannot make 70 clusters" in capsys.readouterr().err
    assert main(["clusters", "blobs", "--k-min", "9", "--k-max", "3"]) == 2
    capsys.readouterr()

    assert main(["clusters", "blobs", "--k", "3", "--method", "kmeans"]) == 0
    assert "k = 3 (given), KMeans; purity 1.000" in capsys.readouterr().out


def test_clusters_hand_off_to_the_service_that_holds_the_store(
    tmp_path, monkeypatch, capsys, tiny_package
):
    path, port = tmp_path / "q", free_port()
    _store(path)
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(path))
    monkeypatch.setenv("DINOSERVE_SERVE__PORT", str(port))
    monkeypatch.setenv("DINOSERVE_DISCOVERY__CLUSTERS_DIR", str(tmp_path / "clusters"))

    assert main(["clusters", "blobs", "--k", "3"]) == 0  # free store: computed here, cached
    capsys.readouterr()
    settings = Settings(
        model=str(tiny_package),
        write_api_key="w",
        api_key="r",
        inference=InferenceSettings(intra_op_threads=1),
    )
    running = [start_uvicorn(create_app(settings), port)]
    try:
        assert main(["clusters", "blobs", "--k", "3"]) == 2  # no key for the service
        err = capsys.readouterr().err
        assert "401" in err and "DINOSERVE_WRITE_API_KEY" in err
        monkeypatch.setenv("DINOSERVE_WRITE_API_KEY", "w")
        assert main(["clusters", "blobs", "--k", "3"]) == 0
        captured = capsys.readouterr()
        assert "owns the store: it runs the job" in captured.err
        assert "purity 1.000" in captured.out
        assert main(["clusters", "blobs", "--k", "2", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["result"]["k"] == 2
    finally:
        stop_uvicorn(running, timeout=10)
    monkeypatch.setenv("DINOSERVE_SERVE__PORT", str(free_port()))
    holder = edge_store(path)  # a process that holds the store but serves nothing
    try:
        assert main(["clusters", "blobs", "--k", "3"]) == 2
        assert "no service answers" in capsys.readouterr().err
    finally:
        holder.close()
