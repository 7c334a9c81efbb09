"""Shared fixtures: synthetic images and tiny configs, so every test runs offline on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import TrainConfig, load_config
from training.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
TINY_PRESET = ROOT / "configs" / "tiny.yaml"

# Smaller than the tiny preset: a forward/backward takes milliseconds.
MICRO = [
    "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
    "head.out_dim=64",
    "head.hidden_dim=64",
    "head.bottleneck_dim=32",
    "crops.local_number=2",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.holdout_per_class=0",
    "run.tensorboard=false",
    "run.log_every_steps=2",
    "run.threads=1",
    "eval.at_start=false",
]


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 classes × 12 images of 32 px."""
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), 12, 32, seed=1)


@pytest.fixture
def micro_config(synthetic_dir: Path, tmp_path: Path):
    """Factory for a micro config on the synthetic images, with extra overrides."""

    def make(*overrides: str) -> TrainConfig:
        return load_config(
            TINY_PRESET,
            [
                *MICRO,
                f"data.train={synthetic_dir}",
                f"data.cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )

    return make


@pytest.fixture(scope="session")
def micro_run(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step training run of the micro model (config.yaml, last.pt, summary.json)."""
    from training.train import Trainer

    run_dir = tmp_path_factory.mktemp("micro_run")
    cache = run_dir.parent / f"{run_dir.name}_cache"
    cfg = load_config(
        TINY_PRESET,
        [*MICRO, f"data.train={synthetic_dir}", f"data.cache_dir={cache}", "run.max_steps=2"],
    )
    Trainer(cfg, run_dir).fit()
    return run_dir


@pytest.fixture(scope="session")
def micro_package(micro_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro run exported as a model package with an int8 variant."""
    from training.export import export_run

    return export_run(micro_run, tmp_path_factory.mktemp("models"), "micro", quantize="int8")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need CUDA: skipped, with the reason, where there is none."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in gpu:
        item.add_marker(skip)
