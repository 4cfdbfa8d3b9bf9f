"""`model.kernels=auto` decisions (ltxdist_kernels/dispatch.py): measured-faster paths only, else safe."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import ltxdist_kernels.attention as kattn
import ltxdist_kernels.dispatch as dispatch
from ltxdist.lora.layers import LoRALinear
from ltxdist_kernels.dispatch import (
    MARGIN,
    SAFE,
    Calibrator,
    CallShape,
    DispatchTable,
    Measurement,
    gpu_kind_of_name,
    shipped_table,
)
from ltxdist_kernels.measured import MEASURED

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _lora(tokens: int, width: int = 4096, rank: int = 32) -> CallShape:
    return CallShape("lora_linear", tokens, width, width, rank)


def test_unmeasured_shapes_take_the_safe_path() -> None:
    table = DispatchTable()
    for op in SAFE:
        assert table.choose(CallShape(op, 1000, 64, 64, 4, 4)) == SAFE[op]


def test_a_path_is_chosen_only_when_measured_faster_by_the_margin() -> None:
    table = DispatchTable()
    table.add(Measurement(_lora(10752), {"addmm": 1.00, "triton": 0.90}))  # 10% faster: chosen
    table.add(Measurement(_lora(10752, rank=128), {"addmm": 1.00, "triton": 0.99}))  # within noise: safe
    table.add(Measurement(_lora(10752, width=2048), {"addmm": 1.00, "triton": 1.20}))  # slower: safe
    assert table.choose(_lora(10752)) == "triton"
    assert table.choose(_lora(9000)) == "triton"  # within the token tolerance of the measurement
    assert table.choose(_lora(3570)) == "addmm"  # far from anything measured
    assert table.choose(_lora(10752, rank=128)) == "addmm"
    assert table.choose(_lora(10752, width=2048)) == "addmm"
    assert table.choose(_lora(10752, rank=64)) == "addmm"  # another rank was never timed
    assert table.choose(CallShape("lora_linear", 10752, 4096, 4096, 32, dtype="float16")) == "addmm"


def test_without_the_safe_path_timed_or_with_disagreeing_measurements_nothing_changes() -> None:
    table = DispatchTable()
    table.add(Measurement(_lora(10752), {"triton": 0.5, "eager": 2.0}))  # safe path never timed
    assert table.choose(_lora(10752)) == "addmm"
    table = DispatchTable()
    table.add(Measurement(_lora(10000), {"addmm": 1.0, "triton": 0.8}))
    table.add(Measurement(_lora(11000), {"addmm": 1.0, "triton": 1.1}))
    assert table.choose(_lora(10500)) == "addmm"  # the two nearby runs disagree


def test_an_empty_call_takes_the_safe_path_and_is_never_calibrated(monkeypatch) -> None:
    """A zero-token call has no ratio to a measured token count: safe path, no crash, nothing timed."""
    h200 = shipped_table("h200")  # holds a qk_norm_rope measurement of this kind
    empty = CallShape("qk_norm_rope", 0, 4096, 4096, heads=32)
    assert h200.choose(empty) == "torch" and not h200.covers(empty)
    table = DispatchTable()
    table.add(Measurement(_lora(0), {"addmm": 1.0, "triton": 0.1}))  # even a recorded empty shape
    assert table.choose(_lora(10752)) == "addmm" and table.choose(_lora(0)) == "triton"
    dispatcher = dispatch.Dispatcher(calibrate=True)
    monkeypatch.setattr(dispatch, "gpu_kind", lambda device: "h200")
    timed: list[CallShape] = []
    monkeypatch.setattr(dispatcher.calibrator, "measure", lambda shape, device: timed.append(shape))
    assert dispatcher.choose(_lora(0), torch.device("cuda")) == "addmm" and timed == []


def test_auto_never_picks_a_path_slower_than_safe_at_any_nearby_measurement() -> None:
    """The 'kernels on cannot lose' property, over random tables and shapes."""
    rnd = random.Random(0)
    for _ in range(300):
        table = DispatchTable()
        for _ in range(rnd.randint(0, 6)):
            ms = {p: rnd.uniform(0.5, 1.5) for p in rnd.sample(["addmm", "triton"], rnd.randint(1, 2))}
            table.add(
                Measurement(
                    _lora(rnd.choice([1024, 3570, 4000, 5376, 10752]), rank=rnd.choice([32, 128])), ms
                )
            )
        shape = _lora(rnd.choice([1024, 3570, 4500, 10752]), rank=rnd.choice([32, 128]))
        choice = table.choose(shape)
        near = [m for m in table.measurements if m.shape.near(shape)]
        if choice != "addmm":
            assert near and all(m.ms[choice] <= m.ms["addmm"] * (1 - MARGIN) for m in near)


def test_shipped_h200_table_matches_the_committed_results_file() -> None:
    """Every shipped entry is the committed benchmark's numbers, and decides what they say."""
    payload = json.loads((RESULTS / "kernels_1xh200_2026-12-04.json").read_text())
    rows = {(r["section"], r["tokens"], r["width"]): r for r in payload["results"]}
    for entry in MEASURED["h200"]:
        assert entry["source"] == "benchmarks/results/kernels_1xh200_2026-12-04.json"
        timings = rows[("qk_norm_rope", entry["tokens"], entry["width_in"])]["timings"]
        assert entry["ms"]["torch"] == pytest.approx(timings["eager"]["median_ms"], abs=1e-3)
        assert entry["ms"]["triton"] == pytest.approx(timings["fused"]["median_ms"], abs=1e-3)
    h200 = shipped_table("h200")
    assert h200.choose(CallShape("qk_norm_rope", 10752, 4096, 4096, heads=32)) == "triton"
    assert h200.choose(CallShape("qk_norm_rope", 3570, 4096, 4096, heads=32)) == "torch"  # the standard clip
    assert h200.choose(CallShape("qk_norm", 10752, 4096, 4096, heads=32)) == "torch"  # no-RoPE: not timed
    assert h200.choose(_lora(10752)) == "addmm"  # LoRALinear's path was not timed on 2026-12-04
    assert shipped_table(None).measurements == [] and shipped_table("h100").measurements == []


def test_gpu_kind_names() -> None:
    assert gpu_kind_of_name("NVIDIA H200") == "h200"
    assert gpu_kind_of_name("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_kind_of_name("NVIDIA A100-SXM4-80GB") == "a100"


def test_cpu_calls_take_the_safe_path_and_calibration_picks_the_fastest(monkeypatch) -> None:
    dispatcher = dispatch.Dispatcher(calibrate=True)
    assert dispatcher.choose(_lora(10752), torch.device("cpu")) == "addmm"
    assert dispatcher.decisions() == []  # nothing consulted, nothing calibrated on a CPU

    fake = {"addmm": 2.0, "triton": 1.0}
    timed: list[str] = []

    def timer(runner, device, warmup, reps):
        runner()  # the real runner, on tiny CPU tensors (the fused one in Triton's interpreter)
        path = "triton" if len(timed) else "addmm"
        timed.append(path)
        return fake[path]

    state = torch.random.get_rng_state()
    shape = CallShape("lora_linear", 8, 16, 24, 4, dtype="float32")
    m = Calibrator(warmup=0, reps=1, timer=timer).measure(shape, torch.device("cpu"))
    assert torch.equal(torch.random.get_rng_state(), state)  # LoRA dropout's RNG stream is untouched
    assert timed == ["addmm", "triton"] and m.fastest() == "triton"
    table = DispatchTable()
    table.add(m)
    assert table.choose(shape) == "triton"


def test_qk_runner_runs_both_paths_on_cpu() -> None:
    calls = []
    m = Calibrator(warmup=0, reps=1, timer=lambda r, d, w, n: calls.append(r()) or 1.0).measure(
        CallShape("qk_norm_rope", 6, 32, 32, heads=2, dtype="float32"), torch.device("cpu")
    )
    assert set(m.ms) == {"torch", "triton"} and len(calls) == 2


def test_auto_backend_asks_the_dispatcher_per_call_shape(monkeypatch) -> None:
    asked: list[CallShape] = []
    used: list[str] = []

    def choose(shape, device):
        asked.append(shape)
        return "triton"

    monkeypatch.setattr(kattn.DISPATCHER, "choose", choose)
    monkeypatch.setattr(kattn, "fused_lora_linear", lambda *a, **k: used.append("fused") or a[0] @ a[1].t())
    layer = LoRALinear(torch.nn.Linear(16, 24), rank=4, alpha=4.0, dropout=0.0, dtype=torch.float32)
    kattn.lora_linear_forward(layer, torch.randn(2, 5, 16), "auto")
    assert asked == [CallShape("lora_linear", 10, 16, 24, 4, dtype="float32")] and used == ["fused"]


def test_auto_is_the_torch_path_inside_torch_compile() -> None:
    """Dynamo cannot trace the dispatch table (a graph break per projection): compiled blocks take the
    torch path, which inductor fuses; outside compile auto stays per-call on CUDA."""
    cuda = torch.device("cuda", 0)

    def scale(x: torch.Tensor) -> torch.Tensor:
        return x * (2.0 if kattn.resolve_backend("auto", cuda) == "torch" else 3.0)

    compiled = torch.compile(scale, backend="eager", fullgraph=True)  # fullgraph: no break allowed
    assert torch.equal(compiled(torch.ones(2)), torch.full((2,), 2.0))
    assert kattn.resolve_backend("auto", cuda) == "auto"
