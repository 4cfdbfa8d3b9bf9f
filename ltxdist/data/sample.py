"""One cached training sample: safetensors tensors + a JSON record. No pickle anywhere.

Tensor keys (shapes per sample, no batch dim):
  video_latents            (128, F', H', W')   normalized VAE means
  audio_latents            (8, T, 16)          optional
  video_context            (S, Dv)             text context for the video stream
  audio_context            (S, Da)             text context for the audio stream
  context_mask             (S,)                1 = real token
  reference_video_latents  (128, Fr, Hr, Wr)   optional (IC-LoRA)
  reference_audio_latents  (8, Tr, 16)         optional (ID-LoRA)
  reference_image_latents  (128, 1, H', W')    optional
JSON record: id, bucket ("WxHxF"), fps, caption, source, and optional reference_downscale_factor,
audio_frames / reference_audio_frames (how many leading latent frames of audio_latents /
reference_audio_latents hold sound: a track shorter than its clip is padded, and the padding is kept out
of the loss and of attention; absent: all of them).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import save as safetensors_save

from ltxdist.io import SAFETENSORS_DTYPES

SCHEMA_VERSION = 1
TENSOR_EXT = "safetensors"
JSON_EXT = "json"

REQUIRED_TENSORS = ("video_latents", "video_context", "audio_context", "context_mask")
OPTIONAL_TENSORS = (
    "audio_latents",
    "reference_video_latents",
    "reference_audio_latents",
    "reference_image_latents",
)
REQUIRED_FIELDS = ("id", "bucket", "fps", "caption")
# Optional record fields: how many leading latent frames of a tensor hold sound (the rest is padding).
SOUND_FRAMES_FIELDS = {"audio_latents": "audio_frames", "reference_audio_latents": "reference_audio_frames"}


class SampleError(ValueError):
    """A cached sample is malformed; the message names the sample and the shard."""


@dataclass
class CachedSample:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0  # pass over the data in which the stream read it (seeds its random draws)

    @property
    def key(self) -> str:
        return str(self.meta["id"])

    @property
    def bucket(self) -> str:
        return str(self.meta["bucket"])


def validate_sample(sample: CachedSample, where: str = "") -> None:
    at = f" ({where})" if where else ""
    missing_fields = [f for f in REQUIRED_FIELDS if f not in sample.meta]
    if missing_fields:
        raise SampleError(f"sample {sample.meta.get('id', '?')}{at} lacks fields {missing_fields}")
    missing = [k for k in REQUIRED_TENSORS if k not in sample.tensors]
    if missing:
        raise SampleError(f"sample {sample.key}{at} lacks tensors {missing}")
    unknown = set(sample.tensors) - set(REQUIRED_TENSORS) - set(OPTIONAL_TENSORS)
    if unknown:
        raise SampleError(f"sample {sample.key}{at} has unknown tensors {sorted(unknown)}")
    v = sample.tensors["video_latents"]
    if v.ndim != 4:
        raise SampleError(
            f"sample {sample.key}{at}: video_latents must be (C, F, H, W), got {tuple(v.shape)}"
        )
    a = sample.tensors.get("audio_latents")
    if a is not None and a.ndim != 3:
        raise SampleError(f"sample {sample.key}{at}: audio_latents must be (C, T, M), got {tuple(a.shape)}")
    for name, field_name in SOUND_FRAMES_FIELDS.items():
        if field_name in sample.meta:
            t = sample.tensors.get(name)
            n = sample.meta[field_name]
            if t is None or not isinstance(n, int) or not 1 <= n <= t.shape[1]:
                have = "no tensor" if t is None else f"{t.shape[1]} frames"
                raise SampleError(f"sample {sample.key}{at}: {field_name}={n!r} does not fit {name} ({have})")
    s = sample.tensors["context_mask"].shape[0]
    for name in ("video_context", "audio_context"):
        if sample.tensors[name].ndim != 2 or sample.tensors[name].shape[0] != s:
            raise SampleError(
                f"sample {sample.key}{at}: {name} must be (S={s}, D), got {tuple(sample.tensors[name].shape)}"
            )


def encode_sample(sample: CachedSample) -> dict[str, Any]:
    """webdataset record: {"__key__", "safetensors": bytes, "json": bytes}."""
    validate_sample(sample)
    tensors = {k: v.detach().contiguous() for k, v in sample.tensors.items()}
    return {
        "__key__": sample.key,
        TENSOR_EXT: safetensors_save(tensors),
        JSON_EXT: json.dumps(sample.meta, ensure_ascii=False).encode("utf-8"),
    }


# safetensors dtype names -> torch dtypes, the ones a cached sample can hold (no 8-bit floats).
_SAMPLE_DTYPES = {name: dtype for name, dtype in SAFETENSORS_DTYPES.items() if not name.startswith("F8")}


def payload_buffer(payload: bytes | bytearray | memoryview | torch.Tensor) -> torch.Tensor:
    """A writable 1-D uint8 tensor over a safetensors payload (copied once if `payload` is read-only)."""
    if isinstance(payload, torch.Tensor):
        return payload.view(torch.uint8).reshape(-1)
    if isinstance(payload, bytes) or (isinstance(payload, memoryview) and payload.readonly):
        payload = bytearray(payload)  # torch.frombuffer on read-only memory warns and must not be written
    return torch.frombuffer(payload, dtype=torch.uint8) if len(payload) else torch.empty(0, dtype=torch.uint8)


def load_safetensors_views(buf_N: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parse a safetensors payload held in a uint8 tensor; each tensor is a view into `buf_N`.

    Why not safetensors' own loader from bytes (`safetensors.torch`'s `load`): it copies every tensor into
    a Python bytes object, and the streaming path then needs one more copy (those tensors are read-only);
    here the shard reader's one read into `buf_N` is the only copy before batching. The format: 8-byte
    little-endian header size, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}} (offsets
    into the data section that follows), then the data. Raises ValueError on anything inconsistent.
    """
    if buf_N.numel() < 8:
        raise ValueError(f"payload of {buf_N.numel()} bytes is shorter than a safetensors header")
    raw = buf_N.numpy().data
    (header_len,) = struct.unpack_from("<Q", raw, 0)
    base = 8 + header_len
    if base > buf_N.numel():
        raise ValueError(f"header size {header_len} runs past the payload ({buf_N.numel()} bytes)")
    header = json.loads(bytes(raw[8:base]))
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    out: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAMPLE_DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise ValueError(f"tensor {name}: unsupported dtype {entry.get('dtype')!r}")
        shape = [int(d) for d in entry["shape"]]
        begin, end = (int(o) for o in entry["data_offsets"])
        itemsize = dtype.itemsize
        if min(shape, default=0) < 0 or not 0 <= begin <= end or end - begin != math.prod(shape) * itemsize:
            raise ValueError(f"tensor {name}: {entry['dtype']} {shape} does not fit offsets {begin}..{end}")
        if base + end > buf_N.numel():
            raise ValueError(f"tensor {name}: data runs past the payload ({buf_N.numel()} bytes)")
        bytes_N = buf_N[base + begin : base + end]
        if (base + begin) % itemsize:
            bytes_N = bytes_N.clone()  # misaligned for its dtype (not written so by safetensors): copy
        out[name] = bytes_N.view(dtype).view(shape)
    return out


def decode_sample(record: dict[str, Any], where: str = "") -> CachedSample:
    """CachedSample from a webdataset record; its tensors view the record's safetensors payload."""
    key = record.get("__key__", "?")
    at = f" in {where}" if where else ""
    if TENSOR_EXT not in record or JSON_EXT not in record:
        raise SampleError(f"record {key}{at} lacks its .{TENSOR_EXT} or .{JSON_EXT} member")
    try:
        tensors = load_safetensors_views(payload_buffer(record[TENSOR_EXT]))
        meta = json.loads(record[JSON_EXT])
    except Exception as exc:
        raise SampleError(f"record {key}{at} is corrupt: {exc}") from exc
    sample = CachedSample(tensors=tensors, meta=meta)
    validate_sample(sample, where)
    return sample
