"""The non-transformer parts of an LTX-2.3 checkpoint, each described once.

Every component is built by ltx-core's own configurator from the checkpoint's `config` metadata and
its keys are mapped by ltx-core's own key filter (the same `SDOps` ltx-pipelines uses). The reverse
mapping (`to_checkpoint_key`) is used only to write tiny random checkpoints in the official layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from ltx_core.loader.sd_ops import SDOps
from ltx_core.model.audio_vae import (
    AUDIO_VAE_DECODER_COMFY_KEYS_FILTER,
    AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER,
    VOCODER_COMFY_KEYS_FILTER,
    AudioDecoderConfigurator,
    AudioEncoderConfigurator,
    VocoderConfigurator,
)
from ltx_core.model.video_vae import (
    VAE_DECODER_COMFY_KEYS_FILTER,
    VAE_ENCODER_COMFY_KEYS_FILTER,
    VideoDecoderConfigurator,
    VideoEncoderConfigurator,
)
from ltx_core.text_encoders.gemma import EMBEDDINGS_PROCESSOR_KEY_OPS, EmbeddingsProcessorConfigurator
from ltx_core.text_encoders.gemma.config import GEMMA3_CONFIG_FOR_LTX
from ltx_core.text_encoders.gemma.embeddings_connector import (
    AudioEmbeddings1DConnectorConfigurator,
    Embeddings1DConnectorConfigurator,
)
from ltx_core.text_encoders.gemma.embeddings_processor import EmbeddingsProcessor
from ltx_core.text_encoders.gemma.encoders.encoder_configurator import _V2_EXPECTED_CONFIG
from ltx_core.text_encoders.gemma.feature_extractor import FeatureExtractorV2

import ltxdist._ltx_core  # noqa: F401  (import order: ltx_core.loader first)


def _prefixed(stats_prefix: str, body_prefix: str) -> Callable[[str], str]:
    def to_checkpoint(key: str) -> str:
        if key.startswith("per_channel_statistics."):
            return stats_prefix + key[len("per_channel_statistics.") :]
        return body_prefix + key

    return to_checkpoint


_PROCESSOR_PREFIXES = (
    ("feature_extractor.", "text_embedding_projection."),
    ("video_connector.", "model.diffusion_model.video_embeddings_connector."),
    ("audio_connector.", "model.diffusion_model.audio_embeddings_connector."),
)


def _processor_to_checkpoint(key: str) -> str:
    for module_prefix, file_prefix in _PROCESSOR_PREFIXES:
        if key.startswith(module_prefix):
            return file_prefix + key[len(module_prefix) :]
    raise KeyError(f"embeddings processor key {key} has no checkpoint prefix")


@dataclass(frozen=True)
class Component:
    name: str
    config_section: str  # the section of the checkpoint's `config` metadata this component reads
    configurator: Any  # ltx-core ModelConfigurator (class with from_config)
    sd_ops: SDOps  # ltx-core key filter: checkpoint key -> module key
    to_checkpoint_key: Callable[[str], str]  # module key -> checkpoint key (writing tiny checkpoints)


VIDEO_ENCODER = Component(
    "video_encoder",
    "vae",
    VideoEncoderConfigurator,
    VAE_ENCODER_COMFY_KEYS_FILTER,
    _prefixed("vae.per_channel_statistics.", "vae.encoder."),
)
VIDEO_DECODER = Component(
    "video_decoder",
    "vae",
    VideoDecoderConfigurator,
    VAE_DECODER_COMFY_KEYS_FILTER,
    _prefixed("vae.per_channel_statistics.", "vae.decoder."),
)
AUDIO_ENCODER = Component(
    "audio_encoder",
    "audio_vae",
    AudioEncoderConfigurator,
    AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER,
    _prefixed("audio_vae.per_channel_statistics.", "audio_vae.encoder."),
)
AUDIO_DECODER = Component(
    "audio_decoder",
    "audio_vae",
    AudioDecoderConfigurator,
    AUDIO_VAE_DECODER_COMFY_KEYS_FILTER,
    _prefixed("audio_vae.per_channel_statistics.", "audio_vae.decoder."),
)
VOCODER = Component(
    "vocoder", "vocoder", VocoderConfigurator, VOCODER_COMFY_KEYS_FILTER, lambda key: "vocoder." + key
)


def embeddings_processor_component(gemma_hidden_size: int, gemma_num_layers: int) -> Component:
    """Feature extractor + video/audio connectors, sized for the Gemma whose hidden states they read.

    ltx-core's `EmbeddingsProcessorConfigurator` hard-codes Gemma 3 12B's width and depth (3840 x 49
    hidden states). For that Gemma it is used as is; for another one (the tiny test Gemma) the same
    ltx-core classes are built with the real width and depth, after the same V2 config checks.
    """
    official = GEMMA3_CONFIG_FOR_LTX.text_config
    if (gemma_hidden_size, gemma_num_layers) == (official.hidden_size, official.num_hidden_layers):
        configurator: Any = EmbeddingsProcessorConfigurator
    else:
        configurator = _sized_processor_configurator(gemma_hidden_size, gemma_num_layers)
    return Component(
        "embeddings_processor",
        "transformer",
        configurator,
        EMBEDDINGS_PROCESSOR_KEY_OPS,
        _processor_to_checkpoint,
    )


def _sized_processor_configurator(hidden_size: int, num_layers: int) -> Any:
    class SizedEmbeddingsProcessorConfigurator:
        @classmethod
        def from_config(cls, config: dict) -> EmbeddingsProcessor:
            t = config.get("transformer", {})
            wrong = {k: t.get(k) for k, v in _V2_EXPECTED_CONFIG.items() if t.get(k) != v}
            if wrong:
                raise ValueError(
                    f"checkpoint config has {wrong}; the LTX-2.3 text path needs {_V2_EXPECTED_CONFIG}"
                )
            flat = hidden_size * (num_layers + 1)  # +1: the embedding layer's output is a hidden state too
            video_dim = t["num_attention_heads"] * t["attention_head_dim"]
            audio_dim = t["audio_num_attention_heads"] * t["audio_attention_head_dim"]
            return EmbeddingsProcessor(
                video_connector=Embeddings1DConnectorConfigurator.from_config(config),
                audio_connector=AudioEmbeddings1DConnectorConfigurator.from_config(config),
                feature_extractor=FeatureExtractorV2(
                    video_aggregate_embed=torch.nn.Linear(flat, video_dim, bias=True),
                    embedding_dim=hidden_size,
                    audio_aggregate_embed=torch.nn.Linear(flat, audio_dim, bias=True),
                ),
            )

    return SizedEmbeddingsProcessorConfigurator
