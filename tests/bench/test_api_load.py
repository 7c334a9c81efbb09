from bench.api_load import main


def test_api_load_runs_both_modes_and_times_the_engine_alone():
    report = main(
        [
            "--model",
            "tiny",
            "--variant",
            "fp32",
            "--seconds",
            "0.25",
            "--rounds",
            "2",
            "--clients",
            "1,2",
            "--endpoints",
            "embed",
            "--images",
            "2",
            "--max-batch",
            "4",
        ]
    )
    gain = report["engine_alone"]
    assert gain["batch_1_img_s"] > 0 and gain["batch_4_img_s"] > 0 and gain["gain"] > 0
    cells = {(r["batching"], r["clients"]) for r in report["rows"]}
    assert cells == {(True, 1), (True, 2), (False, 1), (False, 2)}
    for row in report["rows"]:
        assert row["errors"] == 0 and row["requests"] > 0
        assert len(row["rounds_req_per_s"]) == 2
    assert all(r["on_vs_off"] > 0 for r in report["rows"] if r["batching"])
