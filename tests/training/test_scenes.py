"""The demo scenes: one shape on a cluttered background, with its exact mask beside it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from training.scenes import CLASSES, draw_scene, make_scenes, masks_dir_for


def test_same_seed_same_scenes_and_masks(tmp_path):
    a = make_scenes(tmp_path / "a", 2, seed=7)
    b = make_scenes(tmp_path / "b", 2, seed=7)
    c = make_scenes(tmp_path / "c", 2, seed=8)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 20 and {f.parts[0] for f in files} == set(CLASSES)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    masks = masks_dir_for(a)
    assert masks == tmp_path / "a-masks"
    assert sorted(p.relative_to(masks) for p in masks.rglob("*.png")) == files


@pytest.mark.parametrize("cls", range(len(CLASSES)))
def test_the_mask_is_the_object_and_the_object_a_fraction_of_the_image(cls):
    rng = np.random.default_rng(cls)
    for _ in range(5):
        img, mask = draw_scene(cls, rng)
        assert img.size == mask.size == (64, 64) and img.mode == "RGB" and mask.mode == "L"
        m = np.asarray(mask)
        assert set(np.unique(m)) <= {0, 255}
        share = (m > 0).mean()
        assert 0.05 < share < 0.6, (CLASSES[cls], share)
        # The object stands out of what is around it: their mean colours lie far apart.
        rgb = np.asarray(img, np.float64)
        assert np.linalg.norm(rgb[m > 0].mean(axis=0) - rgb[m == 0].mean(axis=0)) > 60


def test_colour_does_not_tell_the_class():
    # Every class comes in every hue: the mean object hue spreads over the colour wheel.
    hues = {}
    rng = np.random.default_rng(0)
    for cls in range(len(CLASSES)):
        hs = []
        for _ in range(40):
            img, mask = draw_scene(cls, rng)
            hsv = np.asarray(img.convert("HSV"), np.float64)
            hs.append(np.median(hsv[..., 0][np.asarray(mask) > 0]))
        hues[cls] = np.asarray(hs)
    for hs in hues.values():
        assert np.ptp(hs) > 150  # of 255: near the whole wheel


def test_backgrounds_hold_more_than_the_object():
    # Clutter: outside the mask there is structure (distractors, texture), not a flat colour.
    rng = np.random.default_rng(1)
    stds = []
    for cls in range(len(CLASSES)):
        img, mask = draw_scene(cls, rng)
        grey = np.asarray(img.convert("L"), np.float64)
        stds.append(grey[np.asarray(mask) == 0].std())
    assert np.median(stds) > 10


def test_the_object_is_the_brightest_thing_and_its_colour_pale():
    # The object stands out by brightness, not by a colour two views of it could share.
    rng = np.random.default_rng(2)
    for cls in range(len(CLASSES)):
        img, mask = draw_scene(cls, rng)
        m = np.asarray(mask) > 0
        grey = np.asarray(img.convert("L"), np.float64)
        sat = np.asarray(img.convert("HSV"), np.float64)[..., 1]
        inner = np.asarray(mask.filter(ImageFilter.MinFilter(5))) > 0  # away from blurred edges
        assert np.median(grey[inner]) > np.percentile(grey[~m], 95), CLASSES[cls]
        assert np.median(sat[inner]) < 0.35 * 255, CLASSES[cls]


def test_backgrounds_do_not_tell_the_class():
    # The ground and its clutter come from one distribution for every class: the mean
    # brightness outside the object is the same from class to class, within the noise.
    rng = np.random.default_rng(3)
    means = []
    for cls in range(len(CLASSES)):
        vals = []
        for _ in range(30):
            img, mask = draw_scene(cls, rng)
            grey = np.asarray(img.convert("L"), np.float64)
            vals.append(grey[np.asarray(mask) == 0].mean())
        means.append(np.mean(vals))
    assert np.ptp(means) < 12


def test_unknown_class_is_refused():
    with pytest.raises(IndexError):
        draw_scene(len(CLASSES), np.random.default_rng(0))


def test_masks_load_as_images(tmp_path):
    out = make_scenes(tmp_path / "s", 1, seed=2, size=96)
    with Image.open(masks_dir_for(out) / "star" / "00000.png") as m:
        assert m.size == (96, 96)
