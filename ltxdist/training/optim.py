"""Optimizer over LoRA parameters only, and learning-rate schedules stepped once per optimizer step."""

from __future__ import annotations

import math
from typing import Any

import torch


def build_optimizer(params: list[torch.nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.name == "adamw":
        # torch's default implementation per device: the multi-tensor (foreach) update on CUDA, one
        # launch per group of adapter tensors instead of ~10 per tensor (2,304 adapter tensors at rank
        # 32 on every attention of the 22B model); the per-tensor loop on the CPU. Either is
        # deterministic for a given device, which is what resume and layout parity rely on.
        return torch.optim.AdamW(params, **kwargs)
    if cfg.name == "adamw8bit":
        # bitsandbytes' hub-kernel warning at import is filtered by ltxdist.log_filters.
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImportError(
                "optim=adamw8bit needs bitsandbytes (a dependency of ltxdist: pip install "
                "'bitsandbytes>=0.50', which runs it on the CPU too), or choose optim=adamw"
            ) from exc
        return bnb.optim.AdamW8bit(params, **kwargs)
    raise ValueError(f"optim.name: unknown optimizer {cfg.name!r}")


def lr_multiplier(step: int, *, cfg: Any, base_lr: float, max_steps: int) -> float:
    """Factor on the base lr at optimizer step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    floor = cfg.min_lr_ratio
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "linear":
        return floor + (1 - floor) * (1 - progress)
    if cfg.name == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.name == "two_phase":
        # IC-LoRA recipe: linear from lr to phase_two_lr over phase one, then constant phase_two_lr.
        end = cfg.phase_two_lr / base_lr
        if step - cfg.warmup_steps < cfg.phase_one_steps:
            frac = (step - cfg.warmup_steps) / cfg.phase_one_steps
            return 1 + (end - 1) * frac
        return end
    raise ValueError(f"optim.schedule.name: unknown schedule {cfg.name!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Any, base_lr: float, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, cfg=cfg, base_lr=base_lr, max_steps=max_steps)
    )
