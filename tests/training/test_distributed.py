import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import MICRO, ROOT, TINY_PRESET

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
def test_two_process_gloo_keeps_centre_and_teacher_identical(synthetic_dir, tmp_path):
    # k-NN evaluation at the start and at the end, sharded over both ranks (2 held out per class).
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(TINY_PRESET),
        str(tmp_path),
        *MICRO,
        f"data.train={synthetic_dir}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "optim.epochs=2",
        "run.device=cpu",
        "data.holdout_per_class=2",
        "eval.at_start=true",
        "eval.every_epochs=2",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["steps"] == r1["steps"] == 2 * (100 // 2 // 8)  # each rank sees half the data
    # Each rank extracted half of the labelled images; both got the same all-gathered answer.
    assert r0["knn_start"] is not None and r0["knn_end"] is not None
    assert (r0["knn_start"], r0["knn_end"]) == (r1["knn_start"], r1["knn_end"])
    assert torch.equal(r0["center"], r1["center"])
    assert r0["center"].abs().sum() > 0
    for key, value in r0["teacher"].items():
        assert torch.equal(value, r1["teacher"][key]), key
