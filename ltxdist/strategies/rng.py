"""Per-sample random streams.

Every random draw for a sample (sigma, noise, first-frame conditioning, caption dropout) comes from a
generator seeded by (run seed, sample id, epoch in which it was read). The draws therefore do not
depend on batch size, world size or worker count: 2 ranks x batch 1 see exactly what 1 rank x batch 2
sees, and a resumed run draws what an uninterrupted one would. Under data mixing the id is qualified by
the sample's dataset (`stream_ids`): separately prepared datasets number their samples alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch


def sample_seed(seed: int, sample_id: str, epoch: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{sample_id}\0{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def stream_ids(batch: Mapping[str, Any]) -> list[str]:
    """The ids that seed each sample's stream: its id, prefixed by its dataset when the batch comes from
    data mixing (`source`). Every prepared dataset names its samples row00000000, row00000001, ...:
    without the prefix, row k of two characters would draw the same sigma, noise and coins."""
    source = batch.get("source")
    return list(batch["ids"]) if source is None else [f"{source}/{i}" for i in batch["ids"]]


def sample_generators(seed: int, sample_ids: list[str], epochs: list[int]) -> list[torch.Generator]:
    return [
        torch.Generator().manual_seed(sample_seed(seed, i, e))
        for i, e in zip(sample_ids, epochs, strict=True)
    ]


def randn_per_sample(shape_per_sample: tuple[int, ...], gens: list[torch.Generator]) -> torch.Tensor:
    """(B, *shape) standard normal, row b drawn from gens[b] (on the CPU)."""
    return torch.stack([torch.randn(shape_per_sample, generator=g) for g in gens])


def rand_per_sample(gens: list[torch.Generator]) -> torch.Tensor:
    """(B,) uniform [0, 1), one draw from each generator."""
    return torch.stack([torch.rand((), generator=g) for g in gens])
