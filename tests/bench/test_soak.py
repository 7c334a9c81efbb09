import tempfile

from bench.soak import main


def test_soak_script_runs_every_route_and_cleans_up(micro_package, tmp_path, monkeypatch):
    # Its own temp folder: another soak run on the machine must not look like a leftover.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made: list[str] = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    load = ["--seconds", "2", "--warmup", "0.5", "--clients", "4", "--images", "2"]
    report = main(["--model", str(micro_package), *load])
    assert report["ok"] and report["server_alive"]
    assert report["total"]["requests"] > 0 and report["total"]["5xx"] == 0
    assert {r["endpoint"] for r in report["rows"]} >= {"embed", "classify", "bad_json"}
    work = [m for m in made if "soak-" in m]
    assert work and all(m.startswith(str(tmp_path)) for m in work)
    assert not list(tmp_path.glob("soak-*"))  # the work folder is removed after a pass
