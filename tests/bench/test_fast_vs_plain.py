import math

from bench.fast_vs_plain import main


def test_guard_script_runs_both_paths_on_the_cpu(tmp_path):
    report = main(["--smoke", "--out", str(tmp_path)])
    assert len(report["curves"]["fast"]) == len(report["curves"]["plain"]) == 6
    assert math.isfinite(report["max_smoothed_loss_diff"])
    assert report["knn_end"]["fast"] is not None and report["knn_end"]["plain"] is not None
