"""The ordered application of parallelism concerns to the transformer, and the Lightning strategy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ltxdist.parallel.activation_checkpointing import apply_activation_checkpointing, checkpointing_policy
from ltxdist.parallel.compile import apply_compile
from ltxdist.parallel.dims import ParallelDims
from ltxdist.parallel.timeouts import collective_timeout

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def parallelize_transformer(
    model: torch.nn.Module,
    parallel_cfg: Any,
    *,
    gradient_checkpointing: bool,
    fsdp_mesh: DeviceMesh | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """Apply, in this order, to a meta-device model with LoRA injected:

    1. activation checkpointing per block (`parallel.activation_checkpointing`: full / off /
       attention-selective / every k-th / by `parallel.memory_budget_gib`): it wraps the block call, so
       compile and sharding (added per block after it) see the checkpointed block as their unit and
       recomputation re-runs the compiled, sharded block;
    2. torch.compile per block (`parallel.compile`): after checkpointing so the recompute is compiled
       too, and before sharding so FSDP2's all-gather hooks stay outside the compiled graph;
    3. FSDP2 `fully_shard` per block, then the root, when the layout shards with FSDP (`fsdp_mesh`:
       1-D for FSDP2, 2-D for HSDP; ParallelMesh.fsdp_mesh). DeepSpeed needs nothing here: ZeRO-3
       partitions while materialising (`materialize_transformer`), ZeRO-2 in its engine.
    """
    policy = checkpointing_policy(parallel_cfg, gradient_checkpointing=gradient_checkpointing)
    if policy.mode != "off":
        apply_activation_checkpointing(model, policy)
    if parallel_cfg.compile:
        apply_compile(model)
    if fsdp_mesh is not None:
        from ltxdist.parallel.fsdp2 import apply_fsdp2

        apply_fsdp2(
            model,
            fsdp_mesh,
            param_dtype=compute_dtype or next(model.parameters()).dtype,
            reduce_dtype=_DTYPES[parallel_cfg.reduce_dtype],
            reshard_after_forward=parallel_cfg.reshard_after_forward,
        )
    return model


def lightning_strategy(parallel_cfg: Any) -> Any:
    """The Lightning strategy for the layout's engine (imports DeepSpeed only when asked for). Every
    distributed one builds the layout mesh and waits `parallel.collective_timeout_s` in a collective,
    then fails naming that flag (parallel/timeouts.py)."""
    dims = ParallelDims.from_config(parallel_cfg)
    if dims.engine == "single":
        return "auto"
    backend = parallel_cfg.process_group_backend  # the multi-process options only
    if dims.engine == "ddp":
        from ltxdist.parallel.ddp_strategy import LtxDDPStrategy

        return LtxDDPStrategy(
            dims=dims, process_group_backend=backend, timeout=collective_timeout(parallel_cfg)
        )
    if dims.engine == "fsdp":
        from ltxdist.parallel.fsdp2_strategy import FSDP2Strategy

        return FSDP2Strategy(
            dims=dims, process_group_backend=backend, timeout=collective_timeout(parallel_cfg)
        )
    if dims.engine == "deepspeed":
        from ltxdist.parallel.deepspeed_strategy import build_deepspeed_strategy

        return build_deepspeed_strategy(parallel_cfg, dims)
    return "auto"
