"""Helpers shared by the data-pipeline tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

import zlib
from pathlib import Path

BUCKETS = "64x64x17;96x64x17;64x96x17;64x64x9"


def clip(
    directory: Path,
    name: str,
    *,
    width: int = 64,
    height: int = 64,
    frames: int = 17,
    fps: float = 24.0,
    audio: bool = True,
    caption: str | None = None,
    concept: int = 0,
) -> Path:
    """A synthetic raw clip (PyAV H.264 + AAC) with an optional .txt caption sidecar."""
    from ltxdist.data.prepare.demo import CONCEPTS, make_clip

    directory.mkdir(parents=True, exist_ok=True)
    return make_clip(
        directory / name,
        CONCEPTS[concept % len(CONCEPTS)],
        width,
        height,
        frames,
        fps,
        seed=zlib.crc32(name.encode()) % 1000,
        audio=audio,
        caption=caption,
    )


def prepare_opts(input_path: Path, out: Path, model, **overrides):
    """PrepareOptions for the tiny model on CPU, fp32, no progress bar; keyword overrides for the rest."""
    from ltxdist.data.buckets import parse_buckets
    from ltxdist.data.prepare import PrepareOptions, SampleSpec

    spec_keys = {
        "strategy",
        "reference_downscale_factor",
        "audio",
        "reference_audio_seconds",
        "lora_trigger",
        "short_audio",
    }
    spec = SampleSpec(
        buckets=tuple(parse_buckets(overrides.pop("buckets", BUCKETS))),
        **{k: overrides.pop(k) for k in list(overrides) if k in spec_keys},
    )
    return PrepareOptions(
        input=input_path,
        out=out,
        checkpoint=model.checkpoint,
        gemma=model.gemma,
        spec=spec,
        device="cpu",
        dtype="fp32",
        progress=False,
        **overrides,
    )


def read_samples(directory: Path) -> dict:
    """id -> CachedSample for every sample listed in directory's index.json."""
    from ltxdist.data.sample import decode_sample
    from ltxdist.data.shards import load_index, read_shard_records

    out = {}
    for shard in load_index(directory).shards:
        for record in read_shard_records(directory / shard["name"]):
            sample = decode_sample(record, where=shard["name"])
            out[sample.key] = sample
    return out


def rotate_display(path: Path, degrees_clockwise: int) -> Path:
    """Give an mp4 a display rotation the way phones do: frames stay as stored, the track header's
    (tkhd) matrix says how to turn them for display. Rewrites the matrix in place (a version-0 tkhd, as
    PyAV/FFmpeg write); players and FFmpeg then show the picture turned `degrees_clockwise`."""
    import math
    import struct

    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd") - 4  # the box starts with its 4-byte size
    assert box >= 0 and data[box + 8] == 0, "expected a version-0 tkhd box"
    # ISO 14496-12: [x' y'] = [x y] [[a b] [c d]] in 16.16 fixed point, w = 1.0 in 2.30; with y pointing
    # down, a clockwise turn by t is a = d = cos t, b = sin t, c = -sin t.
    t = math.radians(degrees_clockwise)
    cos, sin = round(math.cos(t)) << 16, round(math.sin(t)) << 16
    struct.pack_into(">9i", data, box + 48, cos, sin, 0, -sin, cos, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    return path
