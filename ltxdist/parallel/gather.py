"""Whole tensors on rank 0 from sharded parameters, one at a time: what the LoRA export writes.

Only rank 0 ends up holding a full tensor. FSDP2 / HSDP shards are gathered over the shard group of the
replica that holds rank 0 (the other replicas have the same data and take no part); DeepSpeed ZeRO
assembles through its own fragment API, which is collective over every rank. A writer that calls this
for one adapter at a time holds one adapter matrix in memory, never the whole set twice.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ltxdist.parallel.shard_rows import chunk_bounds


def gather_to_rank0(param: torch.Tensor) -> torch.Tensor | None:
    """The whole of `param` on global rank 0 (detached, on the CPU), None on the other ranks.
    Collective for sharded parameters: every rank calls it, for the same parameters in the same order."""
    from torch.distributed.tensor import DTensor

    on_rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if isinstance(param, DTensor):
        return _gather_dtensor(param, on_rank0)
    if hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"):
        # DeepSpeed ZeRO: the fp32 master copy, assembled from every rank's partition (all ranks).
        from deepspeed.utils import safe_get_full_fp32_param

        full = safe_get_full_fp32_param(param)
        if full is None:  # not a ZeRO-managed parameter after all: every rank holds it
            full = param
        return full.detach().cpu() if on_rank0 else None
    return param.detach().cpu() if on_rank0 else None


def _gather_dtensor(param: torch.Tensor, on_rank0: bool) -> torch.Tensor | None:
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = param.device_mesh, param.placements
    local = param.to_local().detach()
    shard_dims = [i for i, p in enumerate(placements) if isinstance(p, Shard)]
    if not shard_dims:
        return local.cpu() if on_rank0 else None
    if len(shard_dims) != 1 or any(not isinstance(p, (Replicate, Shard)) for p in placements):
        raise NotImplementedError(
            f"only (Replicate..., Shard(dim)) parameters are gathered, got {placements}"
        )
    (mesh_dim,) = shard_dims
    # Replicas other than rank 0's hold the same data: they skip the gather.
    if any(mesh.get_local_rank(i) != 0 for i in range(mesh.ndim) if i != mesh_dim):
        return None
    dim, n = placements[mesh_dim].dim, mesh.size(mesh_dim)
    rows = param.shape[dim]
    chunk = -(-rows // n)
    # torch.chunk shards: trailing ranks may hold fewer rows (or none); pad so every rank sends as much.
    padded = local.new_zeros((*local.shape[:dim], chunk, *local.shape[dim + 1 :]))
    padded.narrow(dim, 0, local.shape[dim]).copy_(local)
    group = mesh.get_group(mesh_dim)
    pieces = [torch.empty_like(padded) for _ in range(n)] if on_rank0 else None
    dist.gather(padded, pieces, dst=0, group=group)
    if not on_rank0:
        return None
    assert pieces is not None
    parts = [
        p.narrow(dim, 0, stop - start)
        for r, p in enumerate(pieces)
        for start, stop in [chunk_bounds(rows, n, r)]
    ]
    return torch.cat(parts, dim=dim).cpu()
