"""Stream batches of cached samples from webdataset shards.

Order is a pure function of (seed, epoch, rank, world size, worker, number of workers), so a resumed
run that skips the batches it already consumed sees exactly the batches an uninterrupted run would.
Batches larger than 1 are formed within one bucket; partial buckets carry over into the next epoch
instead of being dropped, so every sample is used.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ltxdist.data.collate import WireBatch, batch_signature, collate_samples
from ltxdist.data.sample import CachedSample, decode_sample
from ltxdist.data.shards import ShardIndex, ShardReadError, load_index, read_shard

__all__ = ["CachedLatentStream", "ShardReadError", "StreamPlan"]


@dataclass(frozen=True)
class StreamPlan:
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 64
    split: str = "auto"  # "shard": whole shards per rank/worker; "sample": every k-th sample; "auto"


def _rng(*parts: int) -> random.Random:
    # Random(str) hashes deterministically (unlike hash() of tuples across processes with PYTHONHASHSEED).
    return random.Random("-".join(str(p) for p in parts))


class CachedLatentStream(torch.utils.data.IterableDataset):
    """Infinite stream of collated batches for one rank; `skip_batches` resumes mid-stream."""

    def __init__(self, directory: str | Path, plan: StreamPlan, skip_batches: int = 0):
        super().__init__()
        self.directory = Path(directory)
        self.index: ShardIndex = load_index(self.directory)
        self.plan = plan
        self.skip_batches = skip_batches
        if plan.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {plan.batch_size}")
        if self.index.num_samples == 0:
            raise ValueError(f"{self.directory} holds no samples")

    # -- ordering ----------------------------------------------------------------------------------
    def _split_mode(self, consumers: int) -> str:
        if self.plan.split != "auto":
            return self.plan.split
        return "shard" if len(self.index.shards) >= consumers else "sample"

    def _epoch_samples(self, epoch: int, worker: int, num_workers: int) -> Iterator[CachedSample]:
        p = self.plan
        consumers = p.world_size * num_workers
        consumer = p.rank * num_workers + worker
        names = [s["name"] for s in self.index.shards]
        _rng(p.seed, epoch).shuffle(names)
        if self._split_mode(consumers) == "shard":
            # split_by_node then split_by_worker, on an order shuffled by (seed, epoch)
            mine = names[p.rank :: p.world_size][worker::num_workers]
            stride, offset = 1, 0
        else:
            mine, stride, offset = names, consumers, consumer
        for position, sample in enumerate(self._read(mine)):
            if position % stride == offset:
                yield sample

    def _read(self, names: list[str]) -> Iterator[CachedSample]:
        expected = {s["name"]: s["num_samples"] for s in self.index.shards}
        for name in names:
            path = self.directory / name
            count = 0
            for record in read_shard(path):
                count += 1
                yield decode_sample(record, where=str(path))
            if count != expected[name]:
                # A tar cut exactly between two samples reads without an error: count against the index.
                raise ShardReadError(
                    f"shard {path} holds {count} samples, index.json says {expected[name]}: the shard is "
                    "truncated or was replaced; re-run ltxdist-prepare to rewrite it."
                )

    def _shuffled(self, samples: Iterator[CachedSample], rng: random.Random) -> Iterator[CachedSample]:
        buf: list[CachedSample] = []
        for s in samples:
            buf.append(s)
            if len(buf) >= self.plan.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        while buf:
            yield buf.pop(rng.randrange(len(buf)))

    def iter_batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict[str, Any]]:
        pending: dict[tuple[str, tuple[str, ...]], list[CachedSample]] = {}
        epoch = 0
        while True:
            rng = _rng(self.plan.seed, epoch, self.plan.rank, worker)
            produced = False
            for sample in self._shuffled(self._epoch_samples(epoch, worker, num_workers), rng):
                produced = True
                sample.epoch = epoch
                group = pending.setdefault(batch_signature(sample), [])
                group.append(sample)
                if len(group) == self.plan.batch_size:
                    batch = collate_samples(group)
                    pending[batch_signature(sample)] = []
                    yield batch
            if not produced:
                raise ValueError(
                    f"rank {self.plan.rank} worker {worker} received no samples from {self.directory}: "
                    f"{self.index.num_samples} samples in {len(self.index.shards)} shards are too few for "
                    f"{self.plan.world_size} ranks x {num_workers} workers (lower data.num_workers)"
                )
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any] | WireBatch]:
        info = torch.utils.data.get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader takes batches round-robin starting at worker 0, so global batch i comes from
        # the worker playing role i % num_workers. After skipping, the first batch wanted is global
        # `skip_batches`: rotate roles so physical worker 0 plays role skip_batches % num_workers.
        role = (physical + self.skip_batches) % num_workers
        skip = len(range(role, self.skip_batches, num_workers))
        for i, batch in enumerate(self.iter_batches(role, num_workers)):
            if i >= skip:
                # In a worker, the batch is pickled to the main process: WireBatch picks the cheaper way.
                yield WireBatch(batch) if info is not None else batch
