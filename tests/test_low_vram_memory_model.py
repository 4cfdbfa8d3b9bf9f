"""The low-VRAM memory model (ltxdist/bench/memory_model.py): its bf16 case against the H200 peaks of
2026-12-04, and the accounting of 8-bit weights and block swap, on the 22B architecture (meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ltxdist.bench.memory_model import (
    GIB,
    Workload,
    activation_counts,
    model_counts,
    offload_needed,
    peak_bytes,
)
from ltxdist.parallel.offload import BLOCKS_IN_FLIGHT

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "fullsize_1xh200_2026-12-04.json"
# The benchmark's standard workload: 3,570 video, 51 audio, 1,024 text tokens.
STANDARD = Workload("960x544x49")


@pytest.fixture(scope="module")
def acts():
    return activation_counts("ltx23_22b", STANDARD, rank=32)


@pytest.fixture(scope="module")
def counts():
    return {p: model_counts("ltx23_22b", rank=32, targets=("attn",), precision=p) for p in ("bf16", "fp8")}


def test_bf16_prediction_matches_the_measured_h200_peaks(acts, counts) -> None:
    """The same composition the 24 GiB figures rest on, with a bf16 base and nothing swapped, predicts the
    allocated peak the H200 measured for the standard workload at rank 32 (AC on and off) within 5%."""
    assert (acts.video_tokens, acts.audio_tokens) == (3570, 51)
    rows = json.loads(RESULTS.read_text())["rows"]
    measured = {
        r["ac"]: r["peak_alloc_gib"]
        for r in rows
        if r["workload"] == "standard" and r["trainer"] == "ltxdist kernels off"
    }
    measured["on"] = next(
        r["peak_alloc_gib"]
        for r in rows
        if (r["workload"], r["trainer"], r["ac"]) == ("standard", "ltxdist kernels on", "on")
    )
    for ac, mode in (("on", "full"), ("off", "off")):
        predicted = peak_bytes(counts["bf16"], acts, offload_blocks=0, checkpointing=mode)["allocated"]
        assert predicted == pytest.approx(measured[ac], rel=0.05), (ac, predicted, measured[ac])
    # A wrong model fails the same check: activations counted without checkpointing for the AC-on run.
    wrong = peak_bytes(counts["bf16"], acts, offload_blocks=0, checkpointing="off")["allocated"]
    assert wrong != pytest.approx(measured["on"], rel=0.05)


def test_fp8_halves_the_frozen_weights_and_adds_one_upcast(counts) -> None:
    bf16, fp8 = counts["bf16"], counts["fp8"]
    ratio = sum(fp8.block_base_bytes) / sum(bf16.block_base_bytes)
    assert 0.5 < ratio < 0.51  # one byte per weight + a float32 scale per row, against two bytes
    assert bf16.largest_upcast_bytes == 0 < fp8.largest_upcast_bytes
    assert fp8.adapter_params == bf16.adapter_params


def test_block_swap_moves_weights_to_the_host_and_keeps_three_in_flight(acts, counts) -> None:
    fp8 = counts["fp8"]
    whole = peak_bytes(fp8, acts, offload_blocks=0)
    for swapped in (1, 16, 48):
        peak = peak_bytes(fp8, acts, offload_blocks=swapped)
        device_and_host = peak["base_resident"] + peak["host_pinned"]
        assert device_and_host == pytest.approx(whole["base_resident"], rel=1e-9)  # every byte in one place
        largest = max(fp8.block_base_bytes) / GIB
        assert peak["base_in_flight"] <= min(swapped, BLOCKS_IN_FLIGHT) * largest + 1e-9
        assert peak["total"] < whole["total"] or swapped < BLOCKS_IN_FLIGHT


def test_swapped_blocks_are_counted_recomputed_whatever_the_mode(acts, counts) -> None:
    """Training recomputes swapped blocks fully in every mode and refuses `off` with block swap; the model
    says the same: with every block swapped the mode of the others is moot, and `off` has no peak."""
    fp8 = counts["fp8"]
    every_block = len(fp8.block_base_bytes)
    attention = peak_bytes(fp8, acts, offload_blocks=every_block, checkpointing="attention")
    full = peak_bytes(fp8, acts, offload_blocks=every_block, checkpointing="full")
    assert attention["activations_or_grads"] == pytest.approx(full["activations_or_grads"])
    some = peak_bytes(fp8, acts, offload_blocks=16, checkpointing="attention")
    unswapped = peak_bytes(fp8, acts, offload_blocks=0, checkpointing="attention")
    assert full["activations_or_grads"] < some["activations_or_grads"] < unswapped["activations_or_grads"]
    with pytest.raises(ValueError, match="recomputed"):
        peak_bytes(fp8, acts, offload_blocks=1, checkpointing="off")


def test_offload_needed_is_the_fewest_blocks_that_fit(acts, counts) -> None:
    fp8 = counts["fp8"]
    for cap in (24.0, 32.0):
        needed = offload_needed(fp8, acts, cap)
        assert needed is not None
        assert peak_bytes(fp8, acts, offload_blocks=needed)["total"] <= cap
        if needed > 0:
            assert peak_bytes(fp8, acts, offload_blocks=needed - 1)["total"] > cap
    assert offload_needed(counts["bf16"], acts, 4.0) is None  # the adapters and activations alone exceed it
