"""Weighted mixing of several shard directories (e.g. one per character in multi-character training).

Each batch comes whole from one source, so it stays within one dataset and one bucket; which source
gives the next batch is drawn with probability proportional to its weight from a generator seeded by
(seed, rank, worker role). The whole stream is therefore a pure function of the plan, like
`CachedLatentStream`, and `skip_batches` resumes it exactly: the choices are replayed and each source
skips the batches it already gave.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ltxdist.data.shards import load_index
from ltxdist.data.streaming import CachedLatentStream, StreamPlan


@dataclass(frozen=True)
class MixSource:
    name: str
    directory: Path
    weight: float = 1.0


def _check_sources(sources: list[MixSource]) -> None:
    if not sources:
        raise ValueError("data mixing needs at least one source")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"data mixing source names must be unique, got {names}")
    for s in sources:
        if not (math.isfinite(s.weight) and s.weight > 0):
            raise ValueError(
                f"data mixing source '{s.name}' ({s.directory}): weight must be > 0, got {s.weight}"
            )
    first = load_index(sources[0].directory)
    for s in sources[1:]:
        other = load_index(s.directory)
        if other.model_version != first.model_version:
            raise ValueError(
                f"data mixing: '{s.name}' ({s.directory}) was prepared for model version "
                f"{other.model_version}, '{sources[0].name}' ({sources[0].directory}) for "
                f"{first.model_version}; re-prepare one of them"
            )
        if other.encoder_fingerprints != first.encoder_fingerprints:
            raise ValueError(
                f"data mixing: '{s.name}' ({s.directory}) and '{sources[0].name}' ({sources[0].directory}) "
                "were encoded by different encoders (encoder_fingerprints differ in index.json); "
                "re-prepare one of them"
            )


class MixedLatentStream(torch.utils.data.IterableDataset):
    """Infinite stream of batches drawn from several sources by weight; `skip_batches` resumes exactly."""

    def __init__(self, sources: list[MixSource], plan: StreamPlan, skip_batches: int = 0):
        super().__init__()
        _check_sources(sources)
        self.sources = sources
        self.plan = plan
        self.skip_batches = skip_batches
        self.streams = [CachedLatentStream(s.directory, plan) for s in sources]
        total = sum(s.weight for s in sources)
        self.probabilities = [s.weight / total for s in sources]

    def choices(self, role: int) -> Iterator[int]:
        """Source index of each successive batch of one worker role."""
        rng = random.Random(f"mix-{self.plan.seed}-{self.plan.rank}-{role}")
        population = range(len(self.sources))
        while True:
            yield rng.choices(population, weights=self.probabilities)[0]

    def iter_batches(self, role: int = 0, num_workers: int = 1) -> Iterator[dict[str, Any]]:
        # Generators start reading a source only when it is first chosen.
        iters = [stream.iter_batches(role, num_workers) for stream in self.streams]
        for k in self.choices(role):
            batch = next(iters[k])
            batch["source"] = self.sources[k].name
            yield batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Same round-robin bookkeeping as CachedLatentStream: global batch i comes from role
        # i % num_workers, and roles are rotated so the first batch after resuming is global skip_batches.
        role = (physical + self.skip_batches) % num_workers
        skip = len(range(role, self.skip_batches, num_workers))
        for i, batch in enumerate(self.iter_batches(role, num_workers)):
            if i >= skip:
                yield batch
