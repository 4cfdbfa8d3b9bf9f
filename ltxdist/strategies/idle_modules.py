"""Transformer modules a strategy never runs, so that LoRA adapters placed on them would never train.

ltx-core's transformer block skips its audio self- and text attention, its audio FFN and both
cross-modal attentions when no audio stream is passed (`run_ax`, `run_a2v`, `run_v2a` in
`BasicAVTransformerBlock.forward`). Adapters there never receive a gradient: dead weight in any layout,
and under DDP (Lightning's default `find_unused_parameters=False`) a crash at the second step with
"Expected to have finished reduction in the prior iteration". `validate_config` uses this module to
refuse such configs before any model is built.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ltxdist.lora.targets import expand_targets, matching_patterns

# Block submodules that run only when the strategy feeds an audio stream.
AUDIO_STREAM_MODULES = (
    "audio_attn1",
    "audio_attn2",
    "audio_ff",
    "audio_to_video_attn",
    "video_to_audio_attn",
)


@functools.cache
def block_linear_names() -> tuple[str, ...]:
    """Linear layers inside one transformer block (`attn1.to_q`, `audio_ff.net.2`, ...): the same names
    for every LTX-2.3 size, read from the tiny preset built on the meta device (no memory, no file)."""
    from ltxdist.models import build_meta_transformer
    from ltxdist.models.presets import transformer_config

    block = build_meta_transformer(transformer_config("tiny")).transformer_blocks[0]
    return tuple(name for name, m in block.named_modules() if isinstance(m, torch.nn.Linear))


def feeds_audio_stream(strategy_cfg: Any) -> bool:
    """Whether the strategy can pass an audio stream to the model at all. (`standard` and
    `video_to_video` with `with_audio` also need audio latents in the data: checked per batch, not here.)"""
    return strategy_cfg.name == "audio_ref_only_ic" or bool(strategy_cfg.with_audio)


def idle_lora_modules(strategy_cfg: Any, targets: list[str]) -> list[str]:
    """Block-inner names of the LoRA target Linears that this strategy never runs (empty when all run)."""
    if feeds_audio_stream(strategy_cfg):
        return []
    patterns = expand_targets(targets)
    return [
        name
        for name in block_linear_names()
        if name.split(".", 1)[0] in AUDIO_STREAM_MODULES and matching_patterns(name, patterns)
    ]


def idle_lora_problem(strategy_cfg: Any, targets: list[str]) -> str | None:
    """A message for `lora.targets` when some adapters would never train, else None."""
    idle = idle_lora_modules(strategy_cfg, targets)
    if not idle:
        return None
    shown = ", ".join(idle[:6]) + (f", ... ({len(idle)} per block)" if len(idle) > 6 else "")
    return (
        f"{list(targets)} puts adapters on modules that never run ({shown}): strategy={strategy_cfg.name} "
        "with strategy.with_audio=false passes no audio stream, so these adapters get no gradient and DDP "
        "fails at step 2 ('Expected to have finished reduction'). Use video-only targets "
        "(lora.targets=[video_attn], or patterns on attn1/attn2/ff), or set strategy.with_audio=true "
        "with audio in the data"
    )
