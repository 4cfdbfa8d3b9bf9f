"""Tiny random VAE, audio VAE, vocoder, text connectors and Gemma, in the official LTX-2.3 layout.

The configs use the same keys as the official checkpoint's `vae` / `audio_vae` / `vocoder` sections
and the 2.3 connector keys of its `transformer` section; only the sizes shrink. Some sizes cannot
shrink because ltx-core ties them to the latent format: the video encoder's first width equals the
128 latent channels, the audio VAE's base width equals its 128 statistics channels (8 x 16), the
vocoder reads 2 x 64 mel bins, and the connectors replace padding with 128 learnable registers, so
text sequences are a multiple of 128 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ltxdist.encoders.components import (
    AUDIO_DECODER,
    AUDIO_ENCODER,
    VIDEO_DECODER,
    VIDEO_ENCODER,
    VOCODER,
    Component,
    embeddings_processor_component,
)
from ltxdist.encoders.init import init_encoder_weights
from ltxdist.io import atomic_directory, save_safetensors_atomic, write_json_atomic

TINY_GEMMA_DIR = "gemma-tiny"
TINY_TEXT_TOKENS = 128  # the minimum: ltx-core's connectors tile 128 registers over the sequence

TINY_VAE: dict[str, Any] = {
    "_class_name": "CausalVideoAutoencoder",
    "dims": 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "patch_size": 4,
    "norm_layer": "pixel_norm",
    "latent_log_var": "uniform",
    "spatial_padding_mode": "zeros",
    "causal_decoder": False,
    "timestep_conditioning": False,
    "decoder_base_channels": 4,
    # 4 (patchify) x 2 x 2 x 2 = 32 spatial, 2 x 2 x 2 = 8 temporal, as the official VAE.
    "encoder_blocks": [
        ["compress_space_res", {"multiplier": 1}],
        ["compress_time_res", {"multiplier": 1}],
        ["compress_all_res", {"multiplier": 1}],
        ["compress_all_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 1}],
    ],
    "decoder_blocks": [
        ["compress_space", {"multiplier": 2}],
        ["compress_time", {"multiplier": 2}],
        ["compress_all", {"multiplier": 1}],
        ["compress_all", {"multiplier": 2}],
        ["res_x", {"num_layers": 1}],
    ],
}

TINY_AUDIO_VAE: dict[str, Any] = {
    "model": {
        "params": {
            "ddconfig": {
                "attn_resolutions": [],
                "causality_axis": "height",
                "ch": 128,
                "ch_mult": [1, 1, 1],
                "double_z": True,
                "dropout": 0.0,
                "in_channels": 2,
                "mel_bins": 64,
                "mid_block_add_attention": False,
                "norm_type": "pixel",
                "num_res_blocks": 1,
                "out_ch": 2,
                "resolution": 256,
                "z_channels": 8,
            },
            "sampling_rate": 16000,
        }
    },
    "preprocessing": {"stft": {"causal": True, "hop_length": 160, "filter_length": 1024}},
}

_TINY_GENERATOR: dict[str, Any] = {
    "resblock": "AMP1",
    "stereo": True,
    "activation": "snakebeta",
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]],
    "upsample_initial_channel": 32,
    "use_bias_at_final": False,
    "use_tanh_at_final": False,
}
# 2.3 layout: a mel->16 kHz vocoder (x160 = one mel hop) followed by a 16->48 kHz bandwidth extender.
TINY_VOCODER: dict[str, Any] = {
    "vocoder": {**_TINY_GENERATOR, "upsample_rates": [8, 5, 4], "upsample_kernel_sizes": [16, 11, 8]},
    "bwe": {
        **_TINY_GENERATOR,
        "upsample_rates": [6, 5, 8],
        "upsample_kernel_sizes": [12, 11, 16],
        "hop_length": 80,
        "n_fft": 512,
        "win_size": 512,
        "num_mels": 64,
        "input_sampling_rate": 16000,
        "output_sampling_rate": 48000,
    },
}

TINY_GEMMA_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "sliding_window": 64,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6,
}


def connector_transformer_keys(transformer: dict[str, Any], num_layers: int = 1) -> dict[str, Any]:
    """2.3 text-connector keys for a transformer section: connector widths equal the streams' widths."""
    return {
        "connector_num_attention_heads": transformer["num_attention_heads"],
        "connector_attention_head_dim": transformer["attention_head_dim"],
        "connector_num_layers": num_layers,
        "audio_connector_num_attention_heads": transformer["audio_num_attention_heads"],
        "audio_connector_attention_head_dim": transformer["audio_attention_head_dim"],
        "audio_connector_num_layers": num_layers,
        "connector_num_learnable_registers": 128,
        "connector_positional_embedding_max_pos": [4096],
        "connector_apply_gated_attention": True,
        "caption_proj_before_connector": True,
        "caption_projection_first_linear": False,
        "caption_proj_input_norm": False,
        "caption_projection_second_linear": False,
    }


def tiny_encoder_config_sections() -> dict[str, Any]:
    return {
        "vae": json.loads(json.dumps(TINY_VAE)),
        "audio_vae": json.loads(json.dumps(TINY_AUDIO_VAE)),
        "vocoder": json.loads(json.dumps(TINY_VOCODER)),
    }


def _component_tensors(
    component: Component, config: dict[str, Any], generator: torch.Generator, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    model = component.configurator.from_config(config)
    init_encoder_weights(model, generator)
    return {component.to_checkpoint_key(k): v.detach().to(dtype) for k, v in model.state_dict().items()}


def encoder_tensors(
    config: dict[str, Any],
    *,
    seed: int,
    dtype: torch.dtype = torch.bfloat16,
    gemma_hidden_size: int = TINY_GEMMA_TEXT["hidden_size"],
    gemma_num_layers: int = TINY_GEMMA_TEXT["num_hidden_layers"],
) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (official key names) of random VAE, audio VAE, vocoder and text connectors."""
    generator = torch.Generator().manual_seed(seed + 1)
    tensors: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    for component in (
        VIDEO_ENCODER,
        VIDEO_DECODER,
        AUDIO_ENCODER,
        AUDIO_DECODER,
        VOCODER,
        embeddings_processor_component(gemma_hidden_size, gemma_num_layers),
    ):
        for key, value in _component_tensors(component, config, generator, dtype).items():
            if ".per_channel_statistics." in key:
                # Encoder and decoder share one set of statistics in the file: keep the first.
                stats.setdefault(key, value)
            else:
                tensors[key] = value
    return {**tensors, **stats}


# --- tiny Gemma 3 + tokenizer ---------------------------------------------------------------------

_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
_CORPUS_TEXT = (
    "a an the of and with on in at to from by is are was red green blue yellow white black orange "
    "purple ball cube square circle dot line stripe moving moves slowly quickly left right up down "
    "across centre person man woman dog cat car bird tree sky sea city street room light dark bright "
    "sound tone music voice speaking talking says hello video clip scene camera pans zooms close "
    "shot wide style cinematic animation cartoon painting photo realistic demo test sample caption "
    "trigger sks ohwx concept one two three four five"
)


def build_tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained locally (no hub): any text tokenizes, unknown words as bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    words = _CORPUS_TEXT.split()
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    # Gemma prepends <bos> to every prompt.
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return tok


def _gemma_config(vocab_size: int, special_ids: dict[str, int]) -> Any:
    from transformers import Gemma3Config

    return Gemma3Config(
        text_config={
            **TINY_GEMMA_TEXT,
            "vocab_size": vocab_size,
            "pad_token_id": special_ids["<pad>"],
            "bos_token_id": special_ids["<bos>"],
            "eos_token_id": special_ids["<eos>"],
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
            "vision_use_head": False,
        },
        mm_tokens_per_image=4,
        boi_token_index=special_ids["<start_of_image>"],
        eoi_token_index=special_ids["<end_of_image>"],
        image_token_index=special_ids["<image_soft_token>"],
        eos_token_id=[special_ids["<eos>"]],
    )


def _official_gemma_key(key: str) -> str | None:
    """transformers-5 module key -> the key layout of google/gemma-3-12b-it's safetensors files."""
    for new, old in (
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ):
        if key.startswith(new):
            return old + key[len(new) :]
    if key == "lm_head.weight":
        return None  # tied to the token embedding, not stored (as in the official files)
    raise KeyError(f"unexpected Gemma key {key}")


def write_tiny_gemma(directory: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A tiny random Gemma 3 folder in Hugging Face layout: config, weights, tokenizer."""
    from transformers import Gemma3ForConditionalGeneration

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    special_ids = {s: tokenizer.token_to_id(s) for s in _SPECIALS}
    config = _gemma_config(tokenizer.get_vocab_size(), special_ids)
    model = Gemma3ForConditionalGeneration(config)
    init_encoder_weights(model, torch.Generator().manual_seed(seed + 2))
    tensors = {}
    for key, value in model.state_dict().items():
        official = _official_gemma_key(key)
        if official is not None:
            tensors[official] = value.detach().to(dtype).contiguous()
    with atomic_directory(directory) as tmp:
        config_dict = config.to_dict()
        config_dict["torch_dtype"] = "bfloat16"
        write_json_atomic(tmp / "config.json", config_dict)
        save_safetensors_atomic(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save(str(tmp / "tokenizer.json"))
        write_json_atomic(
            tmp / "tokenizer_config.json",
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "model_max_length": TINY_TEXT_TOKENS,
                "padding_side": "left",
            },
        )
        write_json_atomic(
            tmp / "special_tokens_map.json",
            {
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
            },
        )
    return directory
