"""Inject LoRA adapters into a transformer, freeze the base, list adapter parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ltxdist.lora.layers import LoRALinear
from ltxdist.lora.targets import resolve_target_modules


@dataclass(frozen=True)
class LoRASpec:
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attn",)
    blocks: tuple[int, ...] | None = None
    dtype: torch.dtype = torch.float32


def inject_lora(model: torch.nn.Module, spec: LoRASpec) -> list[str]:
    """Replace the target Linear layers with LoRALinear in place; returns the adapted module names.

    Every base parameter is frozen; only `lora_A` / `lora_B` require grad afterwards.
    """
    names = resolve_target_modules(model, list(spec.targets), list(spec.blocks) if spec.blocks else None)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        if isinstance(base, LoRALinear):
            raise ValueError(f"{name} already carries a LoRA adapter")
        setattr(parent, child, LoRALinear(base, spec.rank, spec.alpha, spec.dropout, spec.dtype))
    return names


def lora_modules(model: torch.nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)]


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only, under the model's own parameter names."""
    return {n: p for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))}


@torch.no_grad()
def reset_lora(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every A (B back to zero) from one seeded generator: identical on every rank."""
    gen = torch.Generator().manual_seed(seed)
    for module in lora_modules(model).values():
        module.reset_lora_parameters(gen)


def merge_lora(model: torch.nn.Module) -> int:
    """Fold every adapter into its base weight, leaving plain Linear layers; returns how many."""
    merged = 0
    for name, module in list(lora_modules(model).items()):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.to_linear())
        merged += 1
    return merged
