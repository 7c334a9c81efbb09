import pytest

from bench.api_load import main


def test_api_load_runs_both_modes_and_times_the_engine_alone(micro_package):
    # A given package is served as it is (the session's, so no export here).
    report = main(
        [
            "--model",
            str(micro_package),
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


def test_model_is_a_preset_or_a_package(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path)])
    assert "neither ('vits16', 'tiny') nor a model package" in capsys.readouterr().err


def test_a_package_without_the_variant_is_refused(micro_package, tmp_path):
    from bench.api_load import package_model

    with pytest.raises(SystemExit, match="has no int8-static variant"):
        package_model(str(micro_package), "int8-static", tmp_path)
