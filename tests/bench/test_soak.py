import glob
import os
import tempfile

from bench.soak import main


def test_soak_script_runs_every_route_and_cleans_up():
    pattern = os.path.join(tempfile.gettempdir(), "soak-*")
    before = set(glob.glob(pattern))
    report = main(["--seconds", "2", "--warmup", "0.5", "--clients", "4", "--images", "2"])
    assert report["ok"] and report["server_alive"]
    assert report["total"]["requests"] > 0 and report["total"]["5xx"] == 0
    assert {r["endpoint"] for r in report["rows"]} >= {"embed", "classify", "bad_json"}
    assert set(glob.glob(pattern)) == before  # the work folder is removed after a pass
