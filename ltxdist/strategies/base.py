"""What a training strategy produces from a batch: model inputs, targets, loss masks, attention masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ltxdist._ltx_core import Modality


@dataclass
class StreamTargets:
    """Velocity target of the trained tokens of one modality.

    `pred_slice` selects, on the model's output, the tokens the target describes (a strategy may append
    reference tokens to the sequence); mask (B, T) is 1 where a token is trained.
    """

    target_BTC: torch.Tensor
    loss_mask_BT: torch.Tensor
    sigma_B: torch.Tensor
    pred_slice: slice = field(default_factory=lambda: slice(None))


@dataclass
class StrategyOutput:
    video: Modality | None
    audio: Modality | None
    video_targets: StreamTargets | None
    audio_targets: StreamTargets | None
    # {attention module name: (B, S) bool}: see strategies/attention_masks.py
    key_keep: dict[str, torch.Tensor] = field(default_factory=dict)
    query_keep: dict[str, torch.Tensor] = field(default_factory=dict)

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


def compact_timesteps(timesteps_BT: torch.Tensor, any_clean: bool) -> torch.Tensor:
    """(B, 1) when every token shares its sample's sigma (same result, and it saves a per-token
    modulation tensor of width 9x the model dim), else the per-token (B, T)."""
    return timesteps_BT if any_clean else timesteps_BT[:, :1]


def text_mask(batch: dict[str, Any], device: torch.device) -> torch.Tensor | None:
    """Integer text mask for ltx-core (1 = attend), or None when every token is real: identical result,
    and it keeps the fast SDPA kernels that an explicit mask would disable."""
    if batch.get("context_mask_all_ones", False):
        return None
    return batch["context_mask"].to(device=device, dtype=torch.long)


def key_mask_if_padded(keep_BT: torch.Tensor, padded: bool) -> torch.Tensor | None:
    """A key mask only when the batch has padding (decided on the CPU by the caller)."""
    return keep_BT if padded else None
