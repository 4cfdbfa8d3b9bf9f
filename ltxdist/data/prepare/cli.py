"""`ltxdist-prepare`: raw clips + captions -> webdataset shards of cached latents.

  ltxdist-prepare INPUT --out SHARDS --checkpoint CKPT --gemma GEMMA_DIR --buckets 960x544x49;...
  ltxdist-prepare --decode SHARDS --checkpoint CKPT --out DIR      (latents back to mp4, to look at)
  ltxdist-prepare --make-demo-clips DIR                            (a few synthetic raw clips)

INPUT is a dataset.json / .jsonl / .csv manifest (video_path or video, caption, and per strategy
reference_video / reference_image / reference_audio) or a folder of clips with .txt caption sidecars.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Only light imports here: `--help` and argument errors answer without loading torch (seconds).
from ltxdist.data.prepare.options import AUDIO_MODES, SHORT_AUDIO_MODES, STRATEGIES, env_int

# (rank variable, world-size variable, the launcher that sets both for each process it starts).
# srun's world is SLURM_STEP_NUM_TASKS, set per job step: SLURM_NTASKS is also set in a batch script
# (the allocation's task count, with SLURM_PROCID=0) that runs as one process, which would then prepare
# only its share of the shards.
LAUNCHERS = (("RANK", "WORLD_SIZE", "torchrun"), ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "srun"))


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    source: str  # where rank and world size came from, for messages ("" when nothing set them)
    launcher: str = ""  # the launcher that set the rank ("torchrun", "srun"); "" for --rank or none


def env_launch(env: Mapping[str, str]) -> Launch:
    """This process's rank and world size as its launcher set them: torchrun's RANK / WORLD_SIZE, srun's
    SLURM_PROCID / SLURM_STEP_NUM_TASKS (torchrun inside srun: torchrun's); rank 0 of 1 without."""
    rank_key, world_key = LAUNCHERS[0][:2]
    if (rank_key in env) != (world_key in env):
        present, missing = (rank_key, world_key) if rank_key in env else (world_key, rank_key)
        raise ValueError(
            f"{present} is set in the environment but {missing} is not: launch with torchrun (it sets "
            f"both), or pass --rank and --world-size, or unset {present} to prepare in one process"
        )
    for rank_key, world_key, launcher in LAUNCHERS:
        if rank_key in env and world_key in env:
            source = f"{rank_key} / {world_key}, set by {launcher}"
            return Launch(env_int(env, rank_key), env_int(env, world_key), source, launcher)
    return Launch(0, 1, "")


def resolve_launch(rank: int | None, world_size: int | None, env: Mapping[str, str]) -> Launch:
    """--rank / --world-size where given, the launcher's environment for the rest."""
    if rank is not None and world_size is not None:
        return Launch(rank, world_size, "--rank / --world-size")
    launch = env_launch(env)
    flags = [f for f, v in (("--rank", rank), ("--world-size", world_size)) if v is not None]
    source = ", ".join([*flags, launch.source] if launch.source else flags)
    return Launch(
        launch.rank if rank is None else rank,
        launch.world_size if world_size is None else world_size,
        source,
        launch.launcher if rank is None else "",
    )


def _not_finished_note(out: Path, launch: Launch, pending: int, units: int) -> str:
    source = f" (from {launch.source})" if launch.source else ""
    return (
        f"{out}: {pending} of {units} shards are not finished yet: they belong to the other ranks of "
        f"this run, rank {launch.rank} of {launch.world_size}{source}. index.json is written by the rank "
        "that finishes last. No other ranks running (variables left in the environment, say)? Run again "
        "with --world-size 1: it keeps the finished shards and prepares the rest"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ltxdist-prepare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("input", nargs="?", type=Path, help="manifest file or folder of clips")
    p.add_argument("--out", type=Path, help="output shard directory (or, with --decode, the mp4 directory)")
    p.add_argument("--checkpoint", type=Path, help="LTX-2.3 checkpoint with VAEs and text connectors")
    p.add_argument("--gemma", type=Path, help="Gemma 3 folder (Hugging Face layout) for the text encoder")
    p.add_argument(
        "--buckets",
        default=None,
        help="required: ';'-separated WxHxF resolution buckets, W and H multiples of 32, F = 8n+1 frames; "
        "each clip goes to the bucket of nearest aspect ratio. LTX-2.3 examples: "
        "'768x448x121' (the IC-LoRA recipe), '960x544x49;768x448x89;544x960x49' (landscape + portrait), "
        "'1920x1088x121' (1080p); the tiny demo model uses '64x64x17'",
    )
    p.add_argument("--strategy", choices=STRATEGIES, default="standard")
    p.add_argument(
        "--reference-downscale-factor",
        type=int,
        default=1,
        help="video_to_video: reference W and H are the bucket's divided by this",
    )
    p.add_argument(
        "--audio",
        choices=AUDIO_MODES,
        default="required",
        help="required: a clip without audio is a bad clip; optional: keep it without audio",
    )
    p.add_argument(
        "--reference-audio-seconds",
        type=float,
        default=5.0,
        help="audio_ref_only_ic: longest reference audio kept",
    )
    p.add_argument(
        "--short-audio",
        choices=SHORT_AUDIO_MODES,
        default="mask",
        help="a clip whose audio track ends before its video: mask (keep it; the padding stays out of "
        "the loss) or refuse (skip it, naming the file)",
    )
    p.add_argument("--lora-trigger", default=None, help="word prepended to every caption")
    p.add_argument("--samples-per-shard", type=int, default=64)
    p.add_argument("--strict", action="store_true", help="stop at the first bad clip instead of skipping it")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace shards made with other encoders, model version or options, by an older "
        "ltxdist-prepare revision, or from another manifest; only shards whose inputs changed are "
        "re-encoded (a fixed or appended manifest row needs no flag: only its shard is re-encoded)",
    )
    p.add_argument(
        "--rank",
        type=int,
        default=None,
        help="this process's rank (default: RANK from torchrun, SLURM_PROCID from srun, else 0)",
    )
    p.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="number of processes (default: WORLD_SIZE from torchrun, SLURM_STEP_NUM_TASKS from srun, "
        "else 1)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU if any: cuda:LOCAL_RANK under torchrun, cuda:SLURM_LOCALID under srun, modulo the "
        "GPUs seen; else cuda:rank %% GPUs; "
        "else cpu), cpu, cuda:0, ...",
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="encoder precision (auto: bf16 on GPU, fp32 on CPU)",
    )
    p.add_argument(
        "--text-encoder-precision",
        choices=("bf16", "fp8", "int8"),
        default="bf16",
        help="Gemma's Linear weights in 8 bits (fp8 / int8: ~13 GB instead of 24 GB, for small GPUs)",
    )
    p.add_argument(
        "--text-tokens",
        type=int,
        default=None,
        help="text sequence length (default 1024, or the tokenizer's smaller maximum)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--decode", type=Path, metavar="SHARDS", help="decode cached latents in SHARDS to mp4")
    p.add_argument("--num-samples", type=int, default=4, help="--decode: how many samples")
    p.add_argument("--make-demo-clips", type=Path, metavar="DIR", help="write synthetic raw clips to DIR")
    p.add_argument("--num-clips", type=int, default=8, help="--make-demo-clips: how many clips")
    return p


def _need(args: argparse.Namespace, parser: argparse.ArgumentParser, mode: str, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        parser.error(f"{mode} needs {', '.join(missing)}")


def _error(exc: BaseException) -> int:
    print(f"ltxdist-prepare: error: {exc}", file=sys.stderr)
    return 2


def _skipped_line(skipped: dict) -> str:
    """`  skipped WHERE: REASON`, without WHERE twice (a clip's error message starts with where it is)."""
    where, reason = skipped["where"], skipped["reason"]
    return f"  skipped {where}: {reason.removeprefix(where + ': ')}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    modes = [
        m
        for m, on in (
            ("--decode", args.decode),
            ("--make-demo-clips", args.make_demo_clips),
            ("INPUT", args.input),
        )
        if on is not None
    ]
    if len(modes) != 1:
        parser.error("give exactly one of: INPUT (prepare), --decode SHARDS, --make-demo-clips DIR")

    if args.make_demo_clips is not None:
        from ltxdist.data.prepare.demo import make_demo_clips

        paths = make_demo_clips(args.make_demo_clips, num_clips=args.num_clips)
        print(f"wrote {len(paths)} clips with captions to {args.make_demo_clips}")
        return 0

    if args.decode is not None:
        _need(args, parser, "--decode", "checkpoint", "out")
        from ltxdist.data.prepare.decode import decode_shards
        from ltxdist.data.shards import ShardReadError

        try:
            paths = decode_shards(
                args.decode,
                args.checkpoint,
                args.out,
                num_samples=args.num_samples,
                device=args.device,
                dtype=args.dtype,
                progress=not args.no_progress,
            )
        except (ValueError, OSError, ShardReadError) as exc:
            return _error(exc)
        print(f"wrote {len(paths)} videos to {args.out}")
        return 0

    _need(args, parser, "preparing", "out", "checkpoint", "gemma", "buckets")
    try:
        launch = resolve_launch(args.rank, args.world_size, os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    rank, world = launch.rank, launch.world_size
    if world > 1:
        logging.getLogger(__name__).info(
            "rank %d of %d (%s): this process prepares every %d-th shard", rank, world, launch.source, world
        )
    from ltxdist.data.buckets import check_reference_factor, parse_buckets
    from ltxdist.data.prepare.samples import SampleSpec

    try:
        buckets = parse_buckets(args.buckets)
        if args.strategy == "video_to_video":
            check_reference_factor(buckets, args.reference_downscale_factor)
        spec = SampleSpec(
            buckets=tuple(buckets),
            strategy=args.strategy,
            reference_downscale_factor=args.reference_downscale_factor,
            audio=args.audio,
            reference_audio_seconds=args.reference_audio_seconds,
            lora_trigger=args.lora_trigger,
            short_audio=args.short_audio,
        )
    except ValueError as exc:
        parser.error(str(exc))

    from ltxdist.data.manifest import ManifestError
    from ltxdist.data.prepare.pipeline import PrepareError, PrepareOptions, prepare_dataset

    opts = PrepareOptions(
        input=args.input,
        out=args.out,
        checkpoint=args.checkpoint,
        gemma=args.gemma,
        spec=spec,
        samples_per_shard=args.samples_per_shard,
        strict=args.strict,
        overwrite=args.overwrite,
        rank=rank,
        world_size=world,
        rank_launcher=launch.launcher,
        device=args.device,
        dtype=args.dtype,
        text_tokens=args.text_tokens,
        progress=not args.no_progress,
        text_encoder_precision=args.text_encoder_precision,
    )
    try:
        result = prepare_dataset(opts)
    except (ManifestError, PrepareError, ValueError, OSError) as exc:
        # OSError: --out not writable, a full disk (AtomicWriteError names the file), a missing
        # --checkpoint; finished shards stay on disk and the same command resumes.
        return _error(exc)
    replaced = (
        f" ({result.replaced_units} shard(s) of them re-encoded because their rows, inputs or "
        "ltxdist-prepare revision changed)"
        if result.replaced_units
        else ""
    )
    print(
        f"rank {rank}/{world}: encoded {result.encoded} samples{replaced}, "
        f"{result.resumed_units} shards already done"
    )
    if not result.complete:
        print(_not_finished_note(args.out, launch, result.pending_units, result.num_units))
    if result.complete and result.index is not None and result.index.num_samples == 0:
        for s in result.skipped:
            print(_skipped_line(s), file=sys.stderr)
        print(
            f"ltxdist-prepare: error: {args.out} holds no samples: every one of its "
            f"{result.index.extra.get('num_rows', 0)} rows was skipped (reasons above and in "
            f"{args.out / 'prepare_report.json'})",
            file=sys.stderr,
        )
        return 1
    if result.complete and result.index is not None:
        print(
            f"{args.out}: {result.index.num_samples} samples in {len(result.index.shards)} shards, "
            f"buckets {result.index.buckets}"
        )
        for s in result.skipped:
            print(_skipped_line(s))
        if result.skipped:
            print(f"  ({len(result.skipped)} skipped rows listed in {args.out / 'prepare_report.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
