"""Training metrics: one pipeline, one record per optimizer step, the same values in metrics.jsonl and
W&B, under namespaced keys (docs/sampling.md lists them). All ranks combined unless noted:

- `loss/total`, `loss/video`, `loss/audio`: mean over the step's micro-batches and ranks;
- `loss/{video,audio}/sigma_{lo}-{hi}`: mean per-sample loss of the samples whose sigma fell in the
  bucket (buckets without samples this step are left out);
- `optim/lr` (the rate the step trained at), `optim/grad_norm` (of the adapters' gradients before
  clipping; absent under DeepSpeed, whose gradients live in its partitions);
- `train/nonfinite_skipped`, `train/step_skipped`: optimizer steps skipped for a NaN/Inf loss or gradients
  (training/nonfinite.py), in the run so far and in this step;
- `throughput/tokens_per_s`, `throughput/samples_per_s` and their `_per_gpu` twins: every token the
  transformer processed (targets and references, video and audio) over the step's wall time;
- `perf/step_time_s`, `perf/data_wait_s` (mean over ranks: time waiting for the next batch),
  `perf/data_wait_frac`;
- `perf/model_tflops_per_gpu`, `perf/mfu`, `perf/hfu` (FLOP count: tracking/flops.py; MFU/HFU only
  when the device's peak is known, or set with LTXDIST_PEAK_TFLOPS);
- `memory/peak_allocated_gib`, `memory/peak_reserved_gib` (CUDA, rank 0, peak over the step) and
  `memory/host_peak_rss_gib` (rank 0's process, peak since start).

One host sync per optimizer step: everything the host needs from the device in a step -- the loss sums,
the counters, the gradient norm that decides whether the step is skipped, and the stop signals of every
rank (training/callbacks.py) -- is packed into one tensor, summed over ranks in one all-reduce, and read
with one `.tolist()` (`read_step`, called by the LightningModule before the optimizer step, where the
non-finite decision needs it). Nothing else in the step reads device values.

Timing: a step runs from the end of the previous step's callbacks (`StepBoundary`, last in the list)
to this callback's `on_train_batch_end` (first in the list), so checkpointing and validation sampling
never count as training time.
"""

from __future__ import annotations

import itertools
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch

from ltxdist.tracking.flops import (
    FlopModel,
    StepFlops,
    peak_flops_per_device,
    recompute_shares,
    tokens_of_forward,
)

PEAK_TFLOPS_ENV = "LTXDIST_PEAK_TFLOPS"
_GIB = 2**30


def utilization(
    flops_per_step: float, step_time_s: float, peak_flops_per_device: float, devices: int
) -> float:
    """MFU (model FLOPs) or HFU (hardware FLOPs): achieved FLOP/s over the peak of all devices."""
    return flops_per_step / step_time_s / (peak_flops_per_device * devices)


def host_peak_rss_gib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (_GIB if sys.platform == "darwin" else _GIB / 1024)  # bytes on macOS, KiB on Linux


LOSS_KEYS = ("loss/total", "loss/video", "loss/audio")
HOST_SLOTS = ("micro_batches", "tokens", "samples", "data_wait_s", "model_flops", "hardware_flops")


def loss_slots(buckets: tuple[str, ...]) -> list[str]:
    """The loss keys reduced as `<key>|sum` / `<key>|n`: the step's losses, then the sigma buckets."""
    return [*LOSS_KEYS, *(f"loss/{s}/sigma_{b}" for s in ("video", "audio") for b in buckets)]


@dataclass
class _StepSums:
    """Sums over the micro-batches of one optimizer step on one rank (packed for one all-reduce)."""

    device_terms: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # slot -> terms on device
    host: dict[str, float] = field(default_factory=lambda: dict.fromkeys(HOST_SLOTS, 0.0))
    flops: StepFlops = field(default_factory=lambda: StepFlops(0.0, 0.0, 0.0))

    def _add_device(self, slot: str, value: torch.Tensor) -> None:
        self.device_terms.setdefault(slot, []).append(value.detach().double().reshape(()))

    def _add_host(self, slot: str, value: float) -> None:
        self.host[slot] = self.host.get(slot, 0.0) + value

    def add(self, parts: dict[str, Any], samples: int) -> None:
        self.host["micro_batches"] += 1
        # A sequence-parallel group shares its samples: each rank counts its share (module.compute_loss).
        self.host["samples"] += samples * float(parts.get("sample_share", 1.0))
        self.host["tokens"] += float(parts.get("tokens", 0))
        for key in LOSS_KEYS:
            if key in parts:
                self._add_device(f"{key}|sum", parts[key])
                self._add_host(f"{key}|n", 1.0)
        for stream in ("video", "audio"):
            for bucket, (total, count) in parts.get(f"sigma_buckets/{stream}", {}).items():
                self._add_device(f"loss/{stream}/sigma_{bucket}|sum", total)
                self._add_device(f"loss/{stream}/sigma_{bucket}|n", count)

    def host_values(self, host_slots: list[str]) -> list[float]:
        host = {**self.host, "model_flops": self.flops.model, "hardware_flops": self.flops.hardware}
        return [float(host.get(slot, 0.0)) for slot in host_slots]

    def pack(self, device_slots: list[str], host_values: list[float], device: torch.device) -> torch.Tensor:
        """One float64 vector on `device`: the device slots, then the host numbers (one host->device
        copy for all of them)."""
        zero = torch.zeros((), dtype=torch.float64, device=device)
        summed = []
        for slot in device_slots:
            terms = self.device_terms.get(slot)
            summed.append(torch.stack([t.to(device) for t in terms]).sum() if terms else zero)
        host = torch.tensor(host_values, dtype=torch.float64)
        return torch.cat([torch.stack(summed), host.to(device)])


class TrainingMetrics(pl.Callback):
    """Collects the step's metrics on every rank, reads them in the step's one host sync (`read_step`)
    and records them; `MetricsJsonl` writes `latest`.

    Must be the FIRST callback (its `on_train_batch_end` closes the step's timer), with its
    `StepBoundary` the LAST one.

    `activation_checkpointing`: None (the training entry point) reads what each forward recomputes from
    the model itself (flops.recompute_shares: the parallel.activation_checkpointing plan as applied,
    per block and, for `budget`, per step); True / False: every block or none (tests, tools).
    """

    def __init__(
        self,
        *,
        bucket_edges: tuple[float, ...],
        activation_checkpointing: bool | None = None,
        peak_tflops: float | None = None,
    ):
        self.buckets = tuple(f"{lo:.1f}-{hi:.1f}" for lo, hi in itertools.pairwise(bucket_edges))
        self.activation_checkpointing = activation_checkpointing
        env = os.environ.get(PEAK_TFLOPS_ENV)
        self.peak_tflops = peak_tflops if peak_tflops is not None else (float(env) if env else None)
        self.latest: dict[str, float] = {}
        self.latest_step = -1
        self._device_slots = [f"{k}|sum" for k in loss_slots(self.buckets)] + [
            f"loss/{s}/sigma_{b}|n" for s in ("video", "audio") for b in self.buckets
        ]
        self._host_slots = [*HOST_SLOTS, *(f"{k}|n" for k in LOSS_KEYS)]
        self._counters: dict[str, Callable[[], float]] = {}
        self._sums = _StepSums()
        self._step_values: dict[str, float] = {}  # the newest read ...
        self._values_step = -1  # ... and the optimizer step (1-based) it belongs to
        self._samples = 0
        self._flop_model: FlopModel | None = None
        self._peak: float | None = None
        self._hook: Any = None
        self._counting = False
        self._mark = 0.0  # end of the previous step's callbacks
        self._step_start: float | None = None
        self._step_lr: float | None = None  # the learning rate the current optimizer step runs at
        self._last_step = 0
        self.boundary = StepBoundary(self)

    def add_step_counter(self, name: str, read: Callable[[], float]) -> None:
        """A host number summed over ranks in every step's read (`values_of_step(step)[name]`): lets another
        callback piggyback on the step's one sync instead of adding its own. Every rank must register
        the same names."""
        self._counters[name] = read

    def values_of_step(self, step: int) -> dict[str, float]:
        """What optimizer step `step` (1-based, = trainer.global_step once it is taken) read; empty if it
        has not been read."""
        return self._step_values if self._values_step == step else {}

    # -- lifecycle ----------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        transformer = pl_module.transformer
        self._flop_model = FlopModel.from_model(transformer)
        self._peak = peak_flops_per_device(pl_module.device, self.peak_tflops)
        self._hook = transformer.register_forward_pre_hook(self._count_forward, with_kwargs=True)
        self._last_step = trainer.global_step
        self._mark = time.perf_counter()
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _count_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        # Only forwards of training steps count (validation sampling runs outside the window).
        if not self._counting or self._flop_model is None:
            return
        video = args[0] if len(args) > 0 else kwargs.get("video")
        audio = args[1] if len(args) > 1 else kwargs.get("audio")
        batch, tokens = tokens_of_forward(video, audio)
        sp = int(getattr(module, "ltxdist_sequence_parallel_size", 1))
        if sp > 1:
            # Sequence parallel: this rank holds 1/P of each stream's tokens and attends over whole
            # sequences with 1/P of the heads, i.e. it does 1/P of the whole sequence's FLOPs.
            tokens = {role: n * sp if role in ("v", "a") else n for role, n in tokens.items()}
        if self.activation_checkpointing is None:
            shares = recompute_shares(module)  # the model's pre-hooks (a budget plan) ran before this one
        else:
            shares = {"full": 1.0} if self.activation_checkpointing else {}
        step = self._flop_model.step(batch=batch, tokens=tokens, recompute=shares)
        if sp > 1:
            step = StepFlops(step.forward / sp, step.model / sp, step.hardware / sp)
        self._sums.flops = self._sums.flops + step

    # -- per micro-batch ----------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self._sums.host["data_wait_s"] += now - self._mark
        if self._step_start is None:
            self._step_start = self._mark
        self._samples = len(batch["ids"]) if isinstance(batch, dict) and "ids" in batch else 1
        self._counting = True

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        # The rate this step trains at: the scheduler moves it on before the step's batch-end hooks.
        self._step_lr = float(optimizer.param_groups[0]["lr"])

    def on_before_backward(self, trainer: pl.Trainer, pl_module: Any, loss: torch.Tensor) -> None:
        # The micro-batch's forward is done: its losses join the step's sums before the step's read
        # (which comes before the optimizer step, i.e. before the last micro-batch's batch-end hooks).
        self._counting = False
        self._sums.add(getattr(pl_module, "_last_parts", {}), self._samples)

    def read_step(
        self,
        trainer: pl.Trainer,
        pl_module: Any,
        grad_norm: torch.Tensor | None = None,
        step: int | None = None,
    ) -> dict[str, float]:
        """The optimizer step's one device->host read, called by every rank once its gradients are
        reduced (before the optimizer step, so `step` defaults to the step being taken): the step's sums
        and counters summed over ranks (one all-reduce), and `grad_norm` (already the same on every rank)
        as `optim/grad_norm`."""
        host = self._sums.host_values(self._host_slots) + [float(read()) for read in self._counters.values()]
        local = self._sums.pack(self._device_slots, host, pl_module.device)
        total = trainer.strategy.reduce(local, reduce_op="sum")
        names = [*self._device_slots, *self._host_slots, *self._counters]
        if grad_norm is not None:  # identical on every rank: appended after the sum
            total = torch.cat([total.double(), grad_norm.detach().double().reshape(1).to(total.device)])
            names.append("optim/grad_norm")
        self._step_values = dict(zip(names, total.tolist(), strict=True))  # the step's one sync
        self._values_step = trainer.global_step + 1 if step is None else step
        return self._step_values

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._counting = False
        if trainer.global_step == self._last_step:
            return  # accumulating gradients: the optimizer step is not done yet
        step_time = time.perf_counter() - (self._step_start or self._mark)
        step = trainer.global_step
        # A module that does not call read_step itself (no non-finite check) is read here.
        values = self.values_of_step(step) or self.read_step(trainer, pl_module, step=step)
        self.latest = self._record(values, step_time, trainer, pl_module)
        self.latest_step = step
        self._last_step = step
        self._sums = _StepSums()
        self._step_start = None

    def mark_boundary(self) -> None:
        self._mark = time.perf_counter()

    # -- the record ---------------------------------------------------------------------------------
    def _record(
        self, v: dict[str, float], step_time: float, trainer: pl.Trainer, pl_module: Any
    ) -> dict[str, float]:
        world = max(1, trainer.world_size)
        out: dict[str, float] = {}
        for key in loss_slots(self.buckets):
            if v[f"{key}|n"] > 0:
                out[key] = v[f"{key}|sum"] / v[f"{key}|n"]
        if self._step_lr is not None:
            out["optim/lr"] = self._step_lr
        elif trainer.optimizers:  # a strategy that stepped without the hook: the rate now set
            out["optim/lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self._step_lr = None
        if "optim/grad_norm" in v:
            out["optim/grad_norm"] = v["optim/grad_norm"]
        guard = getattr(pl_module, "nonfinite", None)
        if guard is not None:
            out["train/nonfinite_skipped"] = guard.total
            out["train/step_skipped"] = int(guard.last_skipped)
        out["perf/step_time_s"] = step_time
        out["perf/data_wait_s"] = v["data_wait_s"] / world
        out["perf/data_wait_frac"] = out["perf/data_wait_s"] / step_time if step_time > 0 else 0.0
        out["throughput/tokens_per_s"] = v["tokens"] / step_time
        out["throughput/tokens_per_s_per_gpu"] = out["throughput/tokens_per_s"] / world
        out["throughput/samples_per_s"] = v["samples"] / step_time
        out["throughput/samples_per_s_per_gpu"] = out["throughput/samples_per_s"] / world
        out["perf/model_tflops_per_gpu"] = v["model_flops"] / step_time / world / 1e12
        if self._peak:
            out["perf/mfu"] = utilization(v["model_flops"], step_time, self._peak, world)
            out["perf/hfu"] = utilization(v["hardware_flops"], step_time, self._peak, world)
        out.update(memory_metrics(pl_module.device))
        return out


def memory_metrics(device: torch.device) -> dict[str, float]:
    out = {"memory/host_peak_rss_gib": host_peak_rss_gib()}
    if device.type == "cuda":
        out["memory/peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / _GIB
        out["memory/peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / _GIB
        torch.cuda.reset_peak_memory_stats(device)  # the next record shows the next step's peak
    return out


class StepBoundary(pl.Callback):
    """Last callback of the list: marks where the next step's data wait begins."""

    def __init__(self, metrics: TrainingMetrics):
        self.metrics = metrics

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        self.metrics.mark_boundary()

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.metrics.mark_boundary()
