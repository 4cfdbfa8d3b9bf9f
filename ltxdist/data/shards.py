"""Writing and indexing webdataset shards of cached samples.

A shard is written to a temporary name and renamed when complete, so a shard on disk is complete or
absent. `index.json` lists shards with per-shard sample and bucket counts, the model version and the
encoder fingerprints; ltxdist-prepare writes it (atomically) once every shard is finished, and a reader
takes its presence to mean the directory is a complete dataset. Resuming an interrupted preparation
does not use it: each finished shard has its own record (`shard-*.unit.json`, prepare/plan.py).
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
import webdataset as wds

from ltxdist.data.sample import SCHEMA_VERSION, TENSOR_EXT, CachedSample, encode_sample
from ltxdist.io import atomic_file, save_safetensors_atomic, write_json_atomic

INDEX_NAME = "index.json"
EMPTY_CAPTION_NAME = "empty_caption.safetensors"


class ShardIndexError(ValueError):
    """A shard directory or its index.json is missing, stale or inconsistent."""


class ShardReadError(RuntimeError):
    """A shard could not be read (truncated, deleted, unreadable)."""


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def write_shard(path: Path, samples: list[CachedSample]) -> dict[str, Any]:
    """Write one complete tar shard atomically; returns its index entry."""
    buckets: Counter[str] = Counter()
    with atomic_file(path) as tmp, open(tmp, "wb") as f, wds.TarWriter(f) as writer:
        for s in samples:
            writer.write(encode_sample(s))
            buckets[s.bucket] += 1
    return {"name": path.name, "num_samples": len(samples), "buckets": dict(sorted(buckets.items()))}


@dataclass
class ShardIndex:
    model_version: str
    encoder_fingerprints: dict[str, str] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_samples(self) -> int:
        return sum(s["num_samples"] for s in self.shards)

    @property
    def buckets(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for s in self.shards:
            total.update(s["buckets"])
        return dict(sorted(total.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model_version": self.model_version,
            "encoder_fingerprints": self.encoder_fingerprints,
            "num_samples": self.num_samples,
            "buckets": self.buckets,
            "shards": self.shards,
            "empty_caption": EMPTY_CAPTION_NAME,
            **self.extra,
        }

    def save(self, directory: Path) -> None:
        write_json_atomic(directory / INDEX_NAME, self.to_json())


def load_index(directory: str | Path) -> ShardIndex:
    directory = Path(directory)
    path = directory / INDEX_NAME
    if not path.is_file():
        raise ShardIndexError(
            f"no {INDEX_NAME} in {directory}: point data.path at a directory written by ltxdist-prepare "
            "(or ltxdist-synthetic-data)"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardIndexError(f"{path} is not valid JSON: {exc}") from exc
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ShardIndexError(
            f"{path}: schema_version {raw.get('schema_version')} is not the supported {SCHEMA_VERSION}; "
            "re-run preprocessing"
        )
    known = {
        "schema_version",
        "model_version",
        "encoder_fingerprints",
        "num_samples",
        "buckets",
        "shards",
        "empty_caption",
    }
    index = ShardIndex(
        model_version=raw["model_version"],
        encoder_fingerprints=raw.get("encoder_fingerprints", {}),
        shards=raw["shards"],
        extra={k: v for k, v in raw.items() if k not in known},
    )
    for s in index.shards:
        if not (directory / s["name"]).is_file():
            raise ShardIndexError(f"{directory / s['name']} is listed in {path} but missing")
    return index


def save_empty_caption(
    directory: Path,
    video_context: torch.Tensor,
    audio_context: torch.Tensor,
    context_mask: torch.Tensor,
    made_with: dict[str, str] | None = None,
) -> None:
    """The cached embedding of the empty prompt, used for caption dropout. `made_with` (the text
    settings and encoders it was encoded with) is kept in the file's safetensors metadata, so a rerun
    with other settings knows to encode it again (`empty_caption_metadata`)."""
    save_safetensors_atomic(
        {"video_context": video_context, "audio_context": audio_context, "context_mask": context_mask},
        directory / EMPTY_CAPTION_NAME,
        metadata=made_with,
    )


def empty_caption_metadata(directory: Path) -> dict[str, str] | None:
    """The `made_with` metadata of the cached empty caption (header only, no tensors read); None when
    the file is missing, unreadable, or was written without it (an older ltxdist-prepare)."""
    from safetensors import SafetensorError, safe_open

    path = directory / EMPTY_CAPTION_NAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or None
    except (OSError, SafetensorError):  # cut short, or not safetensors at all: encode it again
        return None


def load_empty_caption(directory: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(directory) / EMPTY_CAPTION_NAME
    if not path.is_file():
        raise ShardIndexError(f"{path} is missing: caption dropout needs the cached empty-caption embedding")
    return load_file(str(path))


def read_shard_records(path: Path) -> list[dict[str, Any]]:
    """All records of one shard (tools and tests; training streams them with `read_shard`)."""
    return list(read_shard(path))


@dataclass(frozen=True)
class RecordSpan:
    """Where one record (sample) lies in a tar shard, found from the 512-byte member headers alone.

    `offset` is its first header: a reader seeks there to read the record again (the data position of a
    checkpoint names samples this way). `end` lies just past its last member: the next record's first
    header, where reading the rest of the shard resumes."""

    key: str
    offset: int
    end: int
    members: tuple[tuple[str, int, int], ...]  # (extension, offset of the member's data, size in bytes)


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def scan_records(f: BinaryIO, start: int = 0) -> Iterator[RecordSpan]:
    """The records of an open tar shard from byte `start` (a record's first header, or 0) on, grouped by
    key as webdataset groups them (the name up to the first dot of its last path part). Only headers are
    read: tarfile seeks past each member's data, so the caller may read payloads in between."""
    f.seek(start)
    key: str | None = None
    first = end = start
    members: list[tuple[str, int, int]] = []
    # Closing the TarFile leaves `f` open (the caller's): it parses from the file's current position.
    with tarfile.open(fileobj=f, mode="r:") as tar:
        while (member := tar.next()) is not None:
            if not member.isfile():
                continue
            head, slash, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            if key is not None and head + slash + stem != key:
                yield RecordSpan(key, first, end, tuple(members))
                key, members = None, []
            if key is None:
                key, first = head + slash + stem, member.offset
            members.append((ext, member.offset_data, member.size))
            end = member.offset_data + _padded(member.size)
    if key is not None:
        yield RecordSpan(key, first, end, tuple(members))


def read_member(f: BinaryIO, data_offset: int, size: int, name: str, tensor: bool) -> Any:
    """One member's payload: a uint8 tensor (safetensors payloads, which the sample's tensors will view)
    or bytes. Raises tarfile.ReadError when the file ends before the member does."""
    f.seek(data_offset)
    if tensor:
        payload = torch.empty(size, dtype=torch.uint8)
        got = f.readinto(payload.numpy()) if size else 0
    else:
        payload = f.read(size)
        got = len(payload)
    if got != size:
        raise tarfile.ReadError(f"member {name} ends after {got} of {size} bytes")
    return payload


def load_record(f: BinaryIO, span: RecordSpan) -> dict[str, Any]:
    """The record `span` of an open shard: {"__key__": key, ext: payload, ...}, one read per member."""
    record: dict[str, Any] = {"__key__": span.key}
    for ext, data_offset, size in span.members:
        record[ext] = read_member(f, data_offset, size, f"{span.key}.{ext}", ext == TENSOR_EXT)
    return record


def read_shard(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one webdataset tar shard in order: {"__key__": key, ext: payload, ...}. The
    safetensors payload comes as a uint8 tensor that the sample's tensors will view; other members as
    bytes.

    Why not webdataset's `tarfile_to_samples`: it pulls the tar through tarfile's stream mode, which
    copies each member block by block (~0.7 ms per 300 KB sample on the benchmark machine, more than
    decoding and batching together). Here tarfile parses only the 512-byte headers (seeking past data,
    and raising on a cut-off member) and each member is read with one `readinto`.
    """
    try:
        with open(path, "rb") as f:
            for span in scan_records(f):
                yield load_record(f, span)
    except (OSError, tarfile.TarError) as exc:
        raise shard_read_error(path, exc) from exc


def shard_read_error(path: Path, exc: BaseException) -> ShardReadError:
    return ShardReadError(
        f"failed reading shard {path}: {exc}. The shard is truncated or was removed; "
        "re-run ltxdist-prepare to rewrite it."
    )
