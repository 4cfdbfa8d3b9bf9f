"""Masked flow-matching losses. Legend: B batch, T tokens, C channels."""

from __future__ import annotations

import itertools

import torch

from ltxdist.strategies.base import StreamTargets


def masked_mse_per_sample(pred_BTC: torch.Tensor, targets: StreamTargets) -> torch.Tensor:
    """(B,) mean squared velocity error over the trained tokens of each sample."""
    err_BT = (pred_BTC.float() - targets.target_BTC.float()).pow(2).mean(dim=-1)
    mask_BT = targets.loss_mask_BT.float()
    # clamp: a sample with no trained token contributes 0 instead of NaN
    return (err_BT * mask_BT).sum(dim=1) / mask_BT.sum(dim=1).clamp(min=1.0)


def sigma_bucket_losses(
    per_sample_B: torch.Tensor, sigma_B: torch.Tensor, edges: tuple[float, ...]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Sum and count of per-sample loss in each sigma bucket [edges[i], edges[i+1])."""
    sigma_B = sigma_B.to(per_sample_B.device)
    out = {}
    for lo, hi in itertools.pairwise(edges):
        in_bucket = (sigma_B >= lo) & ((sigma_B < hi) if hi < 1.0 else (sigma_B <= hi))
        out[f"{lo:.1f}-{hi:.1f}"] = ((per_sample_B * in_bucket).sum().detach(), in_bucket.sum())
    return out
