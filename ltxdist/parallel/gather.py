"""Full LoRA adapters from a sharded model, for the ComfyUI export and DeepSpeed checkpoints.

The adapters are small next to the base (rank 128 on every attention of the 22B model: 0.86B
parameters, 3.4 GB in fp32, against 40 GB of bf16 base), so every rank assembles them in CPU memory,
one tensor at a time: the transient accelerator memory is one adapter matrix.
"""

from __future__ import annotations

import torch

from ltxdist.lora.inject import lora_modules
from ltxdist.lora.layers import LoRALinear


def full_tensor(param: torch.Tensor) -> torch.Tensor:
    """The whole of `param` on every rank (collective for sharded parameters: call on all ranks)."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        return param.full_tensor().detach()
    if hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"):
        # DeepSpeed ZeRO: the fp32 master copy, assembled from every rank's partition.
        from deepspeed.utils import safe_get_full_fp32_param

        full = safe_get_full_fp32_param(param)
        if full is not None:
            return full.detach()
    return param.detach()


def gathered_lora_model(model: torch.nn.Module) -> torch.nn.Module:
    """A small stand-in holding every adapter of `model` in full, under the same module names, with
    the frozen base left on the meta device (no memory): what `export_lora` needs, on every rank."""
    root = torch.nn.Module()
    for name, module in lora_modules(model).items():
        base = torch.nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
        full = LoRALinear(base, module.rank, module.alpha, module.dropout_p, module.lora_A.dtype)
        full.lora_A = torch.nn.Parameter(full_tensor(module.lora_A).cpu(), requires_grad=False)
        full.lora_B = torch.nn.Parameter(full_tensor(module.lora_B).cpu(), requires_grad=False)
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, full)
    return root


def needs_gather(model: torch.nn.Module) -> bool:
    """True when the adapters are sharded across processes (FSDP2 DTensors or DeepSpeed ZeRO)."""
    from torch.distributed.tensor import DTensor

    return any(
        isinstance(p, DTensor) or hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")
        for m in lora_modules(model).values()
        for p in (m.lora_A, m.lora_B)
    )
