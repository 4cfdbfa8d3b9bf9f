"""Transformer configs in the layout of the official checkpoint's `config` metadata.

`FIXED_TRANSFORMER_KEYS` are the values ltx-core's configurator insists on; the presets add the
dimensions. The 22B preset mirrors the public LTX-2.3 metadata and is used for benchmarks with random
weights; real runs read the config from the checkpoint file itself.
"""

from __future__ import annotations

import copy
from typing import Any

LTX23_MODEL_VERSION = "2.3.0"

# Keys LTXModelConfigurator.from_config checks for exact values (see ltx_core model_configurator.py).
FIXED_TRANSFORMER_KEYS: dict[str, Any] = {
    "dropout": 0.0,
    "attention_bias": True,
    "num_vector_embeds": None,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "use_linear_projection": False,
    "only_cross_attention": False,
    "cross_attention_norm": True,
    "double_self_attention": False,
    "upcast_attention": False,
    "standardization_norm": "rms_norm",
    "norm_elementwise_affine": False,
    "qk_norm": "rms_norm",
    "positional_embedding_type": "rope",
    "use_audio_video_cross_attention": True,
    "share_ff": False,
    "av_cross_ada_norm": True,
    "use_middle_indices_grid": True,
}

# Keys ltx-core never reads but hard-codes: its video and audio position tools are always causal (latent
# frame 0 covers pixel frame [0, 1)). Other readers of the config do read them (ComfyUI defaults
# `causal_temporal_positioning` to false and then builds non-causal positions), so the 2.3 layout states
# them, and a config that says otherwise is refused (`assumed_layout_problems`).
ASSUMED_BY_LTX_CORE: dict[str, Any] = {"causal_temporal_positioning": True}

# 2.3 layout switches shared by every preset: split RoPE on a float64 grid, gated attention,
# AdaLN on the text cross-attention, caption projection living in the text encoder, causal positions.
_LTX23_LAYOUT: dict[str, Any] = {
    **ASSUMED_BY_LTX_CORE,
    "rope_type": "split",
    "frequencies_precision": "float64",
    "apply_gated_attention": True,
    "cross_attention_adaln": True,
    "caption_proj_before_connector": True,
    "av_ca_timestep_scale_multiplier": 1000,
    "timestep_scale_multiplier": 1000,
    "positional_embedding_theta": 10000.0,
    "positional_embedding_max_pos": [20, 2048, 2048],
    "audio_positional_embedding_max_pos": [20],
    "norm_eps": 1e-6,
    "in_channels": 128,
    "out_channels": 128,
    "audio_in_channels": 128,
    "audio_out_channels": 128,
}

_DIMENSIONS: dict[str, dict[str, Any]] = {
    "ltx23_22b": {
        "num_layers": 48,
        "num_attention_heads": 32,
        "attention_head_dim": 128,
        "cross_attention_dim": 4096,
        "audio_num_attention_heads": 32,
        "audio_attention_head_dim": 64,
        "audio_cross_attention_dim": 2048,
    },
    # ~14M parameters: enough compute per step for CPU benchmarks of framework overhead.
    "small": {
        "num_layers": 4,
        "num_attention_heads": 8,
        "attention_head_dim": 32,
        "cross_attention_dim": 256,
        "audio_num_attention_heads": 8,
        "audio_attention_head_dim": 16,
        "audio_cross_attention_dim": 128,
    },
    # ~0.4M parameters: forward+backward in milliseconds on a CPU. Head counts equal, as in production.
    "tiny": {
        "num_layers": 2,
        "num_attention_heads": 4,
        "attention_head_dim": 16,
        "cross_attention_dim": 64,
        "audio_num_attention_heads": 4,
        "audio_attention_head_dim": 8,
        "audio_cross_attention_dim": 32,
    },
}


def preset_names() -> list[str]:
    return sorted(_DIMENSIONS)


def transformer_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """Full checkpoint-style config dict (`{"transformer": {...}}`) for a named preset."""
    if preset not in _DIMENSIONS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {preset_names()}")
    transformer = {**FIXED_TRANSFORMER_KEYS, **_LTX23_LAYOUT, **_DIMENSIONS[preset], **overrides}
    return {"transformer": copy.deepcopy(transformer)}


def assumed_layout_problems(config: dict[str, Any]) -> list[str]:
    """Transformer config values that disagree with what ltx-core assumes (it would silently run
    something else than the file describes); a missing key is fine: ltx-core's assumption holds."""
    t = config.get("transformer", {})
    return [
        f"transformer.{key} is {t[key]!r}, but ltx-core always runs with {value!r}"
        for key, value in ASSUMED_BY_LTX_CORE.items()
        if key in t and t[key] != value
    ]


def text_context_dims(config: dict[str, Any]) -> tuple[int, int]:
    """(video, audio) widths of the cached text context the transformer expects."""
    t = config["transformer"]
    video = t["num_attention_heads"] * t["attention_head_dim"]
    audio = t["audio_num_attention_heads"] * t["audio_attention_head_dim"]
    return video, audio
