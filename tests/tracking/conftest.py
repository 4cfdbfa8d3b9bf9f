"""A tiny checkpoint WITH VAEs and text connectors, its tiny Gemma and synthetic shards for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TinyRun:
    checkpoint: Path
    gemma: Path
    data: Path


@pytest.fixture(scope="session")
def tiny_run_inputs(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    from ltxdist.data.synthetic import write_synthetic_dataset
    from ltxdist.models.tiny_checkpoint import write_random_checkpoint
    from ltxdist.models.tiny_encoders import TINY_GEMMA_DIR, write_tiny_gemma

    root = tmp_path_factory.mktemp("tiny_full_tracking")
    ckpt = write_random_checkpoint(root / "ltx-2.3-tiny.safetensors", seed=0, with_encoders=True)
    gemma = write_tiny_gemma(root / TINY_GEMMA_DIR, seed=0)
    data = root / "data"
    write_synthetic_dataset(data, ckpt, num_samples=16, samples_per_shard=8, buckets=("64x64x17",), seed=0)
    return TinyRun(ckpt, gemma, data)
