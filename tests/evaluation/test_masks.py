"""`dinoserve eval masks`: Jaccard of the served attention masks against true masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.engines import PackagedModel
from core.vit import smooth_maps
from dinoserve.cli import main
from evaluation.masks import best_patch_jaccard, evaluate_masks, jaccard
from evaluation.sources import EvalError
from tests.fakes import fake_meta
from training.scenes import make_scenes, masks_dir_for

SIZE, PATCH = 64, 8


class OracleEngine(PackagedModel):
    """Head 0 attends to the bright pixels of each patch (the object), head 1 everywhere."""

    def __init__(self, cell: int = PATCH) -> None:
        # cell < PATCH: a map stitched from moved views, on a finer grid than the patches
        self.cell, g = cell, SIZE // cell
        self.meta = fake_meta().model_copy(
            update={"img_size": SIZE, "patch_size": PATCH, "num_heads": 2, "grid": (g, g)}
        )

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return (np.asarray(img.convert("L"), np.float32) / 255.0)[None]

    def attention(self, batch: np.ndarray) -> np.ndarray:
        c = self.cell
        g = SIZE // c
        cover = batch[:, 0].reshape(len(batch), g, c, g, c).mean(axis=(2, 4))
        obj = cover / cover.sum(axis=(1, 2), keepdims=True)
        uniform = np.full_like(obj, 1.0 / (g * g))
        return np.stack([obj, uniform], axis=1)


def _square_scenes(root, n=3, offset=0):
    """Images whose object is a white square on whole patches (moved by `offset` px), and their
    masks."""
    for i in range(n):
        img = np.zeros((SIZE, SIZE), np.uint8)
        x0, y0 = 8 * (i + 1) + offset, 16 + offset
        img[y0 : y0 + 24, x0 : x0 + 24] = 255
        for sub, arr in ((root / "img" / "sq", img), (root / "img-masks" / "sq", img)):
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).convert("RGB" if "masks" not in str(sub) else "L").save(
                sub / f"{i}.png"
            )
    return root / "img", root / "img-masks"


def test_jaccard_counts_overlap_over_union():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert jaccard(a, b) == pytest.approx(4 / 12)
    assert jaccard(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0


def test_an_oracle_head_scores_one_and_a_uniform_head_the_objects_share(tmp_path):
    images, masks = _square_scenes(tmp_path)
    result = evaluate_masks(OracleEngine(), images, masks, threshold=1.0, progress=False)
    assert result.images == 3 and result.best_head == 0
    assert result.per_head[0] == pytest.approx(1.0)
    assert result.per_head[1] == pytest.approx(24 * 24 / SIZE**2, abs=1e-4)  # all kept
    assert result.mean == pytest.approx((1.0 + 24 * 24 / SIZE**2) / 2, abs=1e-4)


def test_object_mass_chance_and_the_grids_limits(tmp_path):
    images, masks = _square_scenes(tmp_path)
    result = evaluate_masks(OracleEngine(), images, masks, threshold=0.6, progress=False)
    share = 24 * 24 / SIZE**2
    # Head 0 puts all its mass on the object, the uniform head the object's share: chance.
    assert result.object_mass == pytest.approx([1.0, share], abs=1e-4)
    assert result.chance == pytest.approx(share, abs=1e-4)
    assert result.ceiling == pytest.approx(1.0)  # the squares lie on whole patches
    # Head 0 is itself spread evenly over the object: it is the even head.
    assert result.even_head == pytest.approx(result.per_head[0], abs=1e-4)
    assert "against chance 0.141" in result.summary()
    assert result.grid == (8, 8) and result.cell == PATCH
    assert f"(8 × 8 cells of {PATCH} px): best cell mask 1.000" in result.summary()


def test_a_stitched_map_is_scored_on_its_own_cells(tmp_path):
    # Squares half a patch off the patch grid: 8-px cells cannot outline them, 4-px cells can.
    images, masks = _square_scenes(tmp_path, offset=4)
    patches = evaluate_masks(OracleEngine(), images, masks, threshold=1.0, progress=False)
    cells = evaluate_masks(OracleEngine(cell=4), images, masks, threshold=1.0, progress=False)
    assert (patches.grid, patches.cell, cells.grid, cells.cell) == ((8, 8), 8, (16, 16), 4)
    assert patches.ceiling < 0.62 and cells.ceiling == pytest.approx(1.0)
    # all of head 0's mass is kept: its mask is every cell touching the square
    assert patches.per_head[0] == pytest.approx(24 * 24 / (32 * 32))
    assert cells.per_head[0] == pytest.approx(1.0)


def test_the_best_patch_mask_is_the_best_of_every_subset():
    rng = np.random.default_rng(3)
    for _ in range(40):
        share = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=(3, 3)) * (rng.random((3, 3)) < 0.7)
        area, total = 4, share.sum() * 4
        best = 1.0 if total == 0 else 0.0
        flat = share.ravel()
        for bits in range(1, 2**9):
            pick = np.array([(bits >> i) & 1 for i in range(9)], bool)
            inter = flat[pick].sum() * area
            best = max(best, inter / (total + pick.sum() * area - inter))
        assert best_patch_jaccard(share, 2) == pytest.approx(best)
    # A half-covered patch next to a full one: both (6 of 8 pixels) beat the full one alone (4/6).
    assert best_patch_jaccard(np.array([[1.0, 0.5], [0.0, 0.0]]), 2) == pytest.approx(0.75)


def test_the_threshold_keeps_that_share_of_the_mass(tmp_path):
    images, masks = _square_scenes(tmp_path)
    # A uniform head keeps 60 % of the patches at 0.6: J against a 9-patch object is ≤ 9/38.
    result = evaluate_masks(OracleEngine(), images, masks, threshold=0.6, progress=False)
    assert result.per_head[1] <= 9 / 38 + 1e-6
    assert 0.5 <= result.per_head[0] < 1.0  # the object's top 60 % of its mass: ~6 of 9 patches


def test_scenes_come_with_masks_that_the_evaluation_reads(tmp_path):
    make_scenes(tmp_path / "scenes", 1, seed=5)
    result = evaluate_masks(
        OracleEngine(), tmp_path / "scenes", masks_dir_for(tmp_path / "scenes"), progress=False
    )
    assert result.images == 10 and len(result.per_head) == 2


def test_a_missing_mask_is_named(tmp_path):
    images, masks = _square_scenes(tmp_path)
    (masks / "sq" / "1.png").unlink()
    with pytest.raises(EvalError, match=r"1 of 3 images .* no mask .*sq/1.png"):
        evaluate_masks(OracleEngine(), images, masks, progress=False)


def test_a_mask_of_another_size_is_refused(tmp_path):
    images, masks = _square_scenes(tmp_path)
    Image.new("L", (32, 32)).save(masks / "sq" / "0.png")
    with pytest.raises(EvalError, match="the mask is 32×32 but its image is 64×64"):
        evaluate_masks(OracleEngine(), images, masks, progress=False)


class SmoothingOracle(OracleEngine):
    """The oracle as a package exported with `views.smooth` would serve it."""

    def __init__(self, sigma: float) -> None:
        super().__init__(cell=4)
        views = self.meta.views.model_copy(update={"smooth": sigma})
        self.meta = self.meta.model_copy(update={"views": views})

    def attention(self, batch: np.ndarray) -> np.ndarray:
        raw = torch.from_numpy(super().attention(batch))
        return smooth_maps(raw, self.meta.views.smooth).numpy()


def test_smooth_scores_the_map_as_a_package_that_smooths_it_would_serve_it(tmp_path):
    images, masks = _square_scenes(tmp_path, offset=2)
    asked = evaluate_masks(OracleEngine(cell=4), images, masks, progress=False, smooth=1.5)
    served = evaluate_masks(SmoothingOracle(1.5), images, masks, progress=False)
    plain = evaluate_masks(OracleEngine(cell=4), images, masks, progress=False)
    assert asked.per_head == served.per_head and asked.object_mass == served.object_mass
    assert asked.smooth == served.smooth == 1.5 and plain.smooth == 0
    assert asked.per_head != plain.per_head and "smoothed by σ 1.5 cells" in asked.summary()
    with pytest.raises(EvalError, match="already smooths its map"):
        evaluate_masks(SmoothingOracle(1.5), images, masks, progress=False, smooth=1.0)
    with pytest.raises(EvalError, match=r"smooth must be in \[0, 4\]"):
        evaluate_masks(OracleEngine(), images, masks, progress=False, smooth=-1)


def test_an_empty_folder_and_a_bad_threshold_are_refused(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(EvalError, match="holds no image"):
        evaluate_masks(OracleEngine(), tmp_path / "none", tmp_path / "none", progress=False)
    images, masks = _square_scenes(tmp_path)
    with pytest.raises(EvalError, match="threshold"):
        evaluate_masks(OracleEngine(), images, masks, threshold=1.5, progress=False)


def test_cli_on_a_package(tmp_path, micro_package, capsys):
    make_scenes(tmp_path / "scenes", 1, seed=6)
    argv = ["eval", "masks", "--images", str(tmp_path / "scenes")]
    argv += ["--masks", str(tmp_path / "scenes-masks"), "--model", str(micro_package)]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"] == 10 and doc["threshold"] == 0.6
    assert len(doc["per_head"]) == 2 and doc["best"] == max(doc["per_head"])
    assert 0 <= doc["mean"] <= doc["best"] <= 1
    assert len(doc["object_mass"]) == 2 and 0 < doc["chance"] < 1
    assert doc["even_head"] <= doc["ceiling"] <= 1 and doc["smooth"] == 0
    assert main([*argv, "--smooth", "1.25"]) == 0
    smoothed = json.loads(capsys.readouterr().out)
    assert smoothed["smooth"] == 1.25 and smoothed["per_head"] != doc["per_head"]


def test_cli_mismatched_names_are_one_line(tmp_path, micro_package, capsys):
    make_scenes(tmp_path / "scenes", 1, seed=6)
    (tmp_path / "other").mkdir()
    argv = ["eval", "masks", "--images", str(tmp_path / "scenes"), "--masks"]
    assert main([*argv, str(tmp_path / "other"), "--model", str(micro_package)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "have no mask of the same name" in err[0]
