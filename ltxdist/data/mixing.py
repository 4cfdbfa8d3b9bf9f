"""Weighted mixing of several shard directories (e.g. one per character in multi-character training).

Each batch comes whole from one source, so it stays within one dataset and one bucket; which source
gives the next batch is drawn with probability proportional to its weight from a generator seeded by
(seed, rank, worker role). The whole stream is therefore a pure function of the plan, like
`CachedLatentStream`, and resumes the same way: a worker role's cursor is the choice generator's state
plus each source's own cursor (data/cursor.py), so resuming seeks instead of replaying; without cursors
the choices are replayed and each source fast-forwards from record headers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltxdist.data.collate import collate_samples
from ltxdist.data.cursor import ConsumerStream, Cursor, Item
from ltxdist.data.shards import ShardIndex, load_index
from ltxdist.data.streaming import CURSOR_KEY, ResumableStream, StreamPlan


@dataclass(frozen=True)
class MixSource:
    name: str
    directory: Path
    weight: float = 1.0


def _check_sources(sources: list[MixSource]) -> list[ShardIndex]:
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
    indexes = [load_index(s.directory) for s in sources]
    first = indexes[0]
    for s, other in zip(sources[1:], indexes[1:], strict=True):
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
    for s, index in zip(sources, indexes, strict=True):
        if index.num_samples == 0:
            raise ValueError(f"data mixing source '{s.name}': {s.directory} holds no samples")
    return indexes


class _MixedRole:
    """One worker role of a mixed stream: the choice generator, and one stream per source (started
    when the source is first chosen, from its cursor if it has one)."""

    def __init__(
        self, mixed: MixedLatentStream, role: int, num_workers: int, cursor: Cursor | None, decode: bool
    ):
        self.mixed, self.role, self.num_workers, self.decode = mixed, role, num_workers, decode
        self.rng = mixed.choice_rng(role)
        self.cursors: list[Cursor | None] = [None] * len(mixed.sources)
        if cursor is not None:
            try:
                version, internal, gauss = cursor["choices"]
                self.rng.setstate((version, tuple(internal), gauss))
                self.cursors = list(cursor["sources"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"the data position of the mixed stream is malformed ({exc})") from exc
            if len(self.cursors) != len(mixed.sources):
                raise ValueError(
                    f"the data position holds {len(self.cursors)} mixing sources, data.mix lists "
                    f"{len(mixed.sources)}"
                )
        self.streams: list[ConsumerStream | None] = [None] * len(mixed.sources)

    def next_batch(self) -> tuple[int, list[Item]]:
        k = self.mixed.pick(self.rng)
        stream = self.streams[k]
        if stream is None:
            source = self.mixed.sources[k]
            stream = self.streams[k] = ConsumerStream.restore(
                source.directory,
                self.mixed.indexes[k],
                self.mixed.plan,
                self.role,
                self.num_workers,
                self.cursors[k],
                decode=self.decode,
            )
        items = stream.next_batch()
        self.cursors[k] = stream.cursor()
        return k, items

    def cursor(self) -> Cursor:
        return {"choices": self.rng.getstate(), "sources": list(self.cursors)}

    def close(self) -> None:
        """Close the shard each source's stream is reading."""
        for stream in self.streams:
            if stream is not None:
                stream.close()

    def __enter__(self) -> _MixedRole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MixedLatentStream(ResumableStream):
    """Infinite stream of batches drawn from several sources by weight; resumes like CachedLatentStream
    (`skip_batches`, `cursors`)."""

    def __init__(
        self,
        sources: list[MixSource],
        plan: StreamPlan,
        skip_batches: int = 0,
        cursors: list[Cursor | None] | None = None,
    ):
        super().__init__()
        if plan.batch_size < 1:  # as CachedLatentStream: a batch of 0 samples would never end
            raise ValueError(f"data.batch_size must be >= 1, got {plan.batch_size}")
        self.indexes = _check_sources(sources)
        self.sources = sources
        self.plan = plan
        self.skip_batches = skip_batches
        self.cursors = cursors
        total = sum(s.weight for s in sources)
        self.probabilities = [s.weight / total for s in sources]

    def choice_rng(self, role: int) -> random.Random:
        return random.Random(f"mix-{self.plan.seed}-{self.plan.rank}-{role}")

    def pick(self, rng: random.Random) -> int:
        """The source of the next batch, drawn from a role's choice generator (`choice_rng`)."""
        return rng.choices(range(len(self.sources)), weights=self.probabilities)[0]

    def choices(self, role: int) -> Iterator[int]:
        """Source index of each successive batch of one worker role."""
        rng = self.choice_rng(role)
        while True:
            yield self.pick(rng)

    def _fast_forward(self, role: int, num_workers: int, batches: int) -> Cursor | None:
        if batches == 0:
            return None
        with _MixedRole(self, role, num_workers, None, decode=False) as mixed:
            for _ in range(batches):
                mixed.next_batch()
            return mixed.cursor()

    def iter_batches(
        self, role: int = 0, num_workers: int = 1, cursor: Cursor | None = None
    ) -> Iterator[dict[str, Any]]:
        # `with`: a generator closed early (or collected) closes its shards at once, not whenever the
        # garbage collector gets to the files.
        with _MixedRole(self, role, num_workers, cursor, decode=True) as mixed:
            while True:
                k, items = mixed.next_batch()
                batch = collate_samples([item.sample for item in items])  # type: ignore[misc]
                batch["source"] = self.sources[k].name
                batch[CURSOR_KEY] = {"role": role, "cursor": mixed.cursor()}
                yield batch
