"""`ltxdist-synthetic-data OUT`: shards of synthetic cached latents shaped for a given checkpoint.

For the tiny demo and tests when no raw video is at hand. Samples come from a few fixed "concepts"
(a latent pattern plus a caption embedding), so a LoRA can actually learn them and the loss goes down.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ltxdist.data.shards import ShardIndex

AUDIO_LATENTS_PER_SECOND = 25
AUDIO_CHANNELS, AUDIO_MEL_BINS = 8, 16


def parse_bucket(bucket: str) -> tuple[int, int, int]:
    """'WxHxF' -> (W, H, F), checked against the VAE's constraints."""
    try:
        w, h, f = (int(v) for v in bucket.lower().split("x"))
    except ValueError:
        raise ValueError(f"bucket {bucket!r} is not of the form WxHxF (e.g. 960x544x49)") from None
    if w % 32 or h % 32 or w <= 0 or h <= 0:
        raise ValueError(f"bucket {bucket!r}: width and height must be positive multiples of 32")
    if f < 1 or (f - 1) % 8:
        raise ValueError(f"bucket {bucket!r}: frames must be 8n+1 (1, 9, 17, 25, ..., 121)")
    return w, h, f


def latent_shape(bucket: str, channels: int = 128) -> tuple[int, int, int, int]:
    w, h, f = parse_bucket(bucket)
    return channels, 1 + (f - 1) // 8, h // 32, w // 32


def audio_latent_frames(num_frames: int, fps: float) -> int:
    return max(1, round(num_frames / fps * AUDIO_LATENTS_PER_SECOND))


def write_synthetic_dataset(
    out: str | Path,
    checkpoint: str | Path,
    *,
    num_samples: int = 32,
    samples_per_shard: int = 8,
    buckets: tuple[str, ...] = ("64x64x17",),
    fps: float = 24.0,
    with_audio: bool = True,
    num_concepts: int = 4,
    text_tokens: int = 16,
    seed: int = 0,
    reference_video_downscale: int | None = None,
    reference_audio_frames: int | None = None,
) -> ShardIndex:
    """`reference_video_downscale`: add an IC-LoRA reference (the target latents average-pooled by that
    factor in H and W, so the reference really predicts the target); `reference_audio_frames`: add an
    ID-LoRA reference audio clip of that many latent frames from the same concept."""
    # Imported here: bucket parsing (used by `ltxdist-prepare --help`) and this module's --help stay light.
    import torch

    from ltxdist.data.sample import CachedSample
    from ltxdist.data.shards import ShardIndex, save_empty_caption, shard_name, write_shard
    from ltxdist.models.checkpoint_file import read_checkpoint_info
    from ltxdist.models.presets import text_context_dims

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = read_checkpoint_info(checkpoint)
    dv, da = text_context_dims(info.config)
    gen = torch.Generator().manual_seed(seed)
    concepts = []
    for c in range(num_concepts):
        concepts.append(
            {
                "video": {b: torch.randn(latent_shape(b), generator=gen) for b in buckets},
                "audio": torch.randn(AUDIO_CHANNELS, 1, AUDIO_MEL_BINS, generator=gen),
                "vctx": torch.randn(text_tokens, dv, generator=gen),
                "actx": torch.randn(text_tokens, da, generator=gen),
                "caption": f"concept {c}",
            }
        )
    index = ShardIndex(
        model_version=info.model_version,
        encoder_fingerprints={"synthetic": f"seed={seed},concepts={num_concepts}"},
        extra={"text_tokens": text_tokens, "synthetic": True},
    )
    shard: list[CachedSample] = []
    for i in range(num_samples):
        c = concepts[i % num_concepts]
        bucket = buckets[i % len(buckets)]
        num_frames = parse_bucket(bucket)[2]
        tensors = {
            "video_latents": (c["video"][bucket] + 0.1 * torch.randn(latent_shape(bucket), generator=gen)).to(
                torch.bfloat16
            ),
            "video_context": c["vctx"].to(torch.bfloat16),
            "audio_context": c["actx"].to(torch.bfloat16),
            "context_mask": torch.ones(text_tokens, dtype=torch.bool),
        }
        if with_audio:
            t = audio_latent_frames(num_frames, fps)
            tensors["audio_latents"] = (
                c["audio"].expand(-1, t, -1)
                + 0.1 * torch.randn(AUDIO_CHANNELS, t, AUDIO_MEL_BINS, generator=gen)
            ).to(torch.bfloat16)
        if reference_video_downscale:
            k = reference_video_downscale
            pooled = torch.nn.functional.avg_pool3d(tensors["video_latents"].float()[None], (1, k, k))[0]
            tensors["reference_video_latents"] = pooled.to(torch.bfloat16)
        if reference_audio_frames:
            noise = 0.1 * torch.randn(AUDIO_CHANNELS, reference_audio_frames, AUDIO_MEL_BINS, generator=gen)
            tensors["reference_audio_latents"] = (
                c["audio"].expand(-1, reference_audio_frames, -1) + noise
            ).to(torch.bfloat16)
        meta = {
            "id": f"sample-{i:06d}",
            "bucket": bucket,
            "fps": fps,
            "caption": c["caption"],
            "source": "synthetic",
        }
        if reference_video_downscale:
            meta["reference_downscale_factor"] = reference_video_downscale
        shard.append(CachedSample(tensors=tensors, meta=meta))
        if len(shard) == samples_per_shard or i == num_samples - 1:
            index.shards.append(write_shard(out / shard_name(len(index.shards)), shard))
            shard = []
            index.save(out)
    save_empty_caption(
        out,
        torch.zeros(text_tokens, dv, dtype=torch.bfloat16),
        torch.zeros(text_tokens, da, dtype=torch.bfloat16),
        torch.ones(text_tokens, dtype=torch.bool),
    )
    index.save(out)
    return index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint whose dims the data must fit"
    )
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=8)
    parser.add_argument("--buckets", default="64x64x17", help="';'-separated WxHxF buckets")
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference-downscale",
        type=int,
        default=None,
        help="add IC-LoRA reference video latents downscaled by this factor",
    )
    parser.add_argument(
        "--reference-audio-frames",
        type=int,
        default=None,
        help="add ID-LoRA reference audio latents of this many frames",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    index = write_synthetic_dataset(
        args.out,
        args.checkpoint,
        num_samples=args.num_samples,
        samples_per_shard=args.samples_per_shard,
        buckets=tuple(b for b in args.buckets.split(";") if b),
        with_audio=not args.no_audio,
        seed=args.seed,
        reference_video_downscale=args.reference_downscale,
        reference_audio_frames=args.reference_audio_frames,
    )
    print(f"wrote {index.num_samples} samples in {len(index.shards)} shards to {args.out}")


if __name__ == "__main__":
    main()
