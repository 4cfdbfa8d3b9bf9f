"""Read an offline W&B run file (`run-*.wandb`) back: the records wandb-core wrote, as protobufs.

The file is a LevelDB-style log (the format wandb's own, since removed, Python `datastore` read): a
7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC32C, length, type FULL/FIRST/MIDDLE/LAST); a record is the payload of one FULL chunk or of a
FIRST..LAST run. Checksums are not verified here (a test reading its own fresh file).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, (ident, magic, version)
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of a block or the file
            pos += left_in_block
            continue
        payload = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            pending = payload
        elif kind == _FIRST:
            pending = payload
            continue
        elif kind == _MIDDLE:
            pending += payload
            continue
        else:
            pending += payload
        record = pb.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


def history(path: Path) -> list[dict[str, Any]]:
    """Every `run.log` row, {key: value} (values decoded from JSON)."""
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            )
    return rows


def of_type(path: Path, record_type: str) -> list[Any]:
    return [getattr(r, record_type) for r in records(path) if r.WhichOneof("record_type") == record_type]
