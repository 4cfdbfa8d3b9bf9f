"""Text encoder: Gemma 3 hidden states -> 2.3 feature extractor -> video/audio connectors.

The prompt path is ltx-core's: `LTXVGemmaTokenizer` (left padding to a fixed length),
`GemmaTextEncoder.encode` (all hidden states), `EmbeddingsProcessor.process_hidden_states` (feature
extractor + connectors, which replace padding with learnable registers and so return an all-ones mask).
The connectors only work at batch size 1, so prompts are encoded one at a time.

Gemma's weights are loaded with transformers' `from_pretrained` rather than ltx-core's module ops:
ltx-core 1.0's `GEMMA_MODEL_OPS` patches transformers-4 internals (`rotary_emb_local`,
`vision_tower.vision_model`) that transformers 5 no longer has; `from_pretrained` reads the official
Gemma folder layout under both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from ltx_core.text_encoders.gemma import GemmaTextEncoder
from ltx_core.text_encoders.gemma.tokenizer import LTXVGemmaTokenizer

import ltxdist._ltx_core  # noqa: F401  (import order)
from ltxdist.encoders.components import embeddings_processor_component
from ltxdist.encoders.loading import build_component
from ltxdist.models.checkpoint_file import CheckpointError
from ltxdist.quant.modules import quantize_linears_in_place

OFFICIAL_TEXT_TOKENS = 1024
TEXT_ENCODER_PRECISIONS = ("bf16", "fp8", "int8")


@dataclass
class TextEncoding:
    video_context: torch.Tensor  # (S, Dv)
    audio_context: torch.Tensor  # (S, Da)
    context_mask: torch.Tensor  # (S,) bool


def check_gemma_root(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"--gemma {root}: not a directory (the Gemma 3 Hugging Face folder)")
    if not (root / "config.json").is_file() or not list(root.glob("*.safetensors")):
        raise FileNotFoundError(f"--gemma {root}: expected config.json and *.safetensors weights in it")
    if not ((root / "tokenizer.json").is_file() or (root / "tokenizer.model").is_file()):
        raise FileNotFoundError(f"--gemma {root}: no tokenizer.json or tokenizer.model in it")


def default_text_tokens(root: Path) -> int:
    """1024 (the official length) unless the tokenizer declares a shorter maximum (the tiny one: 128)."""
    import json

    config = root / "tokenizer_config.json"
    limit = OFFICIAL_TEXT_TOKENS
    if config.is_file():
        declared = json.loads(config.read_text()).get("model_max_length")
        if isinstance(declared, int) and 0 < declared < limit:
            limit = declared
    return limit


class TextEncoder:
    def __init__(self, gemma: GemmaTextEncoder, processor: torch.nn.Module, text_tokens: int):
        self.gemma, self.processor, self.text_tokens = gemma, processor, text_tokens

    @torch.inference_mode()
    def encode(self, prompt: str) -> TextEncoding:
        hidden_states, mask = self.gemma.encode(prompt)
        out = self.processor.process_hidden_states(hidden_states, mask, padding_side="left")
        return TextEncoding(
            video_context=out.video_encoding[0].float().cpu(),
            audio_context=out.audio_encoding[0].float().cpu(),
            context_mask=out.attention_mask[0].bool().cpu(),
        )


def load_text_encoder(
    checkpoint: str | Path,
    gemma_root: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    text_tokens: int | None = None,
    precision: str = "bf16",
) -> TextEncoder:
    """`precision` fp8 / int8: Gemma's Linear weights in 8 bits (ltxdist.quant, ~13 GB instead of 24 GB
    for the 12B model), quantized layer by layer on `device` after loading on the CPU, so the full
    precision model never sits on the GPU; bf16: as loaded, in `dtype`."""
    from transformers import Gemma3ForConditionalGeneration

    root = Path(gemma_root)
    check_gemma_root(root)
    if precision not in TEXT_ENCODER_PRECISIONS:
        raise ValueError(f"text encoder precision: one of {TEXT_ENCODER_PRECISIONS}, got {precision!r}")
    quantize = precision != "bf16"
    kwargs = {"device_map": {"": str(device)}} if device.type == "cuda" and not quantize else {}
    model, info = Gemma3ForConditionalGeneration.from_pretrained(
        str(root), dtype=dtype, local_files_only=True, output_loading_info=True, **kwargs
    )
    # lm_head is tied to the token embedding and absent from the official files.
    missing = {k for k in info["missing_keys"] if not k.startswith("lm_head")}
    if missing or info["unexpected_keys"] or info["mismatched_keys"]:
        raise CheckpointError(
            f"--gemma {root}: weights do not match its config.json (missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(info['unexpected_keys'])[:8]}, "
            f"mismatched {list(info['mismatched_keys'])[:8]})"
        )
    if quantize:
        # lm_head shares the token embedding's weight (and encoding never uses it): left as it is.
        quantize_linears_in_place(
            model, precision, device=device, select=lambda name, module: not name.startswith("lm_head")
        )
    model = model.to(device).eval()
    text = model.config.text_config
    processor = build_component(
        checkpoint,
        embeddings_processor_component(text.hidden_size, text.num_hidden_layers),
        device=device,
        dtype=dtype,
    )
    tokens = text_tokens or default_text_tokens(root)
    registers = processor.video_connector.num_learnable_registers or 1
    if tokens % registers:
        raise ValueError(
            f"--text-tokens {tokens}: the text connectors tile {registers} learnable registers over the "
            f"sequence, so the length must be a multiple of {registers}"
        )
    tokenizer = LTXVGemmaTokenizer(str(root), tokens)
    return TextEncoder(GemmaTextEncoder(model=model, tokenizer=tokenizer, dtype=dtype), processor, tokens)
