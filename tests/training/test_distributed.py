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
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(WORKER), str(TINY_PRESET), str(tmp_path),
        *MICRO, f"data.train={synthetic_dir}", f"data.cache_dir={tmp_path / 'cache'}",
        "optim.epochs=2", "run.device=cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["steps"] == r1["steps"] == 2 * (120 // 2 // 8)  # each rank sees half the data
    assert torch.equal(r0["center"], r1["center"])
    assert r0["center"].abs().sum() > 0
    for key, value in r0["teacher"].items():
        assert torch.equal(value, r1["teacher"][key]), key
