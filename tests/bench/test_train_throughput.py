from bench.train_throughput import main


def test_train_throughput_script_runs_on_the_cpu(tmp_path):
    report = main(["--smoke", "--out", str(tmp_path)])
    configs = {r["config"] for r in report["rows"]}
    assert configs == {"fast end-to-end", "fast device-only", "plain (baseline)"}
    for row in report["rows"]:
        assert row["img_per_s"] > 0 and row["gflops_per_step"] > 0
    assert (tmp_path / "report.json").exists()
