"""Stack cached samples of one bucket into a batch; pad variable-length time axes and keep lengths.

Every tensor of a batch is a view into ONE flat buffer, because handing a batch from a DataLoader worker
to the training process costs per storage, not only per byte: by default each tensor storage moves into
its own shared-memory segment (create, fault in every page, pass a file descriptor, map it again). With
one storage per batch that happens once. A batch under `PIPE_MAX_BYTES` skips shared memory entirely
(`WireBatch`): it is pickled as one bytes payload through the worker's pipe, two plain copies. The stage
table of benchmarks/results/data_*.md measures both hand-offs for a 300 KB sample; in a one-off test on
the same 2-core VM the two were about even at 1 MB and shared memory was as fast or faster at 4 MB, so
larger batches keep the shared-memory path.
"""

from __future__ import annotations

from typing import Any

import torch

from ltxdist.data.sample import SOUND_FRAMES_FIELDS, CachedSample

# Tensors whose time axis (dim 1) may differ between samples of one bucket: padded, with lengths kept.
_VARIABLE_TIME = ("audio_latents", "reference_audio_latents", "reference_video_latents")
_ALIGN = 64  # bytes: every tensor of the packed buffer starts on a cache line (and any dtype's alignment)
PIPE_MAX_BYTES = 512 << 10  # batches up to this size go through the pipe (see the module docstring)


def batch_signature(sample: CachedSample) -> tuple[str, tuple[str, ...]]:
    """Samples may share a batch only if they share a bucket and the same set of tensors."""
    return sample.bucket, tuple(sorted(sample.tensors))


def _batched_shape(name: str, items: list[torch.Tensor], bucket: str) -> tuple[int, ...]:
    if name in _VARIABLE_TIME:
        longest = max(t.shape[1] for t in items)
        return (len(items), items[0].shape[0], longest, *items[0].shape[2:])
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) != 1:
        raise ValueError(f"bucket {bucket}: {name} shapes differ across samples: {sorted(shapes)}")
    return (len(items), *items[0].shape)


def packed_empty(specs: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """Uninitialised tensors of the given shapes and dtypes, all views into one uint8 storage."""
    offsets: dict[str, int] = {}
    total = 0
    for name, (shape, dtype) in specs.items():
        offsets[name] = total
        nbytes = dtype.itemsize * int(torch.Size(shape).numel())
        total += -(-nbytes // _ALIGN) * _ALIGN
    flat_N = torch.empty(total, dtype=torch.uint8)
    out = {}
    for name, (shape, dtype) in specs.items():
        nbytes = dtype.itemsize * int(torch.Size(shape).numel())
        out[name] = flat_N[offsets[name] : offsets[name] + nbytes].view(dtype).view(shape)
    return out


def _real_length(sample: CachedSample, name: str, t: torch.Tensor) -> int:
    """Time steps of `t` that are real: the tensor's length, or less where preparation recorded padding
    of its own (an audio track shorter than its clip). Both kinds of padding are masked alike."""
    field_name = SOUND_FRAMES_FIELDS.get(name)
    recorded = sample.meta.get(field_name) if field_name else None
    return t.shape[1] if recorded is None else min(t.shape[1], int(recorded))


def collate_samples(samples: list[CachedSample]) -> dict[str, Any]:
    if not samples:
        raise ValueError("cannot collate an empty batch")
    sig = batch_signature(samples[0])
    for s in samples[1:]:
        if batch_signature(s) != sig:
            raise ValueError(f"samples {samples[0].key} and {s.key} differ in bucket or tensors")
    columns = {name: [s.tensors[name] for s in samples] for name in samples[0].tensors}
    specs = {name: (_batched_shape(name, items, sig[0]), items[0].dtype) for name, items in columns.items()}
    b = len(samples)
    # The small per-sample tensors ride in the same buffer: each separate storage costs a hand-off.
    specs["fps"] = ((b,), torch.float32)
    variable = [name for name in columns if name in _VARIABLE_TIME]
    for name in variable:
        specs[name.replace("_latents", "_lengths")] = ((b,), torch.long)
    batch: dict[str, Any] = packed_empty(specs)
    for name, items in columns.items():
        out = batch[name]
        if name in variable:
            lengths = [_real_length(s, name, t) for s, t in zip(samples, items, strict=True)]
            padded = min(lengths) < out.shape[2]
            if min(t.shape[1] for t in items) < out.shape[2]:
                out.zero_()  # padding added here is zeros, as F.pad gives
            for i, t in enumerate(items):
                out[i].narrow(1, 0, t.shape[1]).copy_(t)
            batch[name.replace("_latents", "_lengths")].copy_(torch.tensor(lengths, dtype=torch.long))
            # Decided on the CPU: strategies add padding masks only when needed, without a device sync.
            batch[name.replace("_latents", "_padded")] = padded
        else:
            for i, t in enumerate(items):
                out[i].copy_(t)
    batch["fps"].copy_(torch.tensor([float(s.meta["fps"]) for s in samples], dtype=torch.float32))
    # Decided here on the CPU so the training step needs no device sync to skip an all-ones text mask.
    batch["context_mask_all_ones"] = bool(batch["context_mask"].bool().all())
    batch["ids"] = [s.key for s in samples]
    batch["epochs"] = [s.epoch for s in samples]
    batch["captions"] = [s.meta.get("caption", "") for s in samples]
    batch["meta"] = [s.meta for s in samples]
    return batch


def packed_storage(batch: dict[str, Any]) -> torch.UntypedStorage | None:
    """The one storage all tensors of a batch view (None if they do not share one)."""
    tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
    if not tensors:
        return None
    storage = tensors[0].untyped_storage()
    if any(t.untyped_storage().data_ptr() != storage.data_ptr() for t in tensors[1:]):
        return None
    return storage


def _unpack_batch(raw: bytes, layout: dict[str, tuple[int, str, tuple[int, ...]]], rest: dict) -> dict:
    """Inverse of WireBatch.__reduce__, run by the unpickler in the receiving process."""
    flat_N = torch.frombuffer(bytearray(raw), dtype=torch.uint8)  # one writable copy of the payload
    batch: dict[str, Any] = {}
    for name, (offset, dtype_name, shape) in layout.items():
        dtype = getattr(torch, dtype_name)
        nbytes = dtype.itemsize * int(torch.Size(shape).numel())
        batch[name] = flat_N[offset : offset + nbytes].view(dtype).view(shape)
    batch.update(rest)
    return batch


class WireBatch:
    """A collated batch on its way out of a DataLoader worker; unpickles as the plain batch dict.

    The DataLoader pickles what a worker yields into the worker's result queue; this object's pickled
    form is the packed buffer as bytes plus each tensor's (byte offset, dtype, shape), when the batch is
    small enough (see the module docstring); otherwise it pickles as the dict itself.
    """

    def __init__(self, batch: dict[str, Any]):
        self.batch = batch

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        storage = packed_storage(self.batch)
        if storage is None or storage.nbytes() > PIPE_MAX_BYTES:
            return dict, (self.batch,)
        layout = {}
        rest = {}
        for name, value in self.batch.items():
            if isinstance(value, torch.Tensor):
                offset = value.storage_offset() * value.element_size()
                layout[name] = (offset, str(value.dtype).removeprefix("torch."), tuple(value.shape))
            else:
                rest[name] = value
        flat_N = torch.empty(0, dtype=torch.uint8).set_(storage)
        return _unpack_batch, (flat_N.numpy().tobytes(), layout, rest)
