"""`ltxdist-sample`: generate video + audio with an LTX-2.3 base and LoRAs; `ltxdist-sample grid` runs
the evaluation protocol (checkpoints x prompts x seeds x strengths, bleed test, base model).

ltxdist-sample --checkpoint CKPT --gemma GEMMA_DIR --prompt "..." [--lora FILE[:STRENGTH] ...] --out OUT.mp4
ltxdist-sample grid --checkpoint CKPT --gemma GEMMA_DIR --lora-dir RUN/lora --prompt "sks ..." \
    --trigger sks --seeds 0 1 --out-dir OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

# Only light imports here: `--help` and argument errors answer without loading torch and transformers
# (seconds); each command imports what it uses.
from ltxdist.sampling.defaults import (
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_STRENGTHS,
    ID_LORA_IDENTITY_GUIDANCE,
    ID_LORA_STG_BLOCK,
    IMAGE_CONDITIONING_CRF,
    LTX_2_3_STG_BLOCK,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from ltxdist.lora.comfy_format import LoRAFile, LoRAHeader

    # What the flags' defaults read from a LoRA: its metadata (a header is enough).
    LoRAMeta = Sequence[LoRAFile | LoRAHeader]
    from ltxdist.sampling.guidance import Guidance
    from ltxdist.sampling.pipeline import Sampler, SampleRequest

PROG = "ltxdist-sample"


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", type=Path, required=True, help="LTX-2.3 checkpoint (transformer + VAEs)")
    g.add_argument("--gemma", type=Path, required=True, help="Gemma 3 folder (Hugging Face layout)")
    g.add_argument(
        "--text-tokens",
        type=int,
        default=None,
        help="prompt length (default: 1024, or less if the tokenizer says)",
    )
    g.add_argument("--device", default="auto")
    g.add_argument(
        "--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 on GPU, fp32 on CPU"
    )
    g.add_argument("--force", action="store_true", help="load LoRAs trained on another base model version")
    g = p.add_argument_group("video")
    g.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT)
    g.add_argument("--width", type=int, default=768)
    g.add_argument("--height", type=int, default=512)
    g.add_argument("--frames", type=int, default=121, help="8n+1")
    g.add_argument("--fps", type=float, default=24.0)
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--no-audio", action="store_true", help="generate video only")
    g.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("guidance (defaults: ltx-pipelines')")
    g.add_argument("--cfg", type=float, default=3.0, help="video CFG scale (1 = off)")
    g.add_argument("--audio-cfg", type=float, default=7.0, help="audio CFG scale (1 = off)")
    g.add_argument("--stg", type=float, default=1.0, help="video STG scale (0 = off)")
    g.add_argument("--audio-stg", type=float, default=1.0, help="audio STG scale (0 = off)")
    g.add_argument(
        "--stg-blocks",
        type=int,
        nargs="+",
        default=None,
        help=f"blocks whose self-attention STG skips (default {LTX_2_3_STG_BLOCK}, as ltx-pipelines for "
        f"LTX-2.3; {ID_LORA_STG_BLOCK} with --reference-audio, as ID-LoRA's inference)",
    )
    g.add_argument(
        "--rescale",
        type=float,
        default=None,
        help="rescale guided prediction towards cond's std (default 0.7; 0 with --reference-audio, as "
        "ID-LoRA's inference)",
    )
    g.add_argument("--modality-scale", type=float, default=3.0, help="audio<->video guidance (1 = off)")
    g.add_argument(
        "--identity-guidance",
        type=float,
        default=None,
        metavar="SCALE",
        help="ID-LoRA identity guidance with --reference-audio: one more pass without the reference "
        f"voice (default: the LoRA's metadata, else {ID_LORA_IDENTITY_GUIDANCE:g} as ID-LoRA publishes; "
        "0 = off)",
    )
    g = p.add_argument_group("references")
    g.add_argument("--reference-video", type=Path, help="IC-LoRA reference video (or still image, looped)")
    g.add_argument(
        "--reference-downscale", type=int, default=None, help="default: the LoRA's metadata, else 1"
    )
    g.add_argument("--image", type=Path, help="kept as the clean first frame (ID-LoRA reference image)")
    g.add_argument(
        "--image-crf",
        type=_crf,
        default=IMAGE_CONDITIONING_CRF,
        metavar="CRF",
        help="--image is re-compressed by H.264 at this CRF before encoding, as ltx-pipelines does (the "
        f"model learnt first frames from compressed video; default {IMAGE_CONDITIONING_CRF}, 0 = off)",
    )
    g.add_argument("--reference-audio", type=Path, help="ID-LoRA reference voice")
    g.add_argument("--reference-audio-seconds", type=float, default=5.0)
    for flag, help_ in (
        ("--id-negative-positions", "reference voice placed before the target in time"),
        ("--id-mask-video-to-ref-audio", "video queries do not see the reference voice"),
        ("--id-mask-ref-audio-to-text", "the reference voice does not see the text"),
    ):
        g.add_argument(
            flag,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=help_ + " (default: LoRA metadata)",
        )


def _crf(text: str) -> int:
    from ltxdist.data.media import MAX_CRF

    value = int(text)
    if not 0 <= value <= MAX_CRF:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..{MAX_CRF} (0 = off), got {value}")
    return value


def _guidance(args: argparse.Namespace, loras: LoRAMeta) -> Guidance:
    """The guidance flags; an ID-LoRA run (a reference voice) defaults to ID-LoRA's published inference:
    no rescale, and identity guidance from the LoRA's metadata (else the published scale)."""
    from ltxdist.sampling.guidance import Guidance, GuidanceParams

    id_run = args.reference_audio is not None
    if args.identity_guidance is not None and not id_run:
        raise ValueError("--identity-guidance compares passes with and without --reference-audio; give one")
    identity = 0.0
    if id_run:
        stored = _from_metadata(loras, "identity_guidance_scale")
        identity = args.identity_guidance
        if identity is None:
            identity = float(stored) if stored is not None else ID_LORA_IDENTITY_GUIDANCE
    rescale = args.rescale if args.rescale is not None else (0.0 if id_run else 0.7)
    default_block = ID_LORA_STG_BLOCK if id_run else LTX_2_3_STG_BLOCK
    blocks = tuple(args.stg_blocks) if args.stg_blocks is not None else (default_block,)
    video = GuidanceParams(args.cfg, args.stg, blocks, rescale, args.modality_scale)
    audio = GuidanceParams(args.audio_cfg, args.audio_stg, blocks, rescale, args.modality_scale)
    return Guidance(video, audio, identity_scale=identity)


def _from_metadata(loras: LoRAMeta, key: str) -> str | None:
    from ltxdist.lora import LoRAFileError

    values = {lora.metadata[key] for lora in loras if key in lora.metadata}
    if len(values) > 1:
        raise LoRAFileError(
            f"the LoRAs disagree on {key}: {sorted(values)}; set the matching flag explicitly"
        )
    return values.pop() if values else None


def _bool(value: str | None, default: bool) -> bool:
    return default if value is None else value.strip().lower() == "true"


def _request(args: argparse.Namespace, prompt: str, seed: int, loras: LoRAMeta) -> SampleRequest:
    from ltxdist.sampling.conditioning import IdReferenceOptions, VideoSpec
    from ltxdist.sampling.pipeline import References, SampleRequest

    factor = args.reference_downscale
    if factor is None:
        factor = int(_from_metadata(loras, "reference_downscale_factor") or 1)
    defaults = IdReferenceOptions()
    pick = {
        "negative_positions": (args.id_negative_positions, "use_negative_ref_positions"),
        "mask_video_to_ref_audio": (args.id_mask_video_to_ref_audio, "mask_video_to_ref_audio"),
        "mask_ref_audio_to_text": (args.id_mask_ref_audio_to_text, "mask_ref_audio_to_text"),
    }
    id_kwargs = {
        field: flag if flag is not None else _bool(_from_metadata(loras, key), getattr(defaults, field))
        for field, (flag, key) in pick.items()
    }
    return SampleRequest(
        prompt=prompt,
        video=VideoSpec(args.width, args.height, args.frames, args.fps),
        seed=seed,
        steps=args.steps,
        negative_prompt=args.negative_prompt,
        guidance=_guidance(args, loras),
        with_audio=not args.no_audio,
        references=References(
            video=args.reference_video,
            downscale_factor=factor,
            image=args.image,
            image_crf=args.image_crf,
            audio=args.reference_audio,
            audio_seconds=args.reference_audio_seconds,
        ),
        id_options=IdReferenceOptions(**id_kwargs),
    )


def _sampler(
    args: argparse.Namespace, transformer: torch.nn.Module, device: torch.device, dtype: torch.dtype
) -> Sampler:
    from ltxdist.encoders import AudioVAE, VideoVAE
    from ltxdist.encoders.text import load_text_encoder
    from ltxdist.sampling.pipeline import Sampler

    text = load_text_encoder(
        args.checkpoint, args.gemma, device=device, dtype=dtype, text_tokens=args.text_tokens
    )
    return Sampler(
        transformer,
        video_vae=VideoVAE(args.checkpoint, device, dtype),
        audio_vae=None
        if args.no_audio and args.reference_audio is None
        else AudioVAE(args.checkpoint, device, dtype),
        text=text,
        device=device,
        dtype=dtype,
    )


def _check_early(request: SampleRequest, checkpoint: Path) -> None:
    """Sizes, STG blocks and reference files, checked before 44 GB of weights are loaded."""
    from ltxdist.models import read_checkpoint_info

    request.video.check()
    if not request.with_audio and request.references.audio is not None:
        raise ValueError("--reference-audio conditions the audio stream; it cannot be used with --no-audio")
    blocks = int(read_checkpoint_info(checkpoint).config["transformer"]["num_layers"])
    request.guidance.video.check(blocks, "--stg-blocks")
    if request.with_audio:
        request.guidance.audio.check(blocks, "--stg-blocks")
    refs = request.references
    for flag, path in (
        ("--reference-video", refs.video),
        ("--image", refs.image),
        ("--reference-audio", refs.audio),
    ):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{flag} {path}: file not found")


def cmd_generate(args: argparse.Namespace) -> None:
    from ltxdist.encoders import pick_device, pick_dtype
    from ltxdist.io import write_json_atomic
    from ltxdist.models import read_checkpoint_info
    from ltxdist.sampling.loading import LoRAChoice, fused_transformer, read_checked_loras
    from ltxdist.sampling.pipeline import write_sample

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    choices = [LoRAChoice.parse(s) for s in args.lora]
    base_version = read_checkpoint_info(args.checkpoint).model_version
    request = _request(
        args, args.prompt, args.seed, read_checked_loras(choices, base_version, force=args.force)
    )
    _check_early(request, args.checkpoint)
    transformer, info, _ = fused_transformer(
        args.checkpoint, choices, device=device, dtype=dtype, force=args.force
    )
    sampler = _sampler(args, transformer, device, dtype)
    # The text encoder (Gemma 3 12B for the real model) is freed before the transformer samples.
    sampler.encode_prompts([request.prompt, request.negative_prompt], release=True)
    # Likewise the VAE encoders, once the references are encoded (only the decoders are needed after).
    sampler.encode_reference_sets([request], release=True)
    result = sampler.generate(request, progress=not args.no_progress)
    out = write_sample(args.out, result, args.fps)
    settings = {
        "checkpoint": str(info.path),
        "base_model_version": info.model_version,
        "loras": [{"path": str(c.path), "strength": c.strength} for c in choices],
        "request": json.loads(json.dumps(asdict(request), default=str)),
    }
    write_json_atomic(out.with_suffix(".json"), settings)
    print(
        f"wrote {out} ({result.frames_FHWC.shape[0]} frames, {args.width}x{args.height}"
        f"{', with audio' if result.audio is not None else ''})"
    )


def _grid_loras(args: argparse.Namespace) -> list[Path]:
    paths = list(args.lora)
    if args.lora_dir is not None:
        if not args.lora_dir.is_dir():
            raise FileNotFoundError(f"--lora-dir {args.lora_dir}: not a directory")
        paths += sorted(args.lora_dir.glob("*.safetensors"))
    return paths


def cmd_grid(args: argparse.Namespace) -> None:
    from ltxdist.encoders import pick_device, pick_dtype
    from ltxdist.models import load_transformer, read_checkpoint_info
    from ltxdist.sampling.grid import GridRunner, GridSpec, remove_trigger
    from ltxdist.sampling.loading import read_checked_headers

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    bleed = list(args.bleed_prompt) or (
        [remove_trigger(p, args.trigger) for p in args.prompt] if args.trigger else []
    )
    spec = GridSpec(
        loras=tuple(_grid_loras(args)),
        prompts=tuple(args.prompt),
        seeds=tuple(args.seeds),
        strengths=tuple(args.strengths),
        bleed_prompts=tuple(dict.fromkeys(bleed)),
        sheet_max_width=args.sheet_max_width,
    )
    spec.check()
    base_version = read_checkpoint_info(args.checkpoint).model_version
    # Each file checked from its header (the runner reads each file's tensors once, one file at a time).
    files = read_checked_headers(list(spec.loras), base_version, force=args.force)
    template = _request(args, spec.prompts[0], spec.seeds[0], files)
    _check_early(template, args.checkpoint)
    loaded = load_transformer(args.checkpoint, device=device, dtype=dtype)
    loaded.model.eval()
    sampler = _sampler(args, loaded.model, device, dtype)
    sampler.encode_prompts([*(r.prompt for r in spec.rows()), template.negative_prompt], release=True)
    runner = GridRunner(sampler, template, base_model_version=loaded.model_version, force=args.force)
    records = runner.run(spec, args.out_dir, progress=not args.no_progress)
    print(f"wrote {len(records)} cells, contact sheets and {args.out_dir / 'summary.md'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("generate", help="one video (+ audio) from a prompt (the default command)")
    _add_common(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]", help="repeatable")
    p.add_argument(
        "--out", type=Path, required=True, help="output .mp4 (settings written next to it as .json)"
    )
    p.set_defaults(fn=cmd_generate)
    p = sub.add_parser("grid", help="evaluation grid with contact sheets and a summary table")
    _add_common(p)
    p.add_argument(
        "--lora", action="append", default=[], type=Path, metavar="FILE", help="checkpoint (repeatable)"
    )
    p.add_argument("--lora-dir", type=Path, help="every *.safetensors in it (e.g. RUN/lora)")
    p.add_argument("--prompt", action="append", required=True, help="repeatable; include the trigger word")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--strengths", type=float, nargs="+", default=list(DEFAULT_STRENGTHS))
    p.add_argument("--trigger", help="trigger word; bleed prompts are the prompts without it")
    p.add_argument(
        "--bleed-prompt", action="append", default=[], help="explicit bleed-test prompt (repeatable)"
    )
    p.add_argument("--sheet-max-width", type=int, default=2048)
    p.add_argument("--out-dir", type=Path, required=True)
    p.set_defaults(fn=cmd_grid)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("generate", "grid", "-h", "--help"):
        argv.insert(0, "generate")  # `ltxdist-sample --prompt ...` means generate
    args = build_parser().parse_args(argv)
    from ltxdist.data.media import MediaError
    from ltxdist.lora import LoRAFileError
    from ltxdist.models import CheckpointError

    try:
        args.fn(args)
    except (LoRAFileError, CheckpointError, MediaError, ValueError, FileNotFoundError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
