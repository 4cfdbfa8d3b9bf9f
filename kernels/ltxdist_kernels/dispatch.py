"""`model.kernels=auto`: per call shape, the path measured fastest; the safe path everywhere else.

Two ops have more than one implementation:
  lora_linear    "addmm"  LoRALinear's own forward: library GEMMs, adapter accumulated into the frozen GEMM
                 "triton" the fused Triton kernel (fused_lora_linear)
  qk_norm_rope   "torch"  ltx-core's RMSNorm + apply_rotary_emb     (op "qk_norm" when there is no RoPE)
                 "triton" the fused Triton kernel (qk_norm_rope)
The SAFE path of each op ("addmm", "torch") is what `model.kernels=torch` runs. `auto` leaves it only
where a measurement ON THE SAME GPU KIND, at the same widths / rank / dtype and a token count within
TOKEN_TOLERANCE, timed both paths and found another one faster by at least MARGIN. With no such
measurement (a CPU, an unlisted GPU, a shape nobody timed) `auto` IS `torch`: kernels-on cannot lose to
kernels-off on any shape by construction, only win where a benchmark showed it.

Measurements come from the table shipped per GPU kind (`measured.py`, copied from committed results
files) and, with `model.kernels_calibrate=true` on CUDA, from a short timing of the candidate paths the
first time a shape is seen (`Calibrator`). Decisions are cached per shape, so a checkpointed block's
recompute always takes the path its forward took.
"""

from __future__ import annotations

import functools
import math
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

PATHS: dict[str, tuple[str, ...]] = {
    "lora_linear": ("addmm", "triton"),
    "qk_norm_rope": ("torch", "triton"),
    "qk_norm": ("torch", "triton"),
}
SAFE: dict[str, str] = {"lora_linear": "addmm", "qk_norm_rope": "torch", "qk_norm": "torch"}
MARGIN = 0.03  # another path must beat the safe one by 3% (run-to-run noise of do_bench medians is ~1%)
TOKEN_TOLERANCE = 0.25  # a measurement at T covers T / 1.25 .. T * 1.25 tokens


@dataclass(frozen=True)
class CallShape:
    """One call of a dispatchable op. tokens: rows (batch x tokens); rank 0 / heads 0 when not relevant."""

    op: str
    tokens: int
    width_in: int
    width_out: int
    rank: int = 0
    heads: int = 0
    dtype: str = "bfloat16"

    def same_kind(self, other: CallShape) -> bool:
        """Everything but the token count equal."""
        return (self.op, self.width_in, self.width_out, self.rank, self.heads, self.dtype) == (
            other.op, other.width_in, other.width_out, other.rank, other.heads, other.dtype,
        )  # fmt: skip

    def near(self, other: CallShape) -> bool:
        if not self.same_kind(other):
            return False
        if min(self.tokens, other.tokens) <= 0:  # an empty call is near nothing (no ratio to take)
            return self.tokens == other.tokens
        return abs(math.log(self.tokens / other.tokens)) <= math.log1p(TOKEN_TOLERANCE)


@dataclass(frozen=True)
class Measurement:
    shape: CallShape
    ms: Mapping[str, float]  # path -> median forward + backward milliseconds
    source: str = ""

    def fastest(self) -> str:
        return min(self.ms, key=self.ms.__getitem__)


def _winner(measurement: Measurement) -> str:
    """The path this measurement supports: the fastest if it beats the safe path by MARGIN, else safe."""
    safe = SAFE[measurement.shape.op]
    best = measurement.fastest()
    if safe not in measurement.ms:  # the safe path was not timed: nothing is known against it
        return safe
    if best != safe and measurement.ms[best] <= measurement.ms[safe] * (1.0 - MARGIN):
        return best
    return safe


@dataclass
class DispatchTable:
    measurements: list[Measurement] = field(default_factory=list)
    _decisions: dict[CallShape, str] = field(default_factory=dict)

    def add(self, measurement: Measurement) -> None:
        if measurement.shape.op not in PATHS:
            raise ValueError(f"unknown op {measurement.shape.op!r}; dispatchable: {sorted(PATHS)}")
        self.measurements.append(measurement)
        self._decisions = {s: p for s, p in self._decisions.items() if not s.near(measurement.shape)}

    def covers(self, shape: CallShape) -> bool:
        return any(m.shape.near(shape) for m in self.measurements)

    def choose(self, shape: CallShape) -> str:
        """The path for `shape`: another path only if every measurement near it agrees it is faster."""
        cached = self._decisions.get(shape)
        if cached is not None:
            return cached
        winners = {_winner(m) for m in self.measurements if m.shape.near(shape)}
        choice = winners.pop() if len(winners) == 1 else SAFE[shape.op]
        self._decisions[shape] = choice
        return choice

    def decisions(self) -> dict[CallShape, str]:
        """Every shape decided so far and its path (benchmarks report it)."""
        return dict(self._decisions)


@functools.cache  # asked on every dispatched call (thousands per step); a device's kind never changes
def gpu_kind(device: torch.device) -> str | None:
    """'h200', 'h100', 'a100', ... for a CUDA device; None on anything else."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return gpu_kind_of_name(torch.cuda.get_device_name(device))


def gpu_kind_of_name(name: str) -> str | None:
    match = re.search(r"\b([A-Z]{1,2}\d{2,3}[A-Z]?)\b", name.upper())
    return match.group(1).lower() if match else None


def shipped_table(kind: str | None) -> DispatchTable:
    """The committed measurements of this GPU kind (empty for CPUs and unmeasured GPUs)."""
    from ltxdist_kernels.measured import MEASURED

    table = DispatchTable()
    for entry in MEASURED.get(kind or "", []):
        table.add(measurement_from_dict(entry))
    return table


def measurement_from_dict(entry: Mapping[str, Any]) -> Measurement:
    fields = {k: entry[k] for k in ("op", "tokens", "width_in", "width_out") if k in entry}
    fields.update({k: entry[k] for k in ("rank", "heads", "dtype") if k in entry})
    return Measurement(CallShape(**fields), dict(entry["ms"]), str(entry.get("source", "")))


def measurement_to_dict(m: Measurement) -> dict[str, Any]:
    """The form `measured.py` holds and the kernel benchmark writes."""
    entry: dict[str, Any] = dict(vars(m.shape))
    entry["ms"] = {k: round(v, 4) for k, v in m.ms.items()}
    entry["source"] = m.source
    return entry


# -- calibration ----------------------------------------------------------------------------------
Runner = Callable[[], None]  # one forward + backward of a path on prepared tensors


@dataclass
class Calibrator:
    """Times every path of an unmeasured shape on random tensors (forward + backward), once per shape.

    Runs outside the caller's autograd bookkeeping (its own saved-tensor hooks, so an enclosing
    activation-checkpointing region is untouched) and restores the RNG state (LoRA dropout draws from
    it). `timer(runner, warmup, reps)` returns median ms; the default uses CUDA events on CUDA.
    """

    warmup: int = 3
    reps: int = 10
    timer: Callable[[Runner, torch.device, int, int], float] | None = None

    def measure(self, shape: CallShape, device: torch.device) -> Measurement:
        timer = self.timer or _median_ms
        ms = {}
        rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        own_hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
        with rng, own_hooks, torch.enable_grad():
            for path in PATHS[shape.op]:
                ms[path] = timer(make_runner(shape, path, device), device, self.warmup, self.reps)
        return Measurement(shape, ms, source="calibration")


def _median_ms(runner: Runner, device: torch.device, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        runner()
    samples = []
    for _ in range(max(1, reps)):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            runner()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            runner()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def make_runner(shape: CallShape, path: str, device: torch.device) -> Runner:
    """Forward + backward of `path` at `shape` on random inputs (weights frozen, adapters fp32)."""
    dtype = getattr(torch, shape.dtype)
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*size: int, dt: torch.dtype = dtype, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*size, device=device, dtype=dt, generator=gen) * scale

    if shape.op == "lora_linear":
        from ltxdist.lora.linear_ops import lora_linear
        from ltxdist_kernels.fused_lora_linear import fused_lora_linear

        M, K, N, R = shape.tokens, shape.width_in, shape.width_out, shape.rank
        x = randn(M, K).requires_grad_()
        W, b = randn(N, K, scale=K**-0.5), randn(N, scale=0.02)
        A = randn(R, K, dt=torch.float32, scale=K**-0.5).requires_grad_()
        B = randn(N, R, dt=torch.float32, scale=0.02).requires_grad_()
        dy = randn(M, N)
        fn = lora_linear if path == "addmm" else fused_lora_linear
        leaves = (x, A, B)

        def run() -> None:
            torch.autograd.grad(fn(x, W, b, A, B, 1.0), leaves, dy)

        return run
    if shape.op in ("qk_norm_rope", "qk_norm"):
        from ltx_core.model.transformer.rope import LTXRopeType, apply_rotary_emb

        from ltxdist_kernels.qk_norm_rope import qk_norm_rope

        C, H = shape.width_in, shape.heads
        x = randn(1, shape.tokens, C).requires_grad_()
        norm_weight = 1 + randn(C, scale=0.1)
        tables = None
        if shape.op == "qk_norm_rope":
            angle = randn(1, H, shape.tokens, C // H // 2, dt=torch.float32)
            tables = (angle.cos().to(dtype), angle.sin().to(dtype))
        dy = torch.randn_like(x)

        def run() -> None:
            if path == "triton":
                cos, sin = tables if tables is not None else (None, None)
                out = qk_norm_rope(x, norm_weight, 1e-6, cos, sin)
            else:
                out = torch.nn.functional.rms_norm(x, (C,), norm_weight, 1e-6)
                if tables is not None:
                    out = apply_rotary_emb(out, tables, LTXRopeType.SPLIT)
            torch.autograd.grad(out, (x,), dy)

        return run
    raise ValueError(f"unknown op {shape.op!r}")


# -- the process-wide dispatcher ------------------------------------------------------------------
@dataclass
class Dispatcher:
    """Tables per GPU kind (shipped measurements + calibrations), consulted by KernelAttention."""

    calibrate: bool = False
    calibrator: Calibrator = field(default_factory=Calibrator)
    _tables: dict[str | None, DispatchTable] = field(default_factory=dict)

    def table(self, device: torch.device) -> DispatchTable:
        kind = gpu_kind(device)
        if kind not in self._tables:
            self._tables[kind] = shipped_table(kind)
        return self._tables[kind]

    def choose(self, shape: CallShape, device: torch.device) -> str:
        if device.type != "cuda" or shape.tokens <= 0:
            # The Triton paths need CUDA; an empty call has nothing to time or to gain.
            return SAFE[shape.op]
        table = self.table(device)
        if self.calibrate and not table.covers(shape) and not torch.compiler.is_compiling():
            table.add(self.calibrator.measure(shape, device))
        return table.choose(shape)

    def decisions(self) -> list[tuple[str | None, CallShape, str]]:
        return [(kind, s, p) for kind, t in self._tables.items() for s, p in t.decisions().items()]


DISPATCHER = Dispatcher()


def set_calibration(enabled: bool) -> None:
    """`model.kernels_calibrate`: time unmeasured shapes on first sight (CUDA only)."""
    DISPATCHER.calibrate = enabled


@contextmanager
def recording_shapes() -> Iterator[list[CallShape]]:
    """Collect every call shape `auto` dispatch is asked about while active (the kernel benchmark runs a
    model step under it to learn which shapes a workload hits, then times those)."""
    shapes: list[CallShape] = []
    choose = DISPATCHER.choose

    def record(shape: CallShape, device: torch.device) -> str:
        shapes.append(shape)
        return choose(shape, device)

    DISPATCHER.choose = record  # an instance attribute shadowing the method
    try:
        yield shapes
    finally:
        del DISPATCHER.choose
