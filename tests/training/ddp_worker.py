"""Run by torchrun in test_distributed.py: train, then dump this rank's centre and teacher."""

import sys
from pathlib import Path

import torch

from training.config import load_config
from training.distributed import shutdown
from training.train import Trainer

if __name__ == "__main__":
    preset, run_dir, *overrides = sys.argv[1:]
    trainer = Trainer(load_config(preset, overrides), Path(run_dir))
    result = trainer.fit()
    torch.save(
        {
            "center": trainer.model.dino_loss.center,
            "teacher": trainer.model.teacher.state_dict(),
            "steps": result.steps,
            "world_size": trainer.dist.world_size,
            "knn_start": result.knn_start,
            "knn_end": result.knn_end,
        },
        Path(run_dir) / f"rank{trainer.dist.rank}.pt",
    )
    shutdown()
