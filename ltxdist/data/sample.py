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
JSON record: id, bucket ("WxHxF"), fps, caption, source, and optional reference_downscale_factor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

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


def decode_sample(record: dict[str, Any], where: str = "") -> CachedSample:
    key = record.get("__key__", "?")
    at = f" in {where}" if where else ""
    if TENSOR_EXT not in record or JSON_EXT not in record:
        raise SampleError(f"record {key}{at} lacks its .{TENSOR_EXT} or .{JSON_EXT} member")
    try:
        # clone: tensors that still view the record's bytes make the later torch.stack ~100x slower
        tensors = {k: v.clone() for k, v in safetensors_load(record[TENSOR_EXT]).items()}
        meta = json.loads(record[JSON_EXT])
    except Exception as exc:
        raise SampleError(f"record {key}{at} is corrupt: {exc}") from exc
    sample = CachedSample(tensors=tensors, meta=meta)
    validate_sample(sample, where)
    return sample
