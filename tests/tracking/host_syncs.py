"""Counting the device->host syncs of a training step on a CPU-only machine.

On a GPU, `torch.cuda.set_sync_debug_mode("warn")` flags every operation that makes the host wait for
the device: reading a value (`.item()`, `.tolist()`, `float(t)`, `bool(t)`, `.cpu()`, `.numpy()`) and
ops whose output shape depends on device values (`nonzero`, boolean-mask indexing, `masked_select`,
`unique`, one-argument `where`, `equal`). On a CPU every tensor is a host tensor, so the same calls can
only be judged by where the tensor WOULD live on a GPU. `HostSyncCounter` tracks that: a tensor is
"on the device" when it is a model parameter, buffer or gradient, a batch tensor after the transfer, a
tensor made by a factory or `.to()` aimed at the training device, or the result of any torch call that
takes a device tensor. Reads of host tensors (per-sample generator draws on the CPU, torch AdamW's CPU
step counters) are not syncs on a GPU either, and are not counted.

Placement on a CPU run: a `torch.device` (what `module.device` / `strategy.root_device` give) or a
"cuda" string aims at the training device; the literal string "cpu" is an explicit host placement (torch's
AdamW keeps its step counters there; `.to("cpu")` of a device tensor is a device->host copy: a sync).

Not counted (torch's sync debug mode would flag them too): blocking host->device copies (`.to(device)`
of host memory), which synchronise the stream in torch; they happen before the step's kernels are queued.
"""

from __future__ import annotations

import collections
import traceback
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.overrides import TorchFunctionMode

_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
}
_DATA_DEPENDENT = {
    torch.nonzero,
    torch.Tensor.nonzero,
    torch.masked_select,
    torch.Tensor.masked_select,
    torch.unique,
    torch.Tensor.unique,
    torch.equal,
    torch.Tensor.equal,
    torch.allclose,
    torch.Tensor.allclose,
    torch.is_nonzero,
}
_FACTORIES = {
    torch.tensor,
    torch.as_tensor,
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.arange,
    torch.rand,
    torch.randn,
    torch.zeros_like,
    torch.ones_like,
    torch.empty_like,
    torch.full_like,
}


def _placement(func: Any, args: tuple, kwargs: dict) -> str | None:
    """Where a factory or `.to()` / `.cuda()` call puts its result: "device", "host" or None."""
    if func is torch.Tensor.cuda:
        return "device"
    if func is torch.Tensor.to:
        targets = [kwargs.get("device"), *args[1:2]]
    elif func in _FACTORIES:
        targets = [kwargs.get("device")]
    else:
        return None
    for target in targets:
        if isinstance(target, torch.device) or (isinstance(target, str) and target != "cpu"):
            return "device"
        if target == "cpu":
            return "host"
    return None


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class HostSyncCounter(TorchFunctionMode):
    """A TorchFunctionMode that counts device->host syncs (see the module doc). `device_tensors` seeds
    what lives on the device; `syncs` lists (call, where) per sync, `where` = the innermost frames of
    the calling code outside torch."""

    def __init__(self, device_tensors: Iterable[torch.Tensor] = ()):
        super().__init__()
        self._device: dict[int, weakref.ref[torch.Tensor]] = {}  # by identity (tensors compare by value)
        self.syncs: list[tuple[str, str]] = []
        self.mark(device_tensors)

    def mark(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in _tensors(list(tensors)):
            key = id(t)
            self._device[key] = weakref.ref(t, lambda _, key=key: self._device.pop(key, None))

    def on_device(self, t: torch.Tensor) -> bool:
        ref = self._device.get(id(t))
        return ref is not None and ref() is t

    def _record(self, name: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "/torch/" not in f.filename]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[-3:][::-1])
        self.syncs.append((name, where))

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        inputs = list(_tensors(list(args))) + list(_tensors(kwargs))
        from_device = any(self.on_device(t) for t in inputs)
        if from_device and (func in _READS or func in _DATA_DEPENDENT):
            self._record(getattr(func, "__name__", str(func)))
        if from_device and func is torch.where and len(args) + len(kwargs) == 1:
            self._record("where(condition)")
        if (
            from_device
            and func is torch.Tensor.__getitem__
            and any(t.dtype == torch.bool for t in _tensors(args[1:]))
        ):
            self._record("boolean-mask indexing")
        placement = _placement(func, args, kwargs)
        if from_device and placement == "host" and func is torch.Tensor.to:
            self._record("to('cpu')")
        out = func(*args, **kwargs)
        if func in _READS or placement == "host":
            if isinstance(out, torch.Tensor) and any(out is t for t in inputs):
                out = out.view_as(out)  # `.cpu()` of a CPU tensor is itself; on a GPU, a new host tensor
            return out  # host values
        if placement == "device" and isinstance(out, torch.Tensor) and any(out is t for t in inputs):
            # On a CPU run `.to(device)` hands back the host tensor itself; on a GPU the program gets a
            # new device tensor and the host one stays on the host: keep the two apart.
            out = out.view_as(out)
        if from_device or placement == "device":
            self.mark(_tensors(out))
        return out


class StepWindows:
    """Counts the syncs of each optimizer step, from its first micro-batch's `on_train_batch_start` to
    the end of its last micro-batch's callbacks (data loading between steps stays outside). Put `first`
    first in the callback list and `last` last; `per_step[n]` lists the syncs of optimizer step n."""

    def __init__(self) -> None:
        self.per_step: dict[int, list[tuple[str, str]]] = collections.defaultdict(list)
        self.counter: HostSyncCounter | None = None
        self.first, self.last = _Open(self), _Close(self)


class _Open(pl.Callback):
    def __init__(self, windows: StepWindows):
        self.w = windows

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.w.counter is None:
            self.w.counter = HostSyncCounter([*pl_module.parameters(), *pl_module.buffers()])
            self.w.counter.__enter__()
        self.w.counter.mark(_tensors(batch))  # the batch as Lightning transferred it to the device


class _Close(pl.Callback):
    def __init__(self, windows: StepWindows):
        self.w = windows
        self._step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        counter = self.w.counter
        if counter is None or trainer.global_step == self._step:
            return  # inside gradient accumulation: the optimizer step's window stays open
        counter.__exit__(None, None, None)
        self.w.per_step[trainer.global_step] = counter.syncs
        self.w.counter = None
        self._step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.w.counter is not None:  # a window left open (the run stopped mid-accumulation)
            self.w.counter.__exit__(None, None, None)
            self.w.counter = None
