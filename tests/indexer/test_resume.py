import os
import signal
import subprocess
import sys
import time

from core import store
from indexer.sources import list_source
from tests.conftest import ROOT
from tests.stores import all_points, edge_store

WORKER = ROOT / "tests" / "indexer" / "index_worker.py"


def test_sigkill_mid_run_then_rerun_gives_exactly_the_right_points(synthetic_dir, tmp_path):
    qpath = tmp_path / "qdrant"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(WORKER), str(synthetic_dir), str(qpath)]
    proc = subprocess.Popen([*cmd, "0.15"], stdout=subprocess.PIPE, text=True, env=env)
    batches = 0
    deadline = time.monotonic() + 60
    while batches < 6 and time.monotonic() < deadline:  # 6 of 30 batches embedded
        if proc.stdout.readline().startswith("batch"):
            batches += 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert batches == 6 and proc.returncode == -signal.SIGKILL

    done = subprocess.run([*cmd, "0"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    indexed, unchanged = (int(x.split("=")[1]) for x in last.split()[1:])
    assert indexed + unchanged == 120 and unchanged >= 4  # what the killed run had written stays

    client = edge_store(qpath)  # a store reopened after SIGKILL is readable
    expected = {store.point_id(it.uri) for it in list_source(synthetic_dir, "dirs")}
    points = all_points(client, "photos", ["uri"])
    assert set(points) == expected
    assert client.count(client.resolve("photos")) == 120
    client.close()
