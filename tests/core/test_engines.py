import numpy as np
import pytest
from PIL import Image

from core import package
from core.engine_choice import load_engine
from core.engines import Engine, OrtEngine, preprocess_batch
from core.settings import InferenceSettings, Settings
from core.torch_engine import TorchEngine
from training.synthetic import draw_shape


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    pics = [draw_shape(c, rng, 48) for c in range(6)]
    pics.append(Image.new("RGBA", (40, 60), (200, 10, 10, 128)))  # alpha, non-square
    pics.append(Image.fromarray(rng.integers(0, 255, (30, 50), dtype=np.uint8)))  # grayscale
    return pics


@pytest.fixture(scope="module")
def engines(micro_package):
    one_thread = InferenceSettings(intra_op_threads=1, inter_op_threads=1)
    return {
        "ort": load_engine(micro_package, "onnxruntime", one_thread),
        "torch": load_engine(micro_package, "torch", one_thread),
        "int8": load_engine(
            micro_package, "onnxruntime", one_thread.model_copy(update={"onnx_variant": "int8"})
        ),
    }


def test_engines_agree_and_return_normalised_float32(engines, images, micro_package):
    meta = package.read_meta(micro_package)
    batch = preprocess_batch(meta, images)
    assert batch.shape == (len(images), 3, meta.img_size, meta.img_size)
    ort, torch_ = engines["ort"], engines["torch"]
    for engine in (ort, torch_):
        assert isinstance(engine, Engine)
        assert engine.dim == meta.embed_dim and engine.model_version == micro_package.name
    e_ort, e_torch = ort.embed(batch), torch_.embed(batch)
    assert e_ort.dtype == np.float32 and e_ort.shape == (len(images), meta.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(e_ort, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e_ort, e_torch, atol=1e-5)
    a_ort, a_torch = ort.attention(batch), torch_.attention(batch)
    assert a_ort.shape == (len(images), meta.num_heads, *meta.grid)
    np.testing.assert_allclose(a_ort, a_torch, atol=1e-6)
    np.testing.assert_allclose(a_ort.sum(axis=(-2, -1)), 1.0, atol=1e-5)  # per head over patches


def test_batch_size_does_not_change_results(engines, images, micro_package):
    batch = preprocess_batch(package.read_meta(micro_package), images)
    one_by_one = np.concatenate([engines["ort"].embed(batch[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(one_by_one, engines["ort"].embed(batch)[:3], atol=1e-5)


def test_int8_engine_stays_close_to_fp32(engines, images, micro_package):
    batch = preprocess_batch(package.read_meta(micro_package), images)
    cos = (engines["int8"].embed(batch) * engines["ort"].embed(batch)).sum(axis=1)
    assert cos.min() >= 0.99


def test_tampered_package_is_refused(micro_package, tmp_path):
    import shutil

    copy = tmp_path / micro_package.name
    shutil.copytree(micro_package, copy)
    onnx_file = copy / package.ONNX_FP32
    onnx_file.chmod(0o644)
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(package.IntegrityError):
        load_engine(copy, "onnxruntime")
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine(micro_package, "tensorflow")


def test_settings_drive_the_engine(micro_package, monkeypatch):
    monkeypatch.setenv("DINOSERVE_INFERENCE__INTRA_OP_THREADS", "1")
    monkeypatch.setenv("DINOSERVE_INFERENCE__PROVIDERS", '["CPUExecutionProvider"]')
    settings = Settings()
    engine = OrtEngine(micro_package, settings.inference)
    assert engine.session.get_providers() == ["CPUExecutionProvider"]
    assert engine.session.get_session_options().intra_op_num_threads == 1
    assert TorchEngine(micro_package, settings.inference).device.type == "cpu"
    monkeypatch.setenv("DINOSERVE_INFERENCE__INTRA_OP_THREADS", "-1")
    with pytest.raises(ValueError, match="intra_op_threads"):
        Settings()
