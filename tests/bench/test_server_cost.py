import os

import pytest

from bench.server_cost import main


@pytest.mark.skipif(
    not {0, 1} <= os.sched_getaffinity(0), reason="the script pins the server and the clients"
)
def test_server_cost_reports_cpu_per_request_for_each_route(micro_package):
    report = main(
        [
            "--model",
            str(micro_package),
            "--seconds",
            "0.5",
            "--clients",
            "2",
            "--images",
            "2",
            "--engine-seconds",
            "0.2",
        ]
    )
    assert [r["route"] for r in report["rows"]] == ["GET /healthz", "GET /model", "POST /embed"]
    for row in report["rows"]:
        assert row["requests"] > 0 and row["server_cpu_ms_per_request"] > 0
    engine = report["engine_alone_one_thread"]
    assert engine["batch_1_img_s"] > 0 and engine["batch_12_img_s"] > 0
