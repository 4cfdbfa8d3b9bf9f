"""Extra attention masks through ltx-core's per-module `attention_function` seam.

ltx-core passes no mask to its cross-modal attentions and only a dense (B, T, T) self-attention mask.
Strategies need cheaper and more specific masks: padding keys of variable-length references, video
queries blocked from reference-audio keys, reference-audio queries cut off from the text. Each
attention module of a block gets a `MaskableAttention` wrapper around its attention function; a
strategy sets per-batch masks on all of them at once with `set_attention_masks` (training and
sampling call the same function, so both apply identical masks).

Masks stay set until the next call: activation checkpointing recomputes the forward during backward
and must see the same masks.
"""

from __future__ import annotations

from typing import Any

import torch

# Attention modules (inside each transformer block) that can take a mask.
MASKABLE_MODULES = ("attn1", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")


class MaskableAttention:
    """attention_function wrapper: blocks keys where `key_keep_BS` is False and zeroes the output rows
    of queries where `query_keep_BT` is False (a query that attends to nothing)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.key_keep_BS: torch.Tensor | None = None
        self.query_keep_BT: torch.Tensor | None = None

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.key_keep_BS is not None:
            floor = torch.finfo(q.dtype).min
            bias = torch.zeros(self.key_keep_BS.shape, device=q.device, dtype=q.dtype)
            bias = bias.masked_fill(~self.key_keep_BS.to(q.device), floor)[:, None, None, :]  # (B,1,1,S)
            mask = bias if mask is None else (mask.to(q.dtype) + bias).clamp(min=floor)
        out = self.inner(q, k, v, heads, mask)
        if self.query_keep_BT is not None:
            out = out * self.query_keep_BT.to(device=out.device, dtype=out.dtype).unsqueeze(-1)
        return out


def find_maskable(fn: Any) -> MaskableAttention | None:
    """The MaskableAttention in a chain of attention-function wrappers that expose `.inner` (sequence
    parallelism wraps it: its masks describe whole sequences)."""
    while fn is not None:
        if isinstance(fn, MaskableAttention):
            return fn
        fn = getattr(fn, "inner", None)
    return None


def install_maskable_attention(model: torch.nn.Module) -> int:
    """Wrap the attention function of every maskable module (idempotent); returns how many."""
    n = 0
    for block in model.transformer_blocks:
        for name in MASKABLE_MODULES:
            attn = getattr(block, name, None)
            if attn is not None and find_maskable(attn.attention_function) is None:
                attn.attention_function = MaskableAttention(attn.attention_function)
                n += 1
    return n


def set_attention_masks(
    model: torch.nn.Module,
    key_keep: dict[str, torch.Tensor] | None = None,
    query_keep: dict[str, torch.Tensor] | None = None,
) -> None:
    """Set (or clear, for modules not named) the masks of every block: {module name: (B, S) bool}."""
    key_keep, query_keep = key_keep or {}, query_keep or {}
    unknown = (set(key_keep) | set(query_keep)) - set(MASKABLE_MODULES)
    if unknown:
        raise ValueError(f"cannot mask {sorted(unknown)}; maskable: {MASKABLE_MODULES}")
    wanted = bool(key_keep or query_keep)
    if wanted:
        install_maskable_attention(model)
    for block in model.transformer_blocks:
        for name in MASKABLE_MODULES:
            attn = getattr(block, name, None)
            fn = find_maskable(getattr(attn, "attention_function", None))
            if fn is not None:
                fn.key_keep_BS = key_keep.get(name)
                fn.query_keep_BT = query_keep.get(name)
