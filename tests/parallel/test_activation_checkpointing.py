"""Activation checkpointing modes and the memory budget (parallel/activation_checkpointing.py,
parallel/activation_memory.py): decisions, the memory model against the measured H200 peaks, and
gradients identical to no checkpointing on the tiny model."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ltxdist._ltx_core import BatchedPerturbationConfig, LTXModelConfigurator, Modality
from ltxdist.lora import LoRASpec, inject_lora, lora_parameters
from ltxdist.models import build_meta_transformer
from ltxdist.models.init import init_transformer_weights
from ltxdist.models.presets import text_context_dims, transformer_config
from ltxdist.parallel.activation_checkpointing import (
    CheckpointingPolicy,
    MemoryBudgetError,
    apply_activation_checkpointing,
    block_modes,
    checkpointing_policy,
    plan_for_budget,
)
from ltxdist.parallel.activation_memory import (
    ALLOCATOR_OVERHEAD,
    BlockMemory,
    one_block_template,
    predicted_peak_bytes,
    resident_bytes,
    to_gib,
    trace_block_memory,
)

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "fullsize_1xh200_2026-12-04.json"


@pytest.fixture()
def one_thread():
    # Tiny ops on 2 intra-op threads stall on a busy 2-core machine (ms per matmul); one thread does not.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_policy_resolution_and_errors_name_the_flag() -> None:
    def cfg(**kw):
        return SimpleNamespace(**kw)

    assert checkpointing_policy(cfg(), gradient_checkpointing=True).mode == "full"
    assert checkpointing_policy(cfg(), gradient_checkpointing=False).mode == "off"
    assert checkpointing_policy(cfg(memory_budget_gib=70.0), gradient_checkpointing=True).mode == "budget"
    every = checkpointing_policy(
        cfg(activation_checkpointing="every_k", activation_checkpointing_every=3),
        gradient_checkpointing=False,
    )
    assert (every.mode, every.every) == ("every_k", 3)
    with pytest.raises(ValueError, match=r"parallel\.memory_budget_gib"):
        checkpointing_policy(cfg(activation_checkpointing="budget"), gradient_checkpointing=False)
    with pytest.raises(ValueError, match=r"parallel\.activation_checkpointing"):
        checkpointing_policy(cfg(activation_checkpointing="some"), gradient_checkpointing=False)


def test_budget_plan_takes_the_least_recompute_that_fits() -> None:
    """4 blocks; per block 10 (no checkpointing), 3 (attention kept), 1 (full) units of memory; 100 resident,
    10 transient; recompute 6 (attention) or 10 (full) per block. Peak = 110 + sum of the blocks."""
    memory = BlockMemory(saved_off=10, saved_attention=3, saved_full=1, outside=0, transient=10)
    recompute = {"off": 0.0, "attention": 6.0, "full": 10.0}

    def plan(peak_allowed: float) -> dict[str, int]:
        return plan_for_budget(memory, 4, 100, peak_allowed * ALLOCATOR_OVERHEAD + 1e-6, recompute)

    assert plan(150) == {"off": 4, "attention": 0, "full": 0}  # everything fits: nothing recomputed
    # Blocks may keep 33: three plain (30) + one attention-kept (3) costs 6; three plain + one full costs 10.
    assert plan(143) == {"off": 3, "attention": 1, "full": 0}
    # Blocks may keep 15: four attention-kept (12, cost 24) beat 1 plain + 1 attention + 2 full (15, 26).
    assert plan(125) == {"off": 0, "attention": 4, "full": 0}
    assert plan(115) == {"off": 0, "attention": 0, "full": 4}  # only full checkpointing fits (4)
    with pytest.raises(MemoryBudgetError, match=r"parallel\.memory_budget_gib"):
        plan(113)
    assert predicted_peak_bytes(memory, {"off": 3, "attention": 1}, 100) == 143
    # Adapters' gradients replace the saved activations during backward: only more of them raises the peak.
    assert predicted_peak_bytes(memory, {"off": 3, "attention": 1}, 100, gradients=20) == 143
    assert predicted_peak_bytes(memory, {"off": 3, "attention": 1}, 100, gradients=50) == 160
    # ... so the plan that fits 125 with few gradients (four attention-kept blocks, 12 saved) does not fit
    # with 40 bytes of gradients: every plan then peaks at 100 + 40 + 10.
    assert plan_for_budget(memory, 4, 100, 125 * ALLOCATOR_OVERHEAD + 1e-6, recompute, gradients=10) == {
        "off": 0,
        "attention": 4,
        "full": 0,
    }
    with pytest.raises(MemoryBudgetError):
        plan_for_budget(memory, 4, 100, 125 * ALLOCATOR_OVERHEAD + 1e-6, recompute, gradients=40)
    # Two swapped blocks (block swap) are always full, however much room there is; on blocks 1 and 3.
    swapped = plan_for_budget(memory, 4, 100, 150 * ALLOCATOR_OVERHEAD + 1e-6, recompute, recomputed=2)
    assert swapped == {"off": 2, "attention": 0, "full": 2}
    assert block_modes(swapped, frozenset({1, 3})) == ["off", "full", "off", "full"]
    assert block_modes({"off": 1, "attention": 2, "full": 1}, frozenset({2})) == [
        "attention",
        "attention",
        "full",
        "off",
    ]


def _modality(tokens: int, axes: int, ctx_dim: int, dtype: torch.dtype = torch.bfloat16) -> Modality:
    sigma = torch.full((1,), 0.5, device="meta")
    return Modality(
        latent=torch.empty(1, tokens, 128, device="meta", dtype=dtype),
        sigma=sigma,
        timesteps=sigma[:, None],
        positions=torch.empty(1, axes, tokens, 2, device="meta"),
        context=torch.empty(1, 1024, ctx_dim, device="meta", dtype=dtype),
    )


def test_memory_model_predicts_the_measured_h200_peaks() -> None:
    """The 22B architecture on the meta device (no memory): the predicted allocated peak of the benchmark's
    step within 5% of what the H200 measured (benchmarks/results/fullsize_1xh200_2026-12-04.json)."""
    rows = json.loads(RESULTS.read_text())["rows"]
    measured = {(r["workload"], r["trainer"], r["ac"]): r["peak_alloc_gib"] for r in rows}
    config = transformer_config("ltx23_22b")
    dv, da = text_context_dims(config)
    cases = [  # workload, rank, video tokens, audio tokens, trainer, ac
        ("standard", 32, 3570, 51, "ltxdist kernels off", "off"),
        ("standard", 32, 3570, 51, "ltxdist kernels on", "on"),
        ("ic_lora", 128, 2 * 5376, 0, "ltxdist kernels off", "on"),
    ]
    for work, rank, video_tokens, audio_tokens, trainer, ac in cases:
        # One block on meta stands for all 48: resident = the one-block model + 47 more blocks.
        model = build_meta_transformer(transformer_config("ltx23_22b", num_layers=1)).to(torch.bfloat16)
        inject_lora(model, LoRASpec(rank=rank, alpha=rank, targets=("attn",)))
        resident = resident_bytes(model) + 47 * resident_bytes(model.transformer_blocks[0])
        audio = _modality(audio_tokens, 1, da) if audio_tokens else None
        video = _modality(video_tokens, 3, dv)
        memory = trace_block_memory(
            one_block_template(model), video, audio, BatchedPerturbationConfig.empty(1)
        )
        counts = {"off": 48} if ac == "off" else {"full": 48}
        predicted = to_gib(predicted_peak_bytes(memory, counts, resident))
        assert predicted == pytest.approx(measured[(work, trainer, ac)], rel=0.05), (work, ac, predicted)


# -- numerics on the tiny model ---------------------------------------------------------------------
def _tiny(layers: int) -> torch.nn.Module:
    model = LTXModelConfigurator.from_config(transformer_config("tiny", num_layers=layers))
    init_transformer_weights(model, torch.Generator().manual_seed(0))
    inject_lora(model, LoRASpec(rank=4, alpha=4.0, dropout=0.1, targets=("attn",)))
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    return model.double().train()


def _inputs() -> tuple[Modality, Modality]:
    gen = torch.Generator().manual_seed(1)
    dv, da = text_context_dims(transformer_config("tiny"))

    def modality(tokens: int, axes: int, ctx_dim: int) -> Modality:
        sigma = torch.rand(2, generator=gen, dtype=torch.float64)
        return Modality(
            latent=torch.randn(2, tokens, 128, generator=gen, dtype=torch.float64),
            sigma=sigma,
            timesteps=sigma[:, None],
            positions=torch.rand(2, axes, tokens, 2, generator=gen, dtype=torch.float64) * 8,
            context=torch.randn(2, 5, ctx_dim, generator=gen, dtype=torch.float64),
        )

    return modality(12, 3, dv), modality(6, 1, da)


def _step(
    model: torch.nn.Module, policy: CheckpointingPolicy | None
) -> tuple[list[torch.Tensor], list[int], Any]:
    """Output and LoRA grads (LoRA dropout on: checkpointing must replay its masks) and how often each
    block's video self-attention ran (2 = the block was recomputed in backward)."""
    model = copy.deepcopy(model)
    if policy is not None:
        apply_activation_checkpointing(model, policy)
    calls = [0] * len(model.transformer_blocks)
    for i, block in enumerate(model.transformer_blocks):
        block.attn1.register_forward_pre_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    video, audio = _inputs()
    torch.manual_seed(5)
    vx, ax = model(video, audio, BatchedPerturbationConfig.empty(2))
    loss = vx.square().mean() + ax.square().mean()
    grads = torch.autograd.grad(loss, lora_parameters(model))
    return [vx, ax, *grads], calls, model.__dict__.get("ltxdist_ac_planner")


@pytest.mark.parametrize(
    ("policy", "recomputed"),
    [
        (CheckpointingPolicy("full"), [2, 2, 2]),
        (CheckpointingPolicy("attention"), [2, 2, 2]),
        (CheckpointingPolicy("every_k", every=2), [2, 1, 2]),
    ],
)
def test_modes_give_the_gradients_of_no_checkpointing(one_thread, policy, recomputed) -> None:
    model = _tiny(3)
    want, plain_calls, _ = _step(model, None)
    got, calls, _ = _step(model, policy)
    assert plain_calls == [1, 1, 1] and calls == recomputed
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)  # float64, same ops, same dropout masks


def test_budget_mode_mixes_modes_to_fit_and_keeps_the_gradients(one_thread) -> None:
    model = _tiny(3)
    want, _, _ = _step(model, None)
    # The tiny model's own numbers: a budget that does not fit three plain blocks but fits full checkpointing.
    template = one_block_template(model)
    video, audio = _inputs()
    memory = trace_block_memory(template, video, audio, BatchedPerturbationConfig.empty(2))
    resident = resident_bytes(model)
    all_off = predicted_peak_bytes(memory, {"off": 3}, resident)
    all_full = predicted_peak_bytes(memory, {"full": 3}, resident)
    assert all_full < all_off
    budget = (all_off - 1) * ALLOCATOR_OVERHEAD / 2**30
    got, calls, planner = _step(model, CheckpointingPolicy("budget", budget_gib=budget))
    assert planner.last_counts["off"] < 3 and sum(planner.last_counts.values()) == 3
    assert predicted_peak_bytes(planner.last_memory, planner.last_counts, resident) * ALLOCATOR_OVERHEAD <= (
        budget * 2**30
    )
    assert calls.count(2) == 3 - planner.last_counts["off"]  # exactly the planned blocks were recomputed
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    # A deep copy of a wrapped model plans and checkpoints itself (its own blocks, its own planner).
    too_small = copy.deepcopy(model)
    apply_activation_checkpointing(
        too_small, CheckpointingPolicy("budget", budget_gib=(all_full - 1) / 2**30)
    )
    with pytest.raises(MemoryBudgetError, match=r"parallel\.memory_budget_gib"):
        _step(too_small, None)


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        (["parallel.activation_checkpointing=budget"], "parallel.memory_budget_gib"),
        (["parallel.memory_budget_gib=0"], "parallel.memory_budget_gib"),
        (["parallel.activation_checkpointing=sometimes"], "parallel.activation_checkpointing"),
        (["parallel.activation_checkpointing_every=0"], "parallel.activation_checkpointing_every"),
        # Flags the selected mode ignores are refused, not silently dropped.
        (
            ["parallel.activation_checkpointing=full", "parallel.memory_budget_gib=40"],
            "parallel.memory_budget_gib",
        ),
        (
            ["parallel.activation_checkpointing=off", "parallel.memory_budget_gib=40"],
            "parallel.memory_budget_gib",
        ),
        (
            ["parallel.activation_checkpointing=every_k", "parallel.memory_budget_gib=40"],
            "parallel.memory_budget_gib",
        ),
        (["parallel.activation_checkpointing_every=3"], "parallel.activation_checkpointing_every"),
        (
            [
                "parallel.activation_checkpointing=budget",
                "parallel.memory_budget_gib=40",
                "parallel.activation_checkpointing_every=4",
            ],
            "parallel.activation_checkpointing_every",
        ),
    ],
)
def test_config_errors_name_the_flag(overrides, flag, tiny_ckpt, tmp_path) -> None:
    from ltxdist.config.schema import ConfigError, validate_config
    from ltxdist.config.store import compose_train_config

    cfg = compose_train_config([*overrides, f"model.checkpoint={tiny_ckpt}", f"data.path={tmp_path}"])
    with pytest.raises(ConfigError, match=rf"^{re.escape(flag)}"):
        validate_config(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["parallel.memory_budget_gib=40"],  # auto: budget
        ["parallel.activation_checkpointing=budget", "parallel.memory_budget_gib=40"],
        ["parallel.activation_checkpointing=every_k", "parallel.activation_checkpointing_every=3"],
    ],
)
def test_flags_their_mode_uses_are_accepted(overrides, tiny_ckpt, tmp_path) -> None:
    from ltxdist.config.schema import validate_config
    from ltxdist.config.store import compose_train_config

    validate_config(
        compose_train_config([*overrides, f"model.checkpoint={tiny_ckpt}", f"data.path={tmp_path}"])
    )
