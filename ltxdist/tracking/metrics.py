"""Training metrics: one record per optimizer step, the same values in metrics.jsonl and W&B.

Keys (all ranks combined unless noted):

- `loss/total`, `loss/video`, `loss/audio`: mean over the step's micro-batches and ranks;
- `loss/{video,audio}/sigma_{lo}-{hi}`: mean per-sample loss of the samples whose sigma fell in the
  bucket (buckets without samples this step are left out);
- `lr`, `grad_norm` (before clipping; set by the LightningModule);
- `throughput/tokens_per_s`, `throughput/samples_per_s` and their `_per_gpu` twins: every token the
  transformer processed (targets and references, video and audio) over the step's wall time;
- `perf/step_time_s`, `perf/data_wait_s` (mean over ranks: time waiting for the next batch),
  `perf/data_wait_frac`;
- `perf/model_tflops_per_gpu`, `perf/mfu`, `perf/hfu` (FLOP count: tracking/flops.py; MFU/HFU only
  when the device's peak is known, or set with LTXDIST_PEAK_TFLOPS);
- `memory/peak_allocated_gib`, `memory/peak_reserved_gib` (CUDA, rank 0, peak over the step) and
  `memory/host_peak_rss_gib` (rank 0's process, peak since start).

Timing: a step runs from the end of the previous step's callbacks (`StepBoundary`, last in the list)
to this callback's `on_train_batch_end` (first in the list), so checkpointing and validation sampling
never count as training time. The per-step values are read once per optimizer step, in one all-reduce;
that is the one host-device sync metrics cost (metrics.jsonl needs the numbers every step anyway).
"""

from __future__ import annotations

import itertools
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch

from ltxdist.tracking.flops import FlopModel, StepFlops, peak_flops_per_device, tokens_of_forward

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


def metric_slots(buckets: tuple[str, ...]) -> list[str]:
    """The fixed layout of the all-reduced vector: `<key>|sum` / `<key>|n` per loss, then host counters."""
    keys = [*LOSS_KEYS, *(f"loss/{s}/sigma_{b}" for s in ("video", "audio") for b in buckets)]
    return [f"{k}|{kind}" for k in keys for kind in ("sum", "n")] + list(HOST_SLOTS)


@dataclass
class _StepSums:
    """Sums over the micro-batches of one optimizer step on one rank (packed for one all-reduce)."""

    device_terms: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # slot -> terms on device
    host: dict[str, float] = field(default_factory=lambda: dict.fromkeys(HOST_SLOTS, 0.0))
    flops: StepFlops = field(default_factory=lambda: StepFlops(0.0, 0.0, 0.0))

    def _add(self, slot: str, value: Any) -> None:
        self.device_terms.setdefault(slot, []).append(torch.as_tensor(value).detach().double().reshape(()))

    def add(self, parts: dict[str, Any], samples: int) -> None:
        self.host["micro_batches"] += 1
        # A sequence-parallel group shares its samples: each rank counts its share (module.compute_loss).
        self.host["samples"] += samples * float(parts.get("sample_share", 1.0))
        self.host["tokens"] += float(parts.get("tokens", 0))
        for key in LOSS_KEYS:
            if key in parts:
                self._add(f"{key}|sum", parts[key])
                self._add(f"{key}|n", 1.0)
        for stream in ("video", "audio"):
            for bucket, (total, count) in parts.get(f"sigma_buckets/{stream}", {}).items():
                self._add(f"loss/{stream}/sigma_{bucket}|sum", total)
                self._add(f"loss/{stream}/sigma_{bucket}|n", count)

    def pack(self, slots: list[str], device: torch.device) -> torch.Tensor:
        host = {**self.host, "model_flops": self.flops.model, "hardware_flops": self.flops.hardware}
        values = []
        for slot in slots:
            if slot in host:
                values.append(torch.tensor(float(host[slot]), dtype=torch.float64, device=device))
            else:
                terms = [t.to(device) for t in self.device_terms.get(slot, [])]
                values.append(
                    torch.stack(terms).sum() if terms else torch.zeros((), dtype=torch.float64, device=device)
                )
        return torch.stack(values)


class TrainingMetrics(pl.Callback):
    """Collects the step's metrics on every rank and reduces them; `MetricsJsonl` writes `latest`.

    Must be the FIRST callback (its `on_train_batch_end` closes the step's timer), with its
    `StepBoundary` the LAST one.
    """

    def __init__(
        self,
        *,
        bucket_edges: tuple[float, ...],
        activation_checkpointing: bool,
        peak_tflops: float | None = None,
    ):
        self.buckets = tuple(f"{lo:.1f}-{hi:.1f}" for lo, hi in itertools.pairwise(bucket_edges))
        self.activation_checkpointing = activation_checkpointing
        env = os.environ.get(PEAK_TFLOPS_ENV)
        self.peak_tflops = peak_tflops if peak_tflops is not None else (float(env) if env else None)
        self.latest: dict[str, float] = {}
        self.latest_step = -1
        self._slots = metric_slots(self.buckets)
        self._sums = _StepSums()
        self._flop_model: FlopModel | None = None
        self._peak: float | None = None
        self._hook: Any = None
        self._counting = False
        self._mark = 0.0  # end of the previous step's callbacks
        self._step_start: float | None = None
        self._last_step = 0
        self.boundary = StepBoundary(self)

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
        step = self._flop_model.step(
            batch=batch, tokens=tokens, activation_checkpointing=self.activation_checkpointing
        )
        if sp > 1:
            step = StepFlops(step.forward / sp, step.model / sp, step.hardware / sp)
        self._sums.flops = self._sums.flops + step

    # -- per micro-batch ----------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self._sums.host["data_wait_s"] += now - self._mark
        if self._step_start is None:
            self._step_start = self._mark
        self._counting = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._counting = False
        parts = getattr(pl_module, "_last_parts", {})
        self._sums.add(parts, len(batch["ids"]) if isinstance(batch, dict) and "ids" in batch else 1)
        if trainer.global_step == self._last_step:
            return  # accumulating gradients: the optimizer step is not done yet
        step_time = time.perf_counter() - (self._step_start or self._mark)
        # One all-reduce per optimizer step, called by every rank.
        local = self._sums.pack(self._slots, pl_module.device)
        total = trainer.strategy.reduce(local, reduce_op="sum")
        values = dict(zip(self._slots, total.double().cpu().tolist(), strict=True))
        self.latest = self._record(values, step_time, trainer, pl_module)
        self.latest_step = trainer.global_step
        self._last_step = trainer.global_step
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
        for key in ("loss/total", "loss/video", "loss/audio"):
            if v[f"{key}|n"] > 0:
                out[key] = v[f"{key}|sum"] / v[f"{key}|n"]
        for stream in ("video", "audio"):
            for b in self.buckets:
                key = f"loss/{stream}/sigma_{b}"
                if v[f"{key}|n"] > 0:
                    out[key] = v[f"{key}|sum"] / v[f"{key}|n"]
        if trainer.optimizers:
            out["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        grad_norm = getattr(pl_module, "_last_grad_norm", None)
        if grad_norm is not None:
            out["grad_norm"] = float(grad_norm)
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
