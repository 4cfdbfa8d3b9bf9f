"""FSDP2 / HSDP: `fully_shard` each transformer block, then the root."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def apply_fsdp2(
    model: torch.nn.Module,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype,
    reduce_dtype: torch.dtype,
    reshard_after_forward: bool = True,
) -> None:
    """Shard every parameter (frozen base and LoRA) along dim 0 over `mesh`: a 1-D mesh shards over all
    of it (FSDP2); a 2-D (replicate, shard) mesh shards over the second dim and replicates over the first
    (HSDP: gradients are reduce-scattered inside a replica, then all-reduced across replicas).

    One FSDP unit per block: a block's weights are all-gathered just before it runs and freed after,
    so peak memory is the shards plus about two gathered blocks. The root unit holds what is left
    (patchify / adaln / output projections). Mixed precision: parameters are gathered in the compute
    dtype (the frozen base is already stored in it; fp32 LoRA adapters are cast), gradients are
    reduce-scattered in `reduce_dtype` (fp32) so summing LoRA gradients over many ranks loses nothing.
    """
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in model.transformer_blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # The root's parameters are needed again right at the end of forward (output projection) and at
    # the start of backward: keeping them gathered saves one all-gather per step.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
