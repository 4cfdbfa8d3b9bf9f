"""What a training strategy produces from a batch: model inputs, targets and loss masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ltxdist._ltx_core import Modality


@dataclass
class StreamTargets:
    """Velocity target and loss mask of one modality; mask (B, T) is 1 where a token is trained."""

    target_BTC: torch.Tensor
    loss_mask_BT: torch.Tensor
    sigma_B: torch.Tensor


@dataclass
class StrategyOutput:
    video: Modality | None
    audio: Modality | None
    video_targets: StreamTargets | None
    audio_targets: StreamTargets | None

    @property
    def num_tokens(self) -> int:
        return sum(m.latent.shape[0] * m.latent.shape[1] for m in (self.video, self.audio) if m is not None)


class TrainingStrategy(Protocol):
    name: str

    def prepare(
        self,
        batch: dict[str, Any],
        *,
        dtype: torch.dtype,
        device: torch.device,
        generators: list[torch.Generator],
    ) -> StrategyOutput: ...


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma_B: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) x0 + sigma noise, sigma broadcast over (B, T, C)."""
    s = sigma_B.view(-1, 1, 1).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def per_token_timesteps(sigma_B: torch.Tensor, clean_BT: torch.Tensor | None) -> torch.Tensor:
    """(B, 1) when every token shares sigma (saves a per-token modulation tensor), else (B, T) with
    zeros on clean conditioning tokens."""
    if clean_BT is None or not bool(clean_BT.any()):
        return sigma_B.view(-1, 1)
    return sigma_B.view(-1, 1) * (~clean_BT).to(sigma_B.dtype)


def text_mask(batch: dict[str, Any], device: torch.device) -> torch.Tensor | None:
    """Integer text mask for ltx-core (1 = attend), or None when every token is real: identical result,
    and it keeps the fast SDPA kernels that an explicit mask would disable."""
    if batch.get("context_mask_all_ones", False):
        return None
    return batch["context_mask"].to(device=device, dtype=torch.long)
