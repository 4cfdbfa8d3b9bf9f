"""Paths and override builders shared by the end-to-end tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def train_overrides(ckpt: Path, data: Path, run_dir: Path, **extra: object) -> list[str]:
    """Hydra overrides for a small, deterministic fp32 CPU run."""
    base = {
        "experiment": "tiny_demo",
        "model.checkpoint": ckpt,
        "model.dtype": "float32",
        "data.path": data,
        "run.dir": run_dir,
        "trainer.progress_bar": "false",
        "trainer.max_steps": 12,
        "trainer.checkpoint_every_n_steps": 4,
        "lora.rank": 4,
        "lora.alpha": 8,
    }
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]
