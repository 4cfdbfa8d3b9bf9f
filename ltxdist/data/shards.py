"""Writing and indexing webdataset shards of cached samples.

A shard is written to a temporary name and renamed when complete, so a shard on disk is complete or
absent. `index.json` lists shards with per-shard sample and bucket counts, the model version and the
encoder fingerprints; it is rewritten atomically after each shard so an interrupted run can resume.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    directory: Path, video_context: torch.Tensor, audio_context: torch.Tensor, context_mask: torch.Tensor
) -> None:
    """The cached embedding of the empty prompt, used for caption dropout."""
    save_safetensors_atomic(
        {"video_context": video_context, "audio_context": audio_context, "context_mask": context_mask},
        directory / EMPTY_CAPTION_NAME,
    )


def load_empty_caption(directory: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(directory) / EMPTY_CAPTION_NAME
    if not path.is_file():
        raise ShardIndexError(f"{path} is missing: caption dropout needs the cached empty-caption embedding")
    return load_file(str(path))


def read_shard_records(path: Path) -> list[dict[str, Any]]:
    """All records of one shard (tools and tests; training streams them with `read_shard`)."""
    return list(read_shard(path))


def read_shard(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one webdataset tar shard in order: {"__key__": key, ext: payload, ...}, grouped by
    key as webdataset groups them (the name up to the first dot of its last path part). The safetensors
    payload comes as a uint8 tensor that the sample's tensors will view; other members as bytes.

    Why not webdataset's `tarfile_to_samples`: it pulls the tar through tarfile's stream mode, which
    copies each member block by block (~0.7 ms per 300 KB sample on the benchmark machine, more than
    decoding and batching together). Here tarfile parses only the 512-byte headers (seeking past data,
    and raising on a cut-off member) and each member is read with one `readinto`.
    """
    record: dict[str, Any] | None = None
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            while (member := tar.next()) is not None:
                if not member.isfile():
                    continue
                head, slash, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                key = head + slash + stem
                if record is not None and record["__key__"] != key:
                    yield record
                    record = None
                if record is None:
                    record = {"__key__": key}
                f.seek(member.offset_data)
                if ext == TENSOR_EXT:
                    payload = torch.empty(member.size, dtype=torch.uint8)
                    got = f.readinto(payload.numpy()) if member.size else 0
                else:
                    payload = f.read(member.size)
                    got = len(payload)
                if got != member.size:
                    raise tarfile.ReadError(f"member {member.name} ends after {got} of {member.size} bytes")
                record[ext] = payload
    except (OSError, tarfile.TarError) as exc:
        raise ShardReadError(
            f"failed reading shard {path}: {exc}. The shard is truncated or was removed; "
            "re-run ltxdist-prepare to rewrite it."
        ) from exc
    if record is not None:
        yield record
