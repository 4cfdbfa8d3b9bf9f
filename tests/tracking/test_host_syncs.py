"""At most one device->host sync per optimizer step (the metrics, the non-finite decision, the gradient
norm and the stop signals are read together, tracking/metrics.py), counted on a CPU run the way
`torch.cuda.set_sync_debug_mode` would see it on a GPU (host_syncs.py); and the one metrics record
under namespaced keys."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
from e2e_utils import train_overrides
from host_syncs import HostSyncCounter, StepWindows


def test_the_counter_tells_device_reads_from_host_reads():
    """What makes the count below mean something: device values read on the host count, host values
    (CPU generator draws, torch AdamW's step counters) do not, and neither does device-side work."""
    weight = torch.nn.Parameter(torch.ones(3))
    with HostSyncCounter([weight]) as counter:
        loss = (weight * 2).sum()
        norm = torch.linalg.vector_norm(loss.detach().reshape(1))
        both = torch.stack([loss.detach(), norm])  # device-side: no sync
        host = torch.rand((), generator=torch.Generator().manual_seed(0))
        float(host)  # host tensor: no sync
        torch.tensor(0.0, device="cpu").item()  # an explicit host placement: no sync
        assert counter.syncs == []
        float(loss.detach())
        both.tolist()
        bool(torch.isfinite(norm))
        placed = torch.zeros((), device=weight.device) + float(host)  # aimed at the training device
        placed.item()
    assert [name for name, _ in counter.syncs] == ["__float__", "tolist", "__bool__", "item"]


def test_one_host_sync_per_optimizer_step_and_one_metrics_record(tiny_ckpt, tiny_data, tmp_path):
    from ltxdist.config.store import compose_train_config
    from ltxdist.training import train as train_module

    run_dir = tmp_path / "run"
    overrides = train_overrides(
        tiny_ckpt,
        tiny_data,
        run_dir,
        **{
            "trainer.max_steps": 3,
            "trainer.accumulate_grad_batches": 2,  # a step's window spans both micro-batches
            "trainer.checkpoint_every_n_steps": 100,  # checkpoint writes (their own syncs) only at the end
            "data.batch_size": 2,
            "strategy.caption_dropout_p": 0.5,  # per-sample host draws on the way
        },
    )
    windows = StepWindows()
    build = train_module.build_trainer

    def with_windows(cfg, run_dir_, callbacks, logger):
        return build(cfg, run_dir_, [windows.first, *callbacks, windows.last], logger)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with mock.patch.object(train_module, "build_trainer", with_windows):
            train_module.train(compose_train_config(overrides))
    finally:
        torch.set_num_threads(threads)

    assert sorted(windows.per_step) == [1, 2, 3]
    for step, syncs in windows.per_step.items():
        # Exactly one: the read in TrainingMetrics.read_step, from the module's optimizer-step hook.
        assert len(syncs) == 1, (step, syncs)
        name, where = syncs[0]
        assert name == "tolist" and where.startswith("metrics.py:"), (step, syncs)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        # One pipeline: the global mean under `loss/total`, no rank-0 `loss` beside it, every metric
        # namespaced; the record's header (step, data position, wall time) stays as it is.
        assert not {k for k in r if "/" not in k} - {"step", "batches_seen", "wall_time"}, sorted(r)
        assert r["loss/total"] > 0 and r["optim/grad_norm"] > 0 and r["optim/lr"] > 0
        assert r["train/step_skipped"] == 0


@pytest.fixture(autouse=True)
def _no_stray_counter():
    yield
    assert not torch.overrides._get_current_function_mode_stack(), "a HostSyncCounter was left active"
