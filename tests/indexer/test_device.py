"""The indexer's device path (indexer/device.py) on the CPU: same points as the PIL path."""

import numpy as np
import pytest

from core.device_images import use_device_decode
from core.engine_choice import load_engine
from core.settings import InferenceSettings, Settings
from indexer.device import DeviceDecode
from indexer.ingest import IngestOptions
from indexer.pipeline import Indexer
from indexer.run import device_decode_for
from indexer.sources import list_source
from tests.api.conftest import engine_for
from tests.stores import memory_server
from training.synthetic import make_synthetic


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = make_synthetic(tmp_path_factory.mktemp("jpegs"), 4, 48, seed=3, fmt="jpg")
    first = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (first / "bad.jpg").write_bytes(b"\xff\xd8\xff not really")
    make_synthetic(root / "png", 1, 40, seed=4)  # not JPEGs: the PIL fallback
    return root


def _index(engine, jpegs, device=None):
    client = memory_server()
    report = Indexer(
        client, engine, "photos", IngestOptions(batch=16, workers=1, device=device)
    ).run(list_source(jpegs), progress=False)
    points = {
        p.id: (p.payload, p.vector) for p in client.iter_points(report.physical, vectors=True)
    }
    client.close()
    return report, points


def test_device_path_indexes_the_same_points(micro_package, jpegs):
    engine = load_engine(micro_package, "torch", InferenceSettings(intra_op_threads=1))
    device = DeviceDecode(engine, tensor_decode=True)
    got_report, got = _index(engine, jpegs, device)
    want_report, want = _index(engine_for(micro_package), jpegs)
    assert (got_report.indexed, got_report.failed) == (want_report.indexed, 1) == (50, 1)
    assert got.keys() == want.keys()
    for pid, (payload, vec) in got.items():
        w_payload, w_vec = want[pid]
        assert (payload["width"], payload["height"]) == (w_payload["width"], w_payload["height"])
        assert float(np.dot(vec, w_vec)) >= 0.999


def test_settings_choose_the_path(micro_package, monkeypatch):
    engine = load_engine(micro_package, "torch", InferenceSettings(intra_op_threads=1))
    assert not use_device_decode("auto", engine)  # CPU torch engine: PIL decode threads
    assert use_device_decode("device", engine) and not use_device_decode("cpu", engine)
    monkeypatch.setenv("DINOSERVE_MODEL", str(micro_package))
    monkeypatch.setenv("DINOSERVE_ENGINE", "torch")
    assert device_decode_for(Settings(), engine) is None
    monkeypatch.setenv("DINOSERVE_INDEXER__DEVICE_DECODE", "device")
    assert isinstance(device_decode_for(Settings(), engine), DeviceDecode)
    monkeypatch.setenv("DINOSERVE_INDEXER__DEVICE_DECODE", "gpu")
    with pytest.raises(ValueError, match="device_decode"):
        Settings()
