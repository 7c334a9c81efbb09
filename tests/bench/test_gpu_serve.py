"""bench/gpu_serve.py in its rehearsal sizes: the phases that run quickly on a CPU (the whole
script, compile and servers included, is rehearsed by hand: `GPU_SERVE_SMALL=1 bash
bench/device/gpu_serve.sh`)."""

import json

from bench.gpu_serve import main


def test_index_phase_writes_its_figures(tmp_path):
    report = main(["--small", "--phases", "index", "--out", str(tmp_path)])
    index = report["index"]
    assert index["images"] == 200 and index["end_to_end"]["img_s"] > 0
    assert "200 indexed" in index["end_to_end"]["summary"]
    assert index["decode_embed_only"]["images"] == 200
    assert json.loads((tmp_path / "index.json").read_text()) == index
    assert json.loads((tmp_path / "gpu_serve.json").read_text())["small"] is True
