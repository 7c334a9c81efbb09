"""bench/store_scale.py runs end to end at a toy size: each backend's row, with the indexing
peak, the three searches' recall and the table (the benchmark itself is run by hand)."""

from __future__ import annotations

import json

from bench import store_scale


def test_store_scale_at_a_toy_size(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["--sizes", "1500", "--local-max", "0", "--queries", "8", "--out", str(out)]
    assert store_scale.main([*argv, "--backends", "edge-before,edge"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["backend"] for r in rows] == ["edge-before", "edge"]
    for r in rows:
        assert r["points"] == 1500 and r["index_peak_mib"] >= r["own_peak_mib"] > 0
        for mode in ("plain", "filtered", "rare", "filtered@1024"):
            assert 0.9 <= r[mode]["recall"] <= 1.0  # exact at this size
    assert "| edge | 1,500 |" in capsys.readouterr().out


def test_labels_hold_ten_and_one_percent():
    import numpy as np

    labels = store_scale.label_of(np.arange(2000))
    assert (labels == "c0").mean() == 0.1 and (labels == "rare").mean() == 0.01
