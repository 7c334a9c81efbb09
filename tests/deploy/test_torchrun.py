"""The training launcher under torchrun: two gloo processes on the CPU, as the Kubernetes
training job runs it (`torchrun … -m dinoserve train …`), end to end through the CLI, with the
k-NN evaluation (sharded over both ranks) at the start and at the end."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import MICRO, ROOT


@pytest.mark.slow
def test_dinoserve_train_under_torchrun_two_processes(synthetic_dir, tmp_path):
    out = tmp_path / "run"
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "dinoserve",
        "train",
        "--config",
        "configs/tiny.yaml",
        "--data",
        str(synthetic_dir),
        "--out",
        str(out),
        *MICRO,
        f"data.cache_dir={tmp_path / 'cache'}",
        "optim.epochs=1",
        "run.device=cpu",
        "data.holdout_per_class=2",
        "eval.at_start=true",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("run: ")]
    assert len(summaries) == 1, proc.stdout  # rank 0 only
    assert "steps: 6" in summaries[0]  # (120 − 20 held out) / 2 ranks / batch 8
    knn = re.search(r"k-NN top-1: start ([\d.]+)  end ([\d.]+)", proc.stdout)
    assert knn, proc.stdout
    assert all(0 <= float(v) <= 100 for v in knn.groups())
    for name in ("last.pt", "config.yaml", "metrics.jsonl"):
        assert (out / name).is_file(), name
