"""NaN/Inf in a batch: the optimizer step is skipped and counted, a resumed run lands on the same
adapters, K non-finite steps in a row stop the run with an error naming the flag."""

from __future__ import annotations

import shutil

import pytest
import torch
from fault_helpers import (
    adapters,
    assert_same_tensors,
    committed_ids,
    compose_train,
    metrics,
    moments,
    overrides,
    partial_files,
    poison_samples,
    stream_ids,
    train_in_process,
)

from ltxdist.config import ConfigError, validate_config
from ltxdist.training.nonfinite import NonFiniteTrainingError, poison_nonfinite_loss
from ltxdist.training.run_dir import complete_checkpoints


def test_nonfinite_steps_are_skipped_counted_and_a_resumed_run_matches(tiny_ckpt, data_copy, tmp_path):
    order = [ids[0] for ids in stream_ids(data_copy, 8)]
    # Steps 3 and 4 train on a corrupt sample (batch 1: one sample per step): NaN, then Inf.
    poison_samples(data_copy, {order[2]: float("nan"), order[3]: float("inf")})
    run = tmp_path / "run"
    train_in_process(overrides(tiny_ckpt, data_copy, run))

    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    # The expected counts come from which step saw a poisoned id (the ledger), not from the guard.
    ledger = committed_ids(run)
    poisoned = {order[2], order[3]}
    hit = [bool(poisoned & set(ledger[(0, s)]["ids"])) for s in range(1, 9)]
    assert hit == [False, False, True, True, False, False, False, False]
    assert [r["train/step_skipped"] for r in rows] == [int(h) for h in hit]
    assert [r["train/nonfinite_skipped"] for r in rows] == [sum(hit[: i + 1]) for i in range(8)]
    # The data position still advances over a skipped step: every step took the next sample.
    assert [ledger[(0, s)]["ids"][0] for s in range(1, 9)] == order

    # Skipped steps changed neither the adapters nor the AdamW moments (checkpoints every 2 steps) ...
    assert_same_tensors(adapters(run, 4), adapters(run, 2))
    for i, entry in moments(run, 2).items():
        assert_same_tensors(moments(run, 4)[i], entry)
    # ... while a step that was not skipped did (a wrong reference fails this comparison).
    with pytest.raises(AssertionError):
        assert_same_tensors(adapters(run, 6), adapters(run, 4))
    assert all(torch.isfinite(t).all() for t in adapters(run, 8).values())

    # Resume right after the burst: same adapters, counters carried over, same samples per step.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "step-000004", resumed / "checkpoints" / "step-000004")
    train_in_process(overrides(tiny_ckpt, data_copy, resumed))
    assert_same_tensors(adapters(resumed, 8), adapters(run, 8))
    again = metrics(resumed)
    assert [r["step"] for r in again] == [5, 6, 7, 8]
    assert [r["train/nonfinite_skipped"] for r in again] == [2, 2, 2, 2]
    assert [committed_ids(resumed)[(0, s)]["ids"] for s in range(5, 9)] == [
        ledger[(0, s)]["ids"] for s in range(5, 9)
    ]


def test_k_nonfinite_steps_in_a_row_stop_the_run_naming_the_flag(tiny_ckpt, data_copy, tmp_path):
    order = [ids[0] for ids in stream_ids(data_copy, 4)]
    poison_samples(data_copy, {order[2]: float("nan"), order[3]: float("-inf")})
    run = tmp_path / "run"
    args = overrides(
        tiny_ckpt, data_copy, run, **{"trainer.max_consecutive_nonfinite": 2, "trainer.max_steps": 6}
    )
    with pytest.raises(NonFiniteTrainingError) as info:
        train_in_process(args)
    message = str(info.value)
    assert "trainer.max_consecutive_nonfinite=2" in message
    assert "2 optimizer steps in a row (steps 3..4)" in message
    assert order[3] in message  # the sample of the step that tripped the limit
    # Nothing half-written; the newest complete checkpoint (step 2) is the one to resume from.
    assert [s for s, _ in complete_checkpoints(run)] == [2]
    assert partial_files(run) == []


def test_the_limit_is_a_typed_checked_flag(tiny_ckpt, tmp_path):
    cfg = compose_train(overrides(tiny_ckpt, tmp_path, tmp_path, **{"trainer.max_consecutive_nonfinite": 0}))
    with pytest.raises(ConfigError, match=r"trainer\.max_consecutive_nonfinite: must be >= 1"):
        validate_config(cfg)


def test_poisoning_keeps_finite_gradients_and_spreads_nan_to_every_gradient():
    w = torch.nn.Parameter(torch.randn(3))
    (w * 2.0).sum().backward()
    plain = w.grad.clone()
    w.grad = None
    poison_nonfinite_loss((w * 2.0).sum()).backward()
    assert torch.equal(w.grad, plain)  # bit-identical for a finite loss
    w.grad = None
    # An Inf loss whose own gradient would be finite (the Inf does not depend on w) ...
    loss = (w * 2.0).sum() + torch.tensor(float("inf"))
    loss.backward(retain_graph=True)
    assert torch.isfinite(w.grad).all()
    w.grad = None
    # ... gets NaN gradients everywhere, which the check after the gradient all-reduce sees on all ranks.
    poison_nonfinite_loss(loss).backward()
    assert torch.isnan(w.grad).all()


def test_an_inf_loss_with_finite_gradients_reaches_every_backward_as_nan_gradients(
    tiny_ckpt, tiny_data, monkeypatch
):
    """Under DeepSpeed, Lightning hands training_step's loss to the engine's own backward and never calls
    the module's `backward`: the loss training_step returns must already carry the poison, so DeepSpeed's
    overflow check skips the step and ltxdist counts it like any other (soak: nan_step_deepspeed_zero2,
    with FAULT_INF_LOSS_IDS)."""
    from ltxdist.config.store import compose_train_config, register_configs
    from ltxdist.data.streaming import CachedLatentStream, StreamPlan
    from ltxdist.training.module import LTXLoRAModule

    register_configs()
    cfg = compose_train_config(
        [f"model.checkpoint={tiny_ckpt}", f"data.path={tiny_data}", "model.dtype=float32", "lora.rank=2"]
    )
    module = LTXLoRAModule(cfg)
    module.configure_model()
    with torch.no_grad():
        for p in module.lora_parameters():
            p.fill_(0.1)  # B != 0: every adapter gets a gradient
    batch = next(CachedLatentStream(tiny_data, StreamPlan(batch_size=1, seed=0)).iter_batches())

    def inf_loss(batch):  # the Inf does not depend on the adapters
        loss, parts = LTXLoRAModule.compute_loss(module, batch)
        return loss + float("inf"), parts

    monkeypatch.setattr(module, "compute_loss", inf_loss)
    module.compute_loss(batch)[0].backward()
    assert all(torch.isfinite(p.grad).all() for p in module.lora_parameters())
    module.zero_grad()
    module.training_step(batch, 0).backward()  # what DeepSpeedPrecision.backward runs
    assert all(torch.isnan(p.grad).all() for p in module.lora_parameters())
