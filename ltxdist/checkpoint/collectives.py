"""The few collectives a checkpoint needs, from the default process group (one process without one).

Rank and world size come from torch.distributed itself, never from environment variables: whatever
launched the processes (torchrun, SLURM, Lightning), the process group is what they agreed on."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def broadcast(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (object collectives serialise in memory, never to a file)."""
    if not initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
