"""Named sets of LoRA target modules and their resolution to concrete module names.

Patterns are fnmatch globs over the module path *inside* a transformer block (e.g. `attn1.to_q`,
`audio_ff.*`), so one pattern covers all 48 blocks. Every pattern must match at least one Linear.
"""

from __future__ import annotations

import fnmatch
import re

import torch

_QKVO = ("to_q", "to_k", "to_v", "to_out.0")


def _attn(*names: str) -> list[str]:
    return [f"{n}.{p}" for n in names for p in _QKVO]


_VIDEO_ATTN = ("attn1", "attn2")
_AUDIO_ATTN = ("audio_attn1", "audio_attn2")
_CROSS_MODAL = ("audio_to_video_attn", "video_to_audio_attn")
_FF = ["ff.net.0.proj", "ff.net.2"]
_AUDIO_FF = ["audio_ff.net.0.proj", "audio_ff.net.2"]

TARGET_SETS: dict[str, list[str]] = {
    # video self-attention + video text cross-attention: the usual style / effect LoRA
    "video_attn": _attn(*_VIDEO_ATTN),
    # every attention of both streams
    "attn": _attn(*_VIDEO_ATTN, *_AUDIO_ATTN, *_CROSS_MODAL),
    "attn_ff": _attn(*_VIDEO_ATTN, *_AUDIO_ATTN, *_CROSS_MODAL) + _FF + _AUDIO_FF,
    # ID-LoRA recipe: audio attention, audio FFN and both cross-modal attentions
    "audio_id": _attn(*_AUDIO_ATTN, *_CROSS_MODAL) + _AUDIO_FF,
}

_BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")


def expand_targets(targets: str | list[str]) -> list[str]:
    """A set name, or a list of set names and/or glob patterns, as a flat pattern list."""
    items = [targets] if isinstance(targets, str) else list(targets)
    if not items:
        raise ValueError("lora.targets is empty: name a set (" + ", ".join(TARGET_SETS) + ") or patterns")
    patterns: list[str] = []
    for item in items:
        patterns.extend(TARGET_SETS.get(item, [item]))
    return patterns


def matching_patterns(inner_name: str, patterns: list[str]) -> list[str]:
    """The patterns that select the Linear at `inner_name` (its path inside a block, e.g. attn1.to_q)."""
    return [p for p in patterns if fnmatch.fnmatchcase(inner_name, p)]


def resolve_target_modules(
    model: torch.nn.Module, targets: str | list[str], blocks: list[int] | None = None
) -> list[str]:
    """Full module names (`transformer_blocks.3.attn1.to_q`) of the Linear layers to adapt.

    Raises ValueError naming every pattern that matched no Linear module.
    """
    patterns = expand_targets(targets)
    hits: dict[str, list[str]] = {p: [] for p in patterns}
    for name, module in model.named_modules():
        m = _BLOCK_RE.match(name)
        if m is None or not isinstance(module, torch.nn.Linear):
            continue
        if blocks is not None and int(m.group(1)) not in blocks:
            continue
        for p in matching_patterns(m.group(2), patterns):
            hits[p].append(name)
    unmatched = [p for p, names in hits.items() if not names]
    if unmatched:
        raise ValueError(
            f"lora.targets: pattern(s) {unmatched} match no Linear module inside a transformer block "
            f"(examples of valid names: attn1.to_q, audio_attn2.to_out.0, ff.net.0.proj; "
            f"sets: {', '.join(TARGET_SETS)})"
        )
    return sorted({n for names in hits.values() for n in names}, key=_natural_key)


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
