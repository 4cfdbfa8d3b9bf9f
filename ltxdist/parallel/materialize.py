"""Materialise a meta-device transformer on this rank's device and load the base weights into it.

Runs after `parallelize_transformer`, so every process allocates only what it will keep: its FSDP2
shards (rows read straight from the checkpoint file), or for ZeRO-3 one block at a time before
DeepSpeed partitions it. No rank ever holds the whole 22B model in CPU or GPU memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ltxdist.lora.inject import lora_modules, reset_lora
from ltxdist.models.loader import copy_base_weights
from ltxdist.parallel.activation_checkpointing import require_recompute
from ltxdist.parallel.dims import ParallelDims
from ltxdist.parallel.materialize_report import MaterializeReport
from ltxdist.parallel.offload import (
    BlockOffloader,
    install_block_offload,
    offloaded_parameter_names,
    to_empty_with_host_blocks,
)

_BLOCKS = "transformer_blocks."


def materialize_transformer(
    model: torch.nn.Module,
    parallel_cfg: Any,
    *,
    dims: ParallelDims,
    checkpoint: Path,
    dtype: torch.dtype,
    lora_init_seed: int,
    device: torch.device,
    offload_blocks: int = 0,
) -> BlockOffloader | None:
    """`offload_blocks`: the frozen weights of that many blocks are allocated and loaded in host memory and
    handed to a block-swap `BlockOffloader` (parallel/offload.py), which is returned."""
    # LTXDIST_MATERIALIZE_REPORT=DIR: each rank records what it held (materialize_report.py).
    report = MaterializeReport(model, parallel_cfg.name)
    if offload_blocks and dims.engine not in ("single", "ddp"):
        raise ValueError(f"model.offload_blocks works with parallel=single or ddp, not {parallel_cfg.name}")
    if dims.partitions_while_materializing:
        _materialize_zero3(
            model,
            parallel_cfg,
            checkpoint=checkpoint,
            dtype=dtype,
            seed=lora_init_seed,
            device=device,
            report=report,
        )
    else:
        if offload_blocks:
            to_empty_with_host_blocks(model, device, offloaded_parameter_names(model, offload_blocks))
        else:
            model.to_empty(device=device)
        report.sample()
        copy_base_weights(model, checkpoint, dtype, on_read=report.on_read, work_device=device)
        if dims.shards_with_fsdp:
            from torch.distributed.tensor.experimental import implicit_replication

            # Every rank draws the same full adapter init from one seeded generator and keeps its rows:
            # implicit_replication lets a plain (replicated) tensor be copied into a sharded DTensor.
            with implicit_replication():
                reset_lora(model, lora_init_seed)
        else:
            reset_lora(model, lora_init_seed)
    report.write()
    offloader = install_block_offload(model, offload_blocks, device)
    if offloader is not None:
        # Swapping saves memory only if the swapped blocks are recomputed (parallel/activation_checkpointing).
        require_recompute(model, offloader.indices, offloader.in_flight_bytes())
    return offloader


def _materialize_zero3(
    model: torch.nn.Module,
    parallel_cfg: Any,
    *,
    checkpoint: Path,
    dtype: torch.dtype,
    seed: int,
    device: torch.device,
    report: MaterializeReport,
) -> None:
    """Block by block: allocate, load the block's weights, draw its adapters, hand it to ZeRO-3 which
    keeps 1/N of it. Then the same for the parameters outside the blocks."""
    import deepspeed

    from ltxdist.parallel.deepspeed_config import deepspeed_config

    if any(not name.startswith(_BLOCKS) for name in lora_modules(model)):
        raise NotImplementedError("parallel=deepspeed_zero3 supports LoRA inside transformer blocks only")
    ds_config = deepspeed_config(parallel_cfg, on_gpu=device.type == "cuda")
    # One generator across blocks, consumed in the order `reset_lora(model, seed)` uses, so adapters
    # start identical to every other parallel config.
    gen = torch.Generator().manual_seed(seed)

    def partition(module: torch.nn.Module) -> None:
        # mem_efficient_linear=False: do not patch torch.nn.functional.linear process-wide.
        deepspeed.zero.Init(module=module, config_dict_or_path=ds_config, mem_efficient_linear=False)

    for i, block in enumerate(model.transformer_blocks):
        prefix = f"{_BLOCKS}{i}."
        block.to_empty(device=device)
        copy_base_weights(
            model, checkpoint, dtype, select=lambda n, p=prefix: n.startswith(p), on_read=report.on_read
        )
        with torch.no_grad():
            for lora in lora_modules(block).values():
                lora.reset_lora_parameters(gen)
        report.sample()  # the most this rank holds: earlier blocks' partitions + this whole block
        partition(block)
    # What is left (patchify / adaln / output layers, root tables): small. Allocate only tensors still on
    # meta; the blocks' parameters are already partitioned and must not be touched.
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.startswith(_BLOCKS) or name == "transformer_blocks":
                continue
            for pname, param in list(module.named_parameters(recurse=False)):
                if param.is_meta:
                    new = torch.nn.Parameter(torch.empty_like(param, device=device), param.requires_grad)
                    setattr(module, pname, new)
            for bname, buf in list(module.named_buffers(recurse=False)):
                if buf.is_meta:
                    module.register_buffer(bname, torch.empty_like(buf, device=device))
    copy_base_weights(
        model, checkpoint, dtype, select=lambda n: not n.startswith(_BLOCKS), on_read=report.on_read
    )
    report.sample()
    partition(model)  # partitions only parameters that are not ZeRO-3 parameters yet
    report.sample()
