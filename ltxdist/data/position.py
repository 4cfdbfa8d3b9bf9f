"""The data position a checkpoint saves, and where a resumed run's streams start from it.

Saved (JSON, one dict for the whole run, see `saved_position`):

    {"format": 1,
     "batches_seen": micro-batches each data-parallel rank consumed,
     "layout": what the streams' order depends on (data-parallel size, micro-batch size, workers, seed,
               shuffle buffer, split, and each source's name, weight and dataset fingerprint),
     "ranks": [[cursor of each worker role] for each data-parallel rank]}   (data/cursor.py)

On resume, a run with the same layout seeks every worker's stream to its cursor: constant time. Any other
layout (another number of ranks, micro-batch size or workers, another seed or dataset) cannot use the
cursors; the position is then converted through the number of samples consumed, which must fill whole
global batches of the new layout (or the resume is refused, naming the flags), and the new layout's
streams fast-forward to it from record headers: the run continues exactly as an uninterrupted run of
the new layout would after that many samples. Checkpoints written before cursors existed (only
`batches_seen`) resume that way too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ltxdist.data.cursor import Cursor
from ltxdist.data.shards import load_index

FORMAT = 1


def dataset_fingerprint(directory: str | Path) -> str:
    """Identifies a shard directory's content for the cursors' byte offsets: every shard's name, sample
    count and file size (a shard rewritten to another size is another dataset)."""
    directory = Path(directory)
    index = load_index(directory)
    shards = [[s["name"], s["num_samples"], (directory / s["name"]).stat().st_size] for s in index.shards]
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:16]


def stream_layout(data_cfg: Any, seed: int, data_parallel_size: int) -> dict[str, Any]:
    """Everything the streams' order depends on besides the rank (see the module doc)."""
    if data_cfg.mix:
        sources = [(m.name, float(m.weight), m.path) for m in data_cfg.mix]
    else:
        sources = [("", 1.0, data_cfg.path)]
    return {
        "data_parallel_size": int(data_parallel_size),
        "micro_batch_size": int(data_cfg.batch_size),
        "num_workers": max(1, int(data_cfg.num_workers)),  # 0 workers stream exactly like 1
        "seed": int(seed),
        "shuffle_buffer": int(data_cfg.shuffle_buffer),
        "split": str(data_cfg.split),
        "sources": [
            {"name": name, "weight": weight, "dataset": dataset_fingerprint(path)}
            for name, weight, path in sources
        ],
    }


def saved_position(
    layout: dict[str, Any], batches_seen: int, rank_cursors: list[list[Cursor | None]]
) -> dict[str, Any]:
    return {"format": FORMAT, "batches_seen": int(batches_seen), "layout": layout, "ranks": rank_cursors}


@dataclass(frozen=True)
class DataStart:
    """Where this rank's streams start: after `batches_seen` micro-batches, at `cursors` (one per worker
    role) or, when None, found by fast-forwarding. `converted` says why the cursors could not be used."""

    batches_seen: int
    cursors: list[Cursor | None] | None
    converted: str = ""


def _layout_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    changes = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            if key == "sources":
                changes.append("data.path / data.mix (a dataset, name or weight)")
            else:
                changes.append(f"{key} {saved.get(key)} -> {current.get(key)}")
    return changes


def convert_batches(batches_seen: int, saved_world: int, saved_batch: int, world: int, batch: int) -> int:
    """Micro-batches per rank under (world, batch) for the samples consumed under (saved_world,
    saved_batch); they must fill whole global batches of the new layout."""
    samples = batches_seen * saved_world * saved_batch
    per_batch = world * batch
    if samples % per_batch:
        raise ValueError(
            f"the checkpoint consumed {samples} samples ({saved_world} data-parallel processes x "
            f"data.batch_size {saved_batch} x {batches_seen} micro-batches), not a whole number of this "
            f"run's global batches of {per_batch}: set data.batch_size / parallel.devices so that "
            "processes x data.batch_size divides it (usually: keep the global batch)"
        )
    return samples // per_batch


def resume_start(saved: dict[str, Any], layout: dict[str, Any], data_parallel_rank: int) -> DataStart:
    """This rank's start from a saved position (see the module doc)."""
    if saved.get("format") != FORMAT:
        raise ValueError(
            f"the checkpoint's data position has format {saved.get('format')!r}, this ltxdist reads {FORMAT}"
        )
    batches_seen = int(saved["batches_seen"])
    changes = _layout_changes(saved["layout"], layout)
    if not changes and saved["ranks"][data_parallel_rank] is not None:
        return DataStart(batches_seen, list(saved["ranks"][data_parallel_rank]))
    changes = changes or ["no cursors saved"]
    old = saved["layout"]
    converted = convert_batches(
        batches_seen,
        int(old["data_parallel_size"]),
        int(old["micro_batch_size"]),
        int(layout["data_parallel_size"]),
        int(layout["micro_batch_size"]),
    )
    return DataStart(converted, None, "; ".join(changes))


def legacy_start(batches_seen: int, layout: dict[str, Any] | None, current: dict[str, Any]) -> DataStart:
    """A checkpoint from before cursors: `batches_seen` under the checkpoint's `ltxdist_layout`
    (data-parallel processes and micro-batch size; absent in the oldest ones: same layout assumed)."""
    if not layout:
        return DataStart(batches_seen, None, "checkpoint without data cursors")
    converted = convert_batches(
        batches_seen,
        int(layout["world_size"]),
        int(layout["micro_batch_size"]),
        int(current["data_parallel_size"]),
        int(current["micro_batch_size"]),
    )
    return DataStart(converted, None, "checkpoint without data cursors")


def all_gather_json(obj: Any, device: torch.device) -> list[Any]:
    """`obj` (JSON) from every rank, in rank order: one all-gather of sizes, one of the encoded bytes
    (no pickling, unlike all_gather_object). Collective: every rank calls it."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [json.loads(json.dumps(obj))]
    data = json.dumps(obj).encode()
    world = dist.get_world_size()
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s.item()) for s in sizes))
    mine = torch.zeros(longest, dtype=torch.uint8)
    mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    mine = mine.to(device)
    parts = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(parts, mine)
    return [
        json.loads(bytes(part[: int(n.item())].cpu().numpy())) for part, n in zip(parts, sizes, strict=True)
    ]
