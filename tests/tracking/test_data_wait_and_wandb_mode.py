"""`perf/data_wait_*` measure the time a real Lightning loop spends waiting for its loader (a slow loader
shows up, a fast one does not); `resolve_wandb_mode` goes online only with a key in the environment."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import pytest
import torch

from ltxdist._ltx_core import LTXModelConfigurator
from ltxdist.models.presets import transformer_config
from ltxdist.tracking.metrics import TrainingMetrics
from ltxdist.tracking.wandb_setup import resolve_wandb_mode

COMPUTE_S = 0.05  # each training step "computes" this long


class _SlowSamples(torch.utils.data.Dataset):
    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        time.sleep(self.delay_s)
        return {"ids": f"s{i}", "x": torch.ones(4)}


class _Toy(pl.LightningModule):
    """Sleeps COMPUTE_S per step. Carries a tiny LTX transformer only because the metrics read its
    structure for the FLOP count; the step never runs it."""

    def __init__(self):
        super().__init__()
        self.transformer = LTXModelConfigurator.from_config(transformer_config("tiny")).requires_grad_(False)
        self.head = torch.nn.Linear(4, 1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        time.sleep(COMPUTE_S)
        return self.head(batch["x"]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.head.parameters(), lr=0.01)


class _Records(pl.Callback):
    def __init__(self, metrics: TrainingMetrics):
        self.metrics, self.rows = metrics, []

    def on_train_batch_end(self, *args) -> None:
        self.rows.append(dict(self.metrics.latest))


def _run(delay_s: float, steps: int = 3) -> list[dict]:
    metrics = TrainingMetrics(bucket_edges=(0.0, 1.0), activation_checkpointing=False)
    records = _Records(metrics)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[metrics, records, metrics.boundary],  # the order train.py uses
    )
    loader = torch.utils.data.DataLoader(_SlowSamples(delay_s), batch_size=1, num_workers=0)
    trainer.fit(_Toy(), train_dataloaders=loader)
    assert len(records.rows) == steps
    return records.rows


def test_data_wait_follows_the_loader():
    slow_s = 0.2
    slow, fast = _run(slow_s), _run(0.0)
    for row in slow:
        # each step waited at least the loader's sleep, and the wait is part of the step time
        assert slow_s <= row["perf/data_wait_s"] <= row["perf/step_time_s"]
        assert row["perf/data_wait_frac"] == pytest.approx(row["perf/data_wait_s"] / row["perf/step_time_s"])
        assert row["perf/data_wait_frac"] > 0.5  # 0.2 s of 0.25 s
    for row in fast:
        assert row["perf/data_wait_s"] < slow_s / 2 and row["perf/step_time_s"] >= COMPUTE_S
    assert max(r["perf/data_wait_frac"] for r in fast) < min(r["perf/data_wait_frac"] for r in slow)


@pytest.mark.parametrize(
    ("mode", "key", "expected"),
    [
        ("auto", None, "offline"),
        ("auto", "", "offline"),
        ("auto", "k" * 40, "online"),
        ("offline", "k" * 40, "offline"),  # an explicit choice wins over the key
        ("disabled", "k" * 40, "disabled"),
        ("online", None, "online"),
    ],
)
def test_resolve_wandb_mode(monkeypatch, mode, key, expected):
    if key is None:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    else:
        monkeypatch.setenv("WANDB_API_KEY", key)
    assert resolve_wandb_mode(mode) == expected


def _run_id_at_barrier(run_dir, barrier, out) -> None:
    from ltxdist.tracking.wandb_setup import _stable_run_id

    barrier.wait()
    out.put(_stable_run_id(run_dir))


def test_ranks_starting_together_agree_on_one_wandb_run_id(tmp_path, monkeypatch):
    """Every rank of a job asks for the run's W&B id at the same moment (fit runs on every rank): one id
    wins, every rank gets it, and the file holds it."""
    import multiprocessing
    import uuid

    draw = uuid.uuid4

    def slow_uuid4() -> uuid.UUID:
        time.sleep(0.05)  # every rank is between "no file yet" and writing one: the race, every time
        return draw()

    monkeypatch.setattr(uuid, "uuid4", slow_uuid4)  # the forked ranks inherit it
    ctx = multiprocessing.get_context("fork")
    for trial in range(3):
        run_dir = tmp_path / str(trial)
        barrier, out = ctx.Barrier(4), ctx.Queue()
        ranks = [ctx.Process(target=_run_id_at_barrier, args=(run_dir, barrier, out)) for _ in range(4)]
        for p in ranks:
            p.start()
        ids = {out.get(timeout=30) for _ in ranks}
        for p in ranks:
            p.join()
        assert ids == {(run_dir / "wandb_run_id").read_text()}, f"trial {trial}: {ids}"
        assert len(ids.pop()) == 12
