"""Property tests (hypothesis): image decoding of arbitrary bytes and of random valid images,
and the k-NN vote."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.images import ImageRejected, decode_image, preprocess
from core.knn import knn_vote
from tests.security.samples import exotic

FAST = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
SEEDS = [data for data, _ in exotic().values()]


@FAST
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_are_rejected(data):
    try:
        img = decode_image(data, max_pixels=1_000_000)
    except ImageRejected as exc:
        assert exc.reason in ("empty", "invalid", "too_large")
    else:
        assert img.mode == "RGB" and img.width >= 1 and img.height >= 1


@FAST
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_real_images_decode_or_are_rejected(seed, data):
    """Real files with bytes flipped, cut or inserted: the shapes fuzzers find crashes with."""
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[i : i + data.draw(st.integers(1, 64))]
        else:
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    try:
        img = decode_image(bytes(buf), max_pixels=4_000_000)
    except ImageRejected:
        return
    assert img.mode == "RGB"
    arr = preprocess(img, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert arr.shape == (3, 32, 32) and np.isfinite(arr).all()


MODES = {
    "1": "PNG",
    "L": "PNG",
    "LA": "PNG",
    "P": "PNG",
    "RGB": "PNG",
    "RGBA": "PNG",
    "I;16": "PNG",
    "CMYK": "JPEG",
    "YCbCr": "JPEG",
    "I": "TIFF",
    "F": "TIFF",
    "RGBX": "TIFF",
}


@FAST
@given(
    st.sampled_from(sorted(MODES)),
    st.integers(1, 80),
    st.integers(1, 80),
    st.integers(0, 2**32 - 1),
)
def test_random_valid_images_decode_to_rgb_of_their_size(mode, w, h, seed):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    out = io.BytesIO()
    img.save(out, MODES[mode])
    decoded = decode_image(out.getvalue(), max_pixels=10_000)
    assert decoded.mode == "RGB" and decoded.size == (w, h)
    arr = preprocess(decoded, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert arr.shape == (3, 16, 16) and np.isfinite(arr).all()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@FAST
@given(st.integers(1, 100_000), st.integers(1, 100_000))
def test_pixel_limit_is_exact(w, h):
    from tests.security.samples import png_header

    try:
        decode_image(png_header(w, h), max_pixels=1_000_000)
    except ImageRejected as exc:
        assert (exc.reason == "too_large") == (w * h > 1_000_000)


labels = st.sampled_from(list("abcde"))
neighbours = st.lists(st.tuples(st.floats(-1, 1), labels), min_size=1, max_size=50)
temperatures = st.floats(1e-3, 10)


@FAST
@given(neighbours, temperatures)
def test_vote_scores_are_a_distribution_and_the_label_its_argmax(nb, t):
    vote = knn_vote([s for s, _ in nb], [lab for _, lab in nb], t)
    assert math.isclose(sum(vote.scores.values()), 1.0, rel_tol=1e-9)
    assert all(0.0 <= v <= 1.0 for v in vote.scores.values())
    assert set(vote.scores) == {lab for _, lab in nb}
    best = max(vote.scores.values())
    assert vote.confidence == vote.scores[vote.label] == best
    assert vote.label == min(lab for lab, v in vote.scores.items() if v == best)  # ties: a–z


@FAST
@given(neighbours, temperatures, st.randoms(use_true_random=False))
def test_vote_ignores_neighbour_order(nb, t, rnd):
    shuffled = list(nb)
    rnd.shuffle(shuffled)
    a = knn_vote([s for s, _ in nb], [lab for _, lab in nb], t)
    b = knn_vote([s for s, _ in shuffled], [lab for _, lab in shuffled], t)
    assert a.label == b.label
    for lab in a.scores:
        assert math.isclose(a.scores[lab], b.scores[lab], rel_tol=1e-9, abs_tol=1e-12)


@FAST
@given(st.lists(st.floats(-1, 1), min_size=1, max_size=30), temperatures)
def test_one_class_is_certain(sims, t):
    vote = knn_vote(sims, ["only"] * len(sims), t)
    assert vote.label == "only" and vote.confidence == 1.0


@FAST
@given(neighbours)
def test_temperature_limits(nb):
    sims, labs = [s for s, _ in nb], [lab for _, lab in nb]
    # T → 0: the nearest neighbour's class takes (almost) everything
    cold = knn_vote(sims, labs, 1e-4)
    top = max(sims)
    winners = {lab for s, lab in nb if s == top}
    others = [s for s, lab in nb if lab not in winners]
    if len(winners) == 1 and (not others or top - max(others) > 0.01):  # no near-tie
        assert cold.label in winners and cold.confidence > 0.999
    # T → ∞: every neighbour weighs the same, scores are class frequencies
    hot = knn_vote(sims, labs, 1e6)
    for lab, v in hot.scores.items():
        assert math.isclose(v, labs.count(lab) / len(labs), rel_tol=1e-4)


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_vote_refuses_bad_temperatures_and_empty_input(t):
    with pytest.raises(ValueError):
        knn_vote([0.5], ["a"], t)
    with pytest.raises(ValueError):
        knn_vote([], [], 0.07)
