import math

from bench.fast_vs_plain import main


def test_guard_script_runs_both_paths_on_the_cpu(tmp_path):
    report = main(["--smoke", "--out", str(tmp_path)])
    assert len(report["curves"]["fast"]) == len(report["curves"]["plain"]) == 6
    assert math.isfinite(report["max_smoothed_loss_diff"])
    assert report["knn_end"]["fast"] is not None and report["knn_end"]["plain"] is not None


def test_resolution_comparison_runs_both_paths_on_the_cpu(tmp_path):
    report = main(["--compare", "resolution", "--smoke", "--out", str(tmp_path)])
    for name in ("full", "squashed"):
        assert report["runs"][name]["knn_end"] is not None
        assert report["train_img_per_s"][name] > 0
    assert report["squashed_load_size"] == 37  # 8/7 × the tiny preset's 32-px global crop
    assert report["throughput_full_over_squashed"] > 0
