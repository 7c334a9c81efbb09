"""The accuracy guard (evaluation/variant_guard.py) and its real images
(evaluation/real_images.py), on arrays and synthetic folders."""

from __future__ import annotations

import numpy as np

from evaluation.real_images import Preprocessing, load_real_images
from evaluation.variant_guard import check_variant


def _clusters(n: int = 80, dim: int = 16, seed: int = 0):
    """Embeddings of 4 classes around 4 centres (k-NN near 100 %), and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, dim)) * 3
    labels = [f"c{i % 4}" for i in range(n)]
    emb = np.stack([centres[i % 4] for i in range(n)]) + rng.standard_normal((n, dim))
    att = rng.random((n, 2, 3, 3))
    return emb.astype(np.float32), att.astype(np.float32), labels


def _images(n: int) -> np.ndarray:
    """Stand-in images that carry their index, so a fake forward can look its rows up."""
    return np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 3, 2, 2))


def _rows(emb: np.ndarray, att: np.ndarray):
    return lambda x: (emb[x[:, 0, 0, 0].astype(int)], att[x[:, 0, 0, 0].astype(int)])


def test_a_faithful_variant_passes_with_its_figures():
    emb, att, labels = _clusters()
    images = _images(len(emb))
    same = check_variant((emb, att), _rows(emb, att), images, labels)
    assert same.passed and same.reason == ""
    assert same.min_cosine > 0.9999 and same.min_attention_cosine > 0.9999
    assert same.knn_queries == 40 and same.knn_top1 == same.knn_top1_fp32 > 90


def test_the_guard_fails_on_cosine_attention_and_knn_separately():
    emb, att, labels = _clusters()
    images = _images(len(emb))
    rng = np.random.default_rng(1)
    # embeddings shuffled between images: the classes are lost, the k-NN says so
    shuffled = emb[rng.permutation(len(emb))]
    r = check_variant((emb, att), _rows(shuffled, att), images, labels, min_cosine=-1.0)
    assert not r.passed and "k-NN top-1" in r.reason and "cosine" not in r.reason
    assert r.knn_top1 < r.knn_top1_fp32 - 0.5
    # attention flattened towards uniform: only the attention part fails
    flat = 0.2 * att + 0.8 * att.mean()
    r = check_variant((emb, att), _rows(emb, flat), images, labels)
    assert not r.passed and r.reason.startswith("attention cosine")
    # no labels: cosine and attention only
    r = check_variant((emb, att), _rows(emb + 0.5, att), images, None)
    assert r.knn_top1 is None and not r.passed and "embedding cosine" in r.reason


def test_real_images_are_disjoint_labelled_samples(synthetic_dir):
    prep = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 0.875)
    cal, held = load_real_images(synthetic_dir, prep, [30, 50])
    assert cal.images.shape == (30, 3, 32, 32) and len(held) == 50
    assert len(set(cal.labels)) == len(set(held.labels)) == 10
    flat = {a.tobytes() for a in cal.images}
    assert not flat & {a.tobytes() for a in held.images}
    # more asked than there are (120 images): each sample gets its share
    big = load_real_images(synthetic_dir, prep, [200, 400])
    assert [len(s) for s in big] == [40, 80]


def test_an_unlabelled_folder_gives_images_without_labels(tmp_path, synthetic_dir):
    for i, p in enumerate(sorted(synthetic_dir.rglob("*.png"))[:6]):
        (tmp_path / f"{i}.png").write_bytes(p.read_bytes())
    (only,) = load_real_images(tmp_path, Preprocessing(32, (0, 0, 0), (1, 1, 1), 1.0), [4])
    assert len(only) == 4 and only.labels is None
