import json

from bench.train_throughput import main


def test_train_throughput_script_runs_on_the_cpu(tmp_path):
    report = main(["--smoke", "--out", str(tmp_path)])
    configs = {r["config"] for r in report["rows"]}
    assert configs == {"fast end-to-end", "fast device-only", "plain (baseline)"}
    for row in report["rows"]:
        assert row["img_per_s"] > 0 and row["gflops_per_step"] > 0 and row["mfu"] > 0
        assert row["vs_plain"] > 0
    # One FLOP count per batch serves every path: they run the same network.
    assert len({r["gflops_per_step"] for r in report["rows"]}) == 1
    assert report["skipped"] == []
    assert json.loads((tmp_path / "report.json").read_text())["rows"] == report["rows"]


def test_budget_skips_the_configurations_left(tmp_path):
    # A budget already spent once the photos are made: nothing is measured, and the report says
    # what was skipped instead of failing.
    report = main(["--smoke", "--out", str(tmp_path), "--budget-s", "1e-9"])
    assert report["rows"] == []
    assert report["skipped"] == ["plain batch 8", "fast batch 8"]
