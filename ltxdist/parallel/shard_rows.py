"""Which slice of a full tensor this process holds: the rule weight loading uses to read only a rank's
rows of the base checkpoint.

FSDP2 shards every parameter along dim 0 like `torch.chunk(full, n)` over the n ranks of its shard mesh
dim (all ranks for FSDP2, the ranks of one replica for HSDP): shard rank r holds rows [r * c, (r + 1) * c)
clipped to the tensor, with c = ceil(rows / n) (so trailing ranks may hold fewer rows, or none). Reading
by this rule means a process never has to materialise more than its own rows.
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
    shards = [i for i, p in enumerate(placements) if type(p) is Shard]
    if len(shards) != 1 or any(not isinstance(p, (Replicate, Shard)) for p in placements):
        # FSDP2 shards over one mesh dim (HSDP replicates over the other); tensor parallelism and
        # strided shards are not used by ltxdist: fail loudly rather than read the wrong rows.
        raise NotImplementedError(f"only (Replicate..., Shard(dim)) DTensors are supported, got {placements}")
    (mesh_dim,) = shards
    dim = placements[mesh_dim].dim
    mesh = tensor.device_mesh
    start, stop = chunk_bounds(tensor.shape[dim], mesh.size(mesh_dim), mesh.get_local_rank(mesh_dim))
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
