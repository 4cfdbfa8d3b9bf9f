"""`ltxdist-tiny-checkpoint OUT`: a tiny random LTX-2.3 checkpoint in the official layout.

Same key prefix (`model.diffusion_model.`), same `config` / `model_version` metadata and bf16 weights
as `ltx-2.3-22b-dev.safetensors`, so tests and the demo load it through the 22B code path. The CLI
also writes, as the official file holds them, the video VAE (`vae.`), audio VAE (`audio_vae.`),
vocoder (`vocoder.`) and text connectors (`text_embedding_projection.`,
`model.diffusion_model.{video,audio}_embeddings_connector.`), plus a tiny Gemma folder next to it
(the official Gemma is a separate Hugging Face folder too).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ltxdist.models.presets import LTX23_MODEL_VERSION, transformer_config

if TYPE_CHECKING:
    import torch

TINY_CHECKPOINT_NAME = "ltx-2.3-tiny.safetensors"


def with_encoder_config(config: dict) -> dict:
    """`config` plus the tiny VAE / audio VAE / vocoder sections and the 2.3 text-connector keys."""
    from ltxdist.models.tiny_encoders import connector_transformer_keys, tiny_encoder_config_sections

    out = {**config, **tiny_encoder_config_sections()}
    out["transformer"] = {**config["transformer"], **connector_transformer_keys(config["transformer"])}
    return out


def write_random_checkpoint(
    out_file: str | Path,
    *,
    preset: str = "tiny",
    seed: int = 0,
    model_version: str = LTX23_MODEL_VERSION,
    dtype: torch.dtype | None = None,
    extra_config: dict | None = None,
    with_encoders: bool = False,
) -> Path:
    """With `with_encoders`, the file also holds tiny random VAEs, vocoder and text connectors. Weights in
    `dtype`, default bfloat16 (as the official checkpoint)."""
    # Imported here, not at the top: `ltxdist-tiny-checkpoint --help` answers without loading torch.
    import torch

    from ltxdist._ltx_core import LTXModelConfigurator
    from ltxdist.io import save_safetensors_atomic
    from ltxdist.models.checkpoint_file import TRANSFORMER_PREFIX
    from ltxdist.models.init import init_transformer_weights

    dtype = torch.bfloat16 if dtype is None else dtype
    config = transformer_config(preset)
    if extra_config:
        config.update(extra_config)
    model = LTXModelConfigurator.from_config(config)
    init_transformer_weights(model, torch.Generator().manual_seed(seed))
    tensors = {TRANSFORMER_PREFIX + k: v.to(dtype) for k, v in model.state_dict().items()}
    if with_encoders:
        from ltxdist.models.tiny_encoders import encoder_tensors

        config = with_encoder_config(config)
        tensors.update(encoder_tensors(config, seed=seed, dtype=dtype))
    metadata = {"config": json.dumps(config), "model_version": model_version}
    out_file = Path(out_file)
    save_safetensors_atomic(tensors, out_file, metadata=metadata)
    return out_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory (or a .safetensors file path)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-version", default=LTX23_MODEL_VERSION)
    parser.add_argument(
        "--transformer-only",
        action="store_true",
        help="write only the transformer (no VAEs, vocoder, text connectors or Gemma)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = args.out if args.out.suffix == ".safetensors" else args.out / TINY_CHECKPOINT_NAME
    path = write_random_checkpoint(
        out, seed=args.seed, model_version=args.model_version, with_encoders=not args.transformer_only
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, model_version {args.model_version})")
    if not args.transformer_only:
        from ltxdist.models.tiny_encoders import TINY_GEMMA_DIR, write_tiny_gemma

        gemma = write_tiny_gemma(path.parent / TINY_GEMMA_DIR, seed=args.seed)
        print(f"wrote {gemma} (tiny Gemma 3 text encoder + tokenizer; pass it as --gemma)")


if __name__ == "__main__":
    main()
