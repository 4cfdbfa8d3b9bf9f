"""Fixtures for the data-pipeline tests: a tiny checkpoint WITH encoders, its Gemma folder, the loaded
encoders (clip helpers are in data_helpers.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


@dataclass(frozen=True)
class TinyModel:
    checkpoint: Path
    gemma: Path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    from ltxdist.models.tiny_checkpoint import write_random_checkpoint
    from ltxdist.models.tiny_encoders import TINY_GEMMA_DIR, write_tiny_gemma

    root = tmp_path_factory.mktemp("tiny_full")
    ckpt = write_random_checkpoint(root / "ltx-2.3-tiny.safetensors", seed=0, with_encoders=True)
    return TinyModel(ckpt, write_tiny_gemma(root / TINY_GEMMA_DIR, seed=0))


@pytest.fixture(scope="session")
def encoders(tiny_model: TinyModel):
    from ltxdist.encoders import EncoderSet

    return EncoderSet.load(
        tiny_model.checkpoint, tiny_model.gemma, device=torch.device("cpu"), dtype=torch.float32
    )
