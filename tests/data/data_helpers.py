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


def exif_tiff(orientation: int, byte_order: str = "II") -> bytes:
    """An EXIF TIFF block whose IFD0 holds one entry, the Orientation (tag 0x0112, SHORT, count 1):
    header (byte order, 42, IFD0 at offset 8), entry count, the 12-byte entry, no next IFD."""
    import struct

    e = {"II": "<", "MM": ">"}[byte_order]
    header = byte_order.encode() + struct.pack(f"{e}HI", 42, 8)
    entry = struct.pack(f"{e}HHIH2x", 0x0112, 3, 1, orientation)  # the SHORT left-justified in 4 bytes
    return header + struct.pack(f"{e}H", 1) + entry + struct.pack(f"{e}I", 0)


def _encode_still(codec_name: str, pix_fmt: str, rgb_HWC, options: dict[str, str]) -> bytes:
    """One picture of uint8 (H, W, 3) pixels as PyAV's `codec_name` encoder writes it (a whole file)."""
    from fractions import Fraction

    import av
    import numpy as np

    codec = av.CodecContext.create(codec_name, "w")
    codec.height, codec.width = rgb_HWC.shape[:2]
    codec.pix_fmt, codec.time_base, codec.options = pix_fmt, Fraction(1, 25), options
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.asarray(rgb_HWC)), format="rgb24")
    return b"".join(bytes(packet) for packet in [*codec.encode(frame), *codec.encode(None)])


def exif_jpeg(path: Path, rgb_HWC, tiff: bytes | None, before: bytes = b"") -> Path:
    """A JPEG of uint8 (H, W, 3) pixels, encoded by PyAV's mjpeg encoder (4:4:4, fine quantizer), with
    `before` (other segments) and then an APP1 "Exif" segment holding `tiff` inserted right after SOI,
    where cameras write it."""
    import struct

    data = _encode_still("mjpeg", "yuvj444p", rgb_HWC, {"qmin": "1", "qmax": "2"})
    assert data[:2] == b"\xff\xd8", "expected a JPEG starting with SOI"
    segments = before
    if tiff is not None:
        payload = b"Exif\x00\x00" + tiff
        segments += b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    path.write_bytes(data[:2] + segments + data[2:])
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: big-endian data length, type, data, CRC-32 of type + data."""
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def exif_png(path: Path, rgb_HWC, tiff: bytes, after_image: bool = False) -> Path:
    """A PNG of uint8 (H, W, 3) pixels (PyAV's png encoder) with an eXIf chunk holding `tiff`, right after
    IHDR (where exiftool writes it) or, `after_image`, just before IEND (allowed too)."""
    data = _encode_still("png", "rgb24", rgb_HWC, {})
    ihdr_end, iend = 8 + 25, len(data) - 12  # signature + IHDR (13 data bytes + 12); IEND: 12 bytes
    assert data[12:16] == b"IHDR" and data[iend + 4 : iend + 8] == b"IEND", "unexpected PNG layout"
    at = iend if after_image else ihdr_end
    path.write_bytes(data[:at] + png_chunk(b"eXIf", tiff) + data[at:])
    return path


def riff_chunk(fourcc: bytes, data: bytes) -> bytes:
    """A RIFF chunk: fourcc, little-endian data length, data padded to an even length."""
    return fourcc + len(data).to_bytes(4, "little") + data + b"\x00" * (len(data) % 2)


def exif_webp(path: Path, rgb_HWC, tiff: bytes, prefix: bytes = b"") -> Path:
    """A lossless WebP of uint8 (H, W, 3) pixels (PyAV's libwebp encoder) in the extended layout that
    `cwebp -metadata exif` writes: VP8X (EXIF flag, canvas size), the image chunk, then an EXIF chunk
    holding `prefix` + `tiff`."""
    data = _encode_still("libwebp", "bgra", rgb_HWC, {"lossless": "1"})
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP", "expected a RIFF WebP file"
    height, width = rgb_HWC.shape[:2]
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    vp8x = riff_chunk(b"VP8X", bytes([0x08, 0, 0, 0]) + canvas)  # 0x08: EXIF metadata present
    chunks = vp8x + data[12:] + riff_chunk(b"EXIF", prefix + tiff)
    path.write_bytes(b"RIFF" + (4 + len(chunks)).to_bytes(4, "little") + b"WEBP" + chunks)
    return path
