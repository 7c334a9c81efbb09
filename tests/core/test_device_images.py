"""Device preprocessing (core/device_images.py) against the PIL path, on the CPU; nvJPEG (gpu)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.device_images import orient, preprocess_encoded
from core.engine_choice import load_engine
from core.engines import preprocess_batch
from core.images import decode_image
from core.package import read_meta
from core.settings import InferenceSettings
from training.synthetic import draw_shape

CPU = torch.device("cpu")


def _jpeg(img: Image.Image, orientation: int = 1, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def encoded() -> list[bytes]:
    rng = np.random.default_rng(7)
    pics = [draw_shape(c, rng, 64).resize((80 + 9 * c, 60)) for c in range(5)]
    return [
        *(_jpeg(p) for p in pics),
        _jpeg(pics[1], orientation=6),  # rotated by EXIF
        _jpeg(pics[2].convert("L")),  # grayscale JPEG
        _png(pics[3]),  # not a JPEG: the PIL path
    ]


def _run(meta, datas, **kw):
    return preprocess_encoded(
        datas,
        meta.img_size,
        meta.mean,
        meta.std,
        meta.crop_pct,
        CPU,
        max_pixels=10**7,
        tensor_decode=True,
        **kw,
    )


def test_every_exif_orientation_matches_pil():
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8))
    from PIL import ImageOps

    for o in range(1, 9):
        img = base.copy()
        exif = img.getexif()
        exif[0x0112] = o
        img.info["exif"] = exif.tobytes()
        want = np.asarray(ImageOps.exif_transpose(img))  # (H, W, 3)
        got = orient(torch.from_numpy(np.array(base)).permute(2, 0, 1), o).permute(1, 2, 0)
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"orientation {o}")


def test_tensor_path_matches_the_pil_path(micro_package, encoded):
    meta = read_meta(micro_package)
    out = _run(meta, encoded)
    assert out.index == list(range(len(encoded))) and out.fallback == 1 and not out.rejected
    pil = [decode_image(d, 10**7) for d in encoded]
    assert out.sizes == [p.size for p in pil] and out.sizes[5] == (60, 89)  # EXIF: rotated
    want = preprocess_batch(meta, pil)
    got = out.images.numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    diff = np.abs(got - want)
    # Two bicubic implementations (PIL's and torch's antialiased one): a level or two of 255.
    assert diff.mean() < 0.03 and np.percentile(diff, 99) < 0.15, (diff.mean(), diff.max())
    engine = load_engine(micro_package, "onnxruntime", InferenceSettings(intra_op_threads=1))
    cos = (engine.embed(got) * engine.embed(want)).sum(axis=1)
    assert cos.min() >= 0.999, cos


def test_bad_and_oversized_images_fall_back_or_are_rejected(micro_package, encoded):
    meta = read_meta(micro_package)
    truncated = encoded[0][: len(encoded[0]) // 3]
    out = _run(meta, [encoded[0], b"\xff\xd8\xff junk", truncated, b"", encoded[7]])
    assert set(out.rejected) >= {1, 3}
    assert {e.reason for e in out.rejected.values()} <= {"invalid", "empty"}
    assert out.index[0] == 0 and 4 in out.index and out.images.shape[0] == len(out.index)
    small = preprocess_encoded(
        encoded[:1] + encoded[7:],
        meta.img_size,
        meta.mean,
        meta.std,
        meta.crop_pct,
        CPU,
        max_pixels=100,
        tensor_decode=True,
    )
    assert sorted(small.rejected) == [0, 1] and small.images.shape[0] == 0
    assert {e.reason for e in small.rejected.values()} == {"too_large"}


def test_without_cuda_everything_takes_the_pil_path(micro_package, encoded):
    meta = read_meta(micro_package)
    out = preprocess_encoded(
        encoded, meta.img_size, meta.mean, meta.std, meta.crop_pct, CPU, max_pixels=10**7
    )
    assert out.fallback == len(encoded)
    want = preprocess_batch(meta, [decode_image(d, 10**7) for d in encoded])
    np.testing.assert_allclose(out.images.numpy(), want, atol=1e-6)


@pytest.mark.gpu
def test_nvjpeg_matches_the_pil_path(micro_package, encoded):
    meta = read_meta(micro_package)
    cuda = torch.device("cuda")
    out = preprocess_encoded(
        encoded, meta.img_size, meta.mean, meta.std, meta.crop_pct, cuda, max_pixels=10**7
    )
    assert out.images.device.type == "cuda" and out.fallback == 1
    want = preprocess_batch(meta, [decode_image(d, 10**7) for d in encoded])
    assert np.abs(out.images.cpu().numpy() - want).mean() < 0.05
