"""Shared fixtures: one tiny LTX-2.3-format checkpoint and one synthetic shard set per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


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
