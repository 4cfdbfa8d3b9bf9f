"""Stack cached samples of one bucket into a batch; pad variable-length time axes and keep lengths."""

from __future__ import annotations

from typing import Any

import torch

from ltxdist.data.sample import CachedSample

# Tensors whose time axis (dim 1) may differ between samples of one bucket: padded, with lengths kept.
_VARIABLE_TIME = ("audio_latents", "reference_audio_latents", "reference_video_latents")


def batch_signature(sample: CachedSample) -> tuple[str, tuple[str, ...]]:
    """Samples may share a batch only if they share a bucket and the same set of tensors."""
    return sample.bucket, tuple(sorted(sample.tensors))


def collate_samples(samples: list[CachedSample]) -> dict[str, Any]:
    if not samples:
        raise ValueError("cannot collate an empty batch")
    sig = batch_signature(samples[0])
    for s in samples[1:]:
        if batch_signature(s) != sig:
            raise ValueError(f"samples {samples[0].key} and {s.key} differ in bucket or tensors")
    batch: dict[str, Any] = {}
    for name in samples[0].tensors:
        items = [s.tensors[name] for s in samples]
        if name in _VARIABLE_TIME:
            lengths = torch.tensor([t.shape[1] for t in items], dtype=torch.long)
            longest = int(lengths.max())
            padded = [torch.nn.functional.pad(t, _time_pad(t, longest)) for t in items]
            batch[name] = torch.stack(padded)
            batch[name.replace("_latents", "_lengths")] = lengths
            # Decided on the CPU: strategies add padding masks only when needed, without a device sync.
            batch[name.replace("_latents", "_padded")] = bool((lengths < longest).any())
        else:
            shapes = {tuple(t.shape) for t in items}
            if len(shapes) != 1:
                raise ValueError(f"bucket {sig[0]}: {name} shapes differ across samples: {sorted(shapes)}")
            batch[name] = torch.stack(items)
    # Decided here on the CPU so the training step needs no device sync to skip an all-ones text mask.
    batch["context_mask_all_ones"] = bool(batch["context_mask"].bool().all())
    batch["fps"] = torch.tensor([float(s.meta["fps"]) for s in samples], dtype=torch.float32)
    batch["ids"] = [s.key for s in samples]
    batch["epochs"] = [s.epoch for s in samples]
    batch["captions"] = [s.meta.get("caption", "") for s in samples]
    batch["meta"] = [s.meta for s in samples]
    return batch


def _time_pad(t: torch.Tensor, longest: int) -> tuple[int, ...]:
    # F.pad pads from the last dim backwards; the time axis is dim 1 of a (C, T, ...) tensor.
    trailing = t.ndim - 2
    return (0, 0) * trailing + (0, longest - t.shape[1])
