"""One consumer's stream of batches (a data-parallel rank x a DataLoader worker role, over one shard
directory) as an explicit state machine whose state after any batch is a small JSON cursor.

The order is a pure function of (seed, epoch, rank, world size, worker role, number of workers):
- each epoch, the shards are shuffled by (seed, epoch); split "shard" gives each consumer every
  (world x workers)-th shard (rank first, then worker), split "sample" gives every consumer every shard
  and keeps every (world x workers)-th record;
- records pass through a shuffle buffer of `shuffle_buffer` samples drawn from by a generator seeded by
  (seed, epoch, rank, role);
- a batch is `batch_size` samples of one signature (bucket + tensor set); partial batches carry over to
  the next epoch, so every sample is used.

A cursor holds what an uninterrupted stream would carry on with: the epoch, the reading position (shard
in this epoch's order, byte offset of the next record, records read), how many draws the shuffle
generator made, and, as references to re-read, the samples waiting in the shuffle buffer and in the
partial batches. `ConsumerStream.restore` seeks to it: it re-reads those few samples (at most the
shuffle buffer plus batch_size - 1 per signature), replays at most one epoch of this consumer's shuffle
draws (no data read) and reads on from the byte offset. The cost does not depend on how many batches
came before. A sample reference is (shard index in index.json, byte offset of the record's first tar
header, record key); the key is checked when re-reading, so a shard rewritten since the checkpoint is
reported rather than silently read at the wrong place.

Without payloads (`decode=False`) the same machine reads only tar headers, each kept record's JSON and
the header of its safetensors payload (the signature needs them): `fast_forward` finds the cursor after
n batches that way, for positions that cannot seek (another number of ranks or workers; see
data/position.py). Its time still grows with n, but no tensor is read: a few hundred bytes per sample
instead of the whole sample (benchmarks/results/resume_*: 3x faster than decoding even for the tiny
model's samples of a few KB; real samples are 0.3-8 MB).
"""

from __future__ import annotations

import json
import random
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ltxdist.data.collate import batch_signature
from ltxdist.data.sample import JSON_EXT, TENSOR_EXT, CachedSample, SampleError, decode_sample
from ltxdist.data.shards import (
    RecordSpan,
    ShardIndex,
    ShardReadError,
    load_record,
    read_member,
    scan_records,
    shard_read_error,
)

Signature = tuple[str, tuple[str, ...]]
Cursor = dict[str, Any]  # JSON: see ConsumerStream.cursor


def order_rng(*parts: int) -> random.Random:
    # Random(str) hashes deterministically (unlike hash() of tuples across processes with PYTHONHASHSEED).
    return random.Random("-".join(str(p) for p in parts))


@dataclass(frozen=True)
class StreamPlan:
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 64
    split: str = "auto"  # "shard": whole shards per rank/worker; "sample": every k-th sample; "auto"


def split_mode(plan: StreamPlan, num_shards: int, consumers: int) -> str:
    if plan.split != "auto":
        return plan.split
    return "shard" if num_shards >= consumers else "sample"


@dataclass
class Item:
    """A sample on its way through the shuffle buffer and a partial batch."""

    ref: tuple[int, int, str]  # (shard index in index.json, byte offset of its first header, key)
    signature: Signature
    sample: CachedSample | None  # None when reading metadata only
    epoch: int = 0


@dataclass
class _Reading:
    """Where this epoch's reading stands, and the open shard."""

    shard_pos: int = 0  # position in this epoch's shard order
    offset: int = 0  # byte offset of the next record in that shard
    ordinal: int = 0  # records read from that shard (checked against index.json at its end)
    position: int = 0  # records read this epoch (split "sample" keeps every k-th)
    file: BinaryIO | None = None
    records: Iterator[RecordSpan] | None = None


@dataclass
class _Shuffle:
    rng: random.Random
    buffer: list[Item] = field(default_factory=list)
    steady_draws: int = 0  # draws from a full buffer (while records were still coming)
    drain_draws: int = 0  # draws after the epoch's last record
    drain_from: int | None = None  # buffer length when the last record came; None: not yet


class ConsumerStream:
    """Batches of one consumer of one shard directory; `cursor()` after any batch, `restore` to resume."""

    def __init__(
        self,
        directory: Path,
        index: ShardIndex,
        plan: StreamPlan,
        role: int = 0,
        num_workers: int = 1,
        *,
        decode: bool = True,
    ):
        self.directory, self.index, self.plan = directory, index, plan
        self.role, self.num_workers, self.decode = role, num_workers, decode
        consumers = plan.world_size * num_workers
        self.consumer = plan.rank * num_workers + role
        self.mode = split_mode(plan, len(index.shards), consumers)
        self.stride, self.phase = (1, 0) if self.mode == "shard" else (consumers, self.consumer)
        self.buffer_size = max(1, plan.shuffle_buffer)  # a buffer of 0 behaves as 1: no shuffling
        self.pending: dict[Signature, list[Item]] = {}
        self.reading = _Reading()
        self._begin_epoch(0)

    # -- ordering ----------------------------------------------------------------------------------
    def _begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        order = list(range(len(self.index.shards)))
        order_rng(self.plan.seed, epoch).shuffle(order)
        if self.mode == "shard":
            # split_by_node then split_by_worker, on an order shuffled by (seed, epoch)
            order = order[self.plan.rank :: self.plan.world_size][self.role :: self.num_workers]
        self.order = order
        self.close()
        self.reading = _Reading()
        self.shuffle = _Shuffle(order_rng(self.plan.seed, epoch, self.plan.rank, self.role))
        self.produced = False

    def close(self) -> None:
        """Close the shard being read, if any (reading it again reopens it at the same record)."""
        if self.reading.file is not None:
            self.reading.file.close()
            self.reading.file, self.reading.records = None, None

    def __enter__(self) -> ConsumerStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _path(self, shard: int) -> Path:
        return self.directory / self.index.shards[shard]["name"]

    def _next_record(self) -> Item | None:
        """The next record this consumer keeps this epoch; None once the epoch's records are read."""
        r = self.reading
        while r.shard_pos < len(self.order):
            shard = self.order[r.shard_pos]
            path = self._path(shard)
            try:
                if r.records is None:
                    r.file = open(path, "rb")  # noqa: SIM115 (open across batches; close() closes it)
                    r.records = scan_records(r.file, r.offset)
                span = next(r.records, None)
                if span is None:
                    self._check_count(shard, r.ordinal)
                    self.close()
                    r.shard_pos, r.offset, r.ordinal = r.shard_pos + 1, 0, 0
                    continue
                r.ordinal += 1
                r.offset = span.end
                position, r.position = r.position, r.position + 1
                if position % self.stride != self.phase:
                    continue
                return self._item(shard, span, r.file)
            except (OSError, tarfile.TarError) as exc:
                self.close()
                raise shard_read_error(path, exc) from exc
        return None

    def _check_count(self, shard: int, count: int) -> None:
        expected = self.index.shards[shard]["num_samples"]
        if count != expected:
            # A tar cut exactly between two samples reads without an error: count against the index.
            raise ShardReadError(
                f"shard {self._path(shard)} holds {count} samples, index.json says {expected}: the shard "
                "is truncated or was replaced; re-run ltxdist-prepare to rewrite it."
            )

    def _item(self, shard: int, span: RecordSpan, f: BinaryIO) -> Item:
        where = str(self._path(shard))
        ref = (shard, span.offset, span.key)
        if not self.decode:
            return Item(ref, peek_signature(f, span, where), None)
        sample = decode_sample(load_record(f, span), where=where)
        return Item(ref, batch_signature(sample), sample)

    def _next_shuffled(self) -> Item | None:
        """The next sample out of this epoch's shuffle buffer; None at the epoch's end. Fill to the
        buffer size, then draw one: the order of appending each sample and drawing once the buffer holds
        `buffer_size`, then draining it after the last record."""
        s = self.shuffle
        while s.drain_from is None and len(s.buffer) < self.buffer_size:
            item = self._next_record()
            if item is None:
                s.drain_from = len(s.buffer)
                break
            s.buffer.append(item)
        if not s.buffer:
            return None
        if s.drain_from is None:
            s.steady_draws += 1
        else:
            s.drain_draws += 1
        return s.buffer.pop(s.rng.randrange(len(s.buffer)))

    def next_batch(self) -> list[Item]:
        """The samples of the next batch (decoded unless reading metadata only)."""
        while True:
            item = self._next_shuffled()
            if item is None:
                if not self.produced:
                    raise ValueError(
                        f"rank {self.plan.rank} worker {self.role} received no samples from "
                        f"{self.directory}: {self.index.num_samples} samples in {len(self.index.shards)} "
                        f"shards are too few for {self.plan.world_size} ranks x {self.num_workers} workers "
                        "(lower data.num_workers)"
                    )
                self._begin_epoch(self.epoch + 1)
                continue
            self.produced = True
            item.epoch = self.epoch
            if item.sample is not None:
                item.sample.epoch = self.epoch  # seeds the sample's random draws
            group = self.pending.setdefault(item.signature, [])
            group.append(item)
            if len(group) == self.plan.batch_size:
                self.pending[item.signature] = []
                return group

    # -- cursor ------------------------------------------------------------------------------------
    def cursor(self) -> Cursor:
        """Where this stream stands after its last batch, as JSON (see the module doc)."""
        r, s = self.reading, self.shuffle
        return {
            "epoch": self.epoch,
            "shard_pos": r.shard_pos,
            "offset": r.offset,
            "ordinal": r.ordinal,
            "position": r.position,
            "draws": [s.steady_draws, s.drain_draws],
            "drain_from": s.drain_from,
            "buffer": [list(item.ref) for item in s.buffer],
            "pending": [[*item.ref, item.epoch] for group in self.pending.values() for item in group],
        }

    @classmethod
    def restore(
        cls,
        directory: Path,
        index: ShardIndex,
        plan: StreamPlan,
        role: int,
        num_workers: int,
        cursor: Cursor | None,
        *,
        decode: bool = True,
    ) -> ConsumerStream:
        """The stream positioned at `cursor` (None: the start), without reading what came before."""
        stream = cls(directory, index, plan, role, num_workers, decode=decode)
        if cursor is None:
            return stream
        try:
            stream._restore(cursor)
        except SampleError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(
                f"the data position for {directory} in the checkpoint is malformed ({type(exc).__name__}: "
                f"{exc})"
            ) from exc
        return stream

    def _restore(self, cursor: Cursor) -> None:
        self._begin_epoch(int(cursor["epoch"]))
        self.produced = True  # a cursor is taken after a batch, whose last sample came from this epoch
        r, s = self.reading, self.shuffle
        r.shard_pos, r.offset = int(cursor["shard_pos"]), int(cursor["offset"])
        r.ordinal, r.position = int(cursor["ordinal"]), int(cursor["position"])
        s.steady_draws, s.drain_draws = (int(n) for n in cursor["draws"])
        s.drain_from = None if cursor["drain_from"] is None else int(cursor["drain_from"])
        # Replay the generator's draws with the buffer lengths they had: buffer_size while records were
        # coming, then one less per draw from drain_from on. No data is read.
        for _ in range(s.steady_draws):
            s.rng.randrange(self.buffer_size)
        for i in range(s.drain_draws):
            s.rng.randrange(s.drain_from - i)  # type: ignore[operator]
        with _RefReader(self) as reader:
            s.buffer = [reader.item(ref) for ref in cursor["buffer"]]
            for *ref, epoch in cursor["pending"]:
                item = reader.item(ref)
                item.epoch = int(epoch)
                if item.sample is not None:
                    item.sample.epoch = item.epoch
                self.pending.setdefault(item.signature, []).append(item)


class _RefReader:
    """Re-reads samples named by reference (shard, byte offset, key), keeping each shard open once."""

    def __init__(self, stream: ConsumerStream):
        self.stream = stream
        self.files: dict[int, BinaryIO] = {}

    def __enter__(self) -> _RefReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self.files.values():
            f.close()

    def item(self, ref: list[Any] | tuple[Any, ...]) -> Item:
        shard, offset, key = int(ref[0]), int(ref[1]), str(ref[2])
        path = self.stream._path(shard)
        try:
            f = self.files.get(shard)
            if f is None:
                f = self.files[shard] = open(path, "rb")  # noqa: SIM115 (closed by __exit__)
            span = next(scan_records(f, offset), None)
            if span is None or span.key != key:
                found = "the end of the shard" if span is None else f"record {span.key!r}"
                raise ShardReadError(
                    f"shard {path}: the data position saved in the checkpoint expects record {key!r} at "
                    f"byte {offset} but finds {found}: the shard was rewritten since the checkpoint. Restore "
                    "the shards the run was trained on, or start a new run in another folder (run.name=NEW)."
                )
            return self.stream._item(shard, span, f)
        except (OSError, tarfile.TarError) as exc:
            raise shard_read_error(path, exc) from exc


def peek_signature(f: BinaryIO, span: RecordSpan, where: str) -> Signature:
    """A record's batch signature (bucket, tensor names) from its JSON member and the header of its
    safetensors member, without reading the tensors: what `batch_signature` gives once decoded."""
    members = {ext: (offset, size) for ext, offset, size in span.members}
    if TENSOR_EXT not in members or JSON_EXT not in members:
        raise SampleError(f"record {span.key} in {where} lacks its .{TENSOR_EXT} or .{JSON_EXT} member")
    try:
        meta = json.loads(read_member(f, *members[JSON_EXT], f"{span.key}.{JSON_EXT}", tensor=False))
        offset, size = members[TENSOR_EXT]
        f.seek(offset)
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > size:
            raise ValueError(f"header size {header_len} runs past the payload ({size} bytes)")
        header = json.loads(f.read(header_len))
        names = tuple(sorted(name for name in header if name != "__metadata__"))
        return str(meta["bucket"]), names
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise SampleError(f"record {span.key} in {where} is corrupt: {exc}") from exc


def fast_forward(
    directory: Path, index: ShardIndex, plan: StreamPlan, role: int, num_workers: int, batches: int
) -> Cursor | None:
    """The cursor of one consumer after `batches` batches, found from record headers alone."""
    if batches == 0:
        return None
    with ConsumerStream(directory, index, plan, role, num_workers, decode=False) as stream:
        for _ in range(batches):
            stream.next_batch()
        return stream.cursor()
