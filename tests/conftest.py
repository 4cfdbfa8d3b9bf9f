"""Shared fixtures: one tiny LTX-2.3-format checkpoint and one synthetic shard set per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ltxdist.models.tiny_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "ltx-2.3-tiny.safetensors", seed=0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> Path:
    from ltxdist.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(
        out, tiny_ckpt, num_samples=24, samples_per_shard=6, buckets=("64x64x17", "96x64x9"), seed=0
    )
    return out


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
