"""Stream batches of cached samples from webdataset shards.

Order is a pure function of (seed, epoch, rank, world size, worker, number of workers) (data/cursor.py).
Batches larger than 1 are formed within one bucket; partial buckets carry over into the next epoch
instead of being dropped, so every sample is used.

Resuming: every batch carries its worker role's cursor (`batch["stream_cursor"]`: the stream's state
right after that batch). The training module keeps the cursor of the last batch it trained from each
role and saves them with the checkpoint; a resumed stream seeks to them, so resuming costs the same at
step 100 as at step 30,000. A stream given only a number of batches to skip (a checkpoint from another
layout, converted through the number of samples consumed: data/position.py) first finds the cursors
from record headers alone, then seeks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ltxdist.data.collate import WireBatch, collate_samples
from ltxdist.data.cursor import ConsumerStream, Cursor, StreamPlan, fast_forward
from ltxdist.data.shards import ShardIndex, ShardReadError, load_index

__all__ = ["CURSOR_KEY", "CachedLatentStream", "ShardReadError", "StreamPlan", "worker_role"]

CURSOR_KEY = (
    "stream_cursor"  # batch[CURSOR_KEY] = {"role": worker role, "cursor": its cursor after the batch}
)


def worker_role(physical: int, num_workers: int, batches_seen: int) -> int:
    """The DataLoader takes batches round-robin starting at worker 0, so batch i of the run comes from
    the worker playing role i % num_workers. After `batches_seen` batches the next one wanted is
    batches_seen's: roles are rotated so physical worker 0 plays role batches_seen % num_workers."""
    return (physical + batches_seen) % num_workers


def saved_role_cursor(cursors: list[Cursor | None], role: int, num_workers: int) -> Cursor | None:
    """Worker role `role`'s saved cursor; the saved position must be for this many workers."""
    if len(cursors) != num_workers:
        raise ValueError(
            f"the data position holds cursors for {len(cursors)} workers, this stream runs "
            f"{num_workers} (data.num_workers): convert it with cursors_after()"
        )
    return cursors[role]


def role_batches(role: int, num_workers: int, batches_seen: int) -> int:
    """How many of the first `batches_seen` batches came from `role`."""
    return len(range(role, batches_seen, num_workers))


class ResumableStream(torch.utils.data.IterableDataset):
    """What every batch stream shares: each DataLoader worker takes a worker role and starts it from its
    saved cursor (`cursors`, as in a checkpoint) or, without cursors, from `skip_batches` batches
    fast-forwarded from record headers. A stream supplies `_fast_forward` and `iter_batches`."""

    skip_batches: int
    cursors: list[Cursor | None] | None

    def _fast_forward(self, role: int, num_workers: int, batches: int) -> Cursor | None:
        """The cursor of worker role `role` (of `num_workers`) after it produced `batches` batches."""
        raise NotImplementedError

    def iter_batches(
        self, role: int = 0, num_workers: int = 1, cursor: Cursor | None = None
    ) -> Iterator[dict[str, Any]]:
        """The batches of one worker role, from `cursor` (None: the start)."""
        raise NotImplementedError

    def cursors_after(self, batches: int, num_workers: int) -> list[Cursor | None]:
        """Each worker role's cursor after this rank consumed `batches` batches (headers only)."""
        roles = max(1, num_workers)
        return [self._fast_forward(role, roles, role_batches(role, roles, batches)) for role in range(roles)]

    def role_cursor(self, role: int, num_workers: int) -> Cursor | None:
        if self.cursors is None:
            return self._fast_forward(role, num_workers, role_batches(role, num_workers, self.skip_batches))
        return saved_role_cursor(self.cursors, role, num_workers)

    def __iter__(self) -> Iterator[dict[str, Any] | WireBatch]:
        info = torch.utils.data.get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        role = worker_role(physical, num_workers, self.skip_batches)
        for batch in self.iter_batches(role, num_workers, self.role_cursor(role, num_workers)):
            # In a worker, the batch is pickled to the main process: WireBatch picks the cheaper way.
            yield WireBatch(batch) if info is not None else batch


class CachedLatentStream(ResumableStream):
    """Infinite stream of collated batches for one rank.

    `skip_batches`: batches this rank consumed before (which worker role's turn comes next). `cursors`:
    one per worker role (None for a role that has not produced a batch yet), as saved in a checkpoint;
    without them the stream fast-forwards `skip_batches` from record headers (see the module doc)."""

    def __init__(
        self,
        directory: str | Path,
        plan: StreamPlan,
        skip_batches: int = 0,
        cursors: list[Cursor | None] | None = None,
    ):
        super().__init__()
        self.directory = Path(directory)
        self.index: ShardIndex = load_index(self.directory)
        self.plan = plan
        self.skip_batches = skip_batches
        self.cursors = cursors
        if plan.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {plan.batch_size}")
        if self.index.num_samples == 0:
            raise ValueError(f"{self.directory} holds no samples")

    def _fast_forward(self, role: int, num_workers: int, batches: int) -> Cursor | None:
        return fast_forward(self.directory, self.index, self.plan, role, num_workers, batches)

    def iter_batches(
        self, role: int = 0, num_workers: int = 1, cursor: Cursor | None = None
    ) -> Iterator[dict[str, Any]]:
        """The batches of one worker role, from `cursor` (None: the start)."""
        # `with`: a generator closed early (or collected) closes its shard at once.
        with ConsumerStream.restore(
            self.directory, self.index, self.plan, role, num_workers, cursor
        ) as stream:
            while True:
                items = stream.next_batch()
                batch = collate_samples([item.sample for item in items])  # type: ignore[misc]
                batch[CURSOR_KEY] = {"role": role, "cursor": stream.cursor()}
                yield batch
