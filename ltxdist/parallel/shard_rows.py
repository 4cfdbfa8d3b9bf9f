"""Which slice of a full tensor this process holds: the one rule shared by weight loading and sharded
checkpoints.

FSDP2 shards every parameter along dim 0 like `torch.chunk(full, world_size)`: rank r holds rows
[r * c, (r + 1) * c) clipped to the tensor, with c = ceil(rows / world_size) (so trailing ranks may hold
fewer rows, or none). Reading and writing by this rule means a file never has to hold, and a process
never has to materialise, more than its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LocalSlice:
    """This process's block of a tensor sharded along `dim`: global indices [start, stop)."""

    dim: int
    start: int
    stop: int


def chunk_bounds(size: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s chunk when `size` rows are split like torch.chunk(world_size)."""
    chunk = -(-size // world_size)  # ceil
    start = min(rank * chunk, size)
    return start, min(start + chunk, size)


def local_slice(tensor: torch.Tensor) -> LocalSlice | None:
    """The slice this rank holds of a sharded DTensor; None for a plain or fully replicated tensor."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(tensor, DTensor):
        return None
    placements = tensor.placements
    if all(isinstance(p, Replicate) for p in placements):
        return None
    if tensor.device_mesh.ndim != 1 or not isinstance(placements[0], Shard):
        # Tensor parallelism (2-D meshes, strided shards) is not used by ltxdist; fail loudly rather
        # than write a checkpoint that cannot be read back.
        raise NotImplementedError(f"only 1-D Shard(dim) DTensors are supported, got {placements}")
    dim = placements[0].dim
    mesh = tensor.device_mesh
    start, stop = chunk_bounds(tensor.shape[dim], mesh.size(), mesh.get_local_rank())
    local = tensor.to_local()
    if local.shape[dim] != stop - start:
        raise RuntimeError(
            f"local shard has {local.shape[dim]} rows along dim {dim}, expected {stop - start} "
            "(torch.chunk rule); the sharding layout changed"
        )
    return LocalSlice(dim=dim, start=start, stop=stop)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor this process stores: the local shard of a DTensor, else the tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
