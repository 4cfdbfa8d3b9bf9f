"""Resuming the data position: a run resumed at step k trains every later step on the samples of the
uninterrupted run and ends with its adapters, for 1 process, 2 DDP ranks and 2 -> 1 ranks (the sample ids
of every step come from the test-side ledger, ledger.py). A checkpoint moved aside by an overwrite that a
kill interrupted is put back before the checkpoint to resume from is chosen."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_utils import REPO
from fault_helpers import (
    DDP,
    ENV,
    adapters,
    assert_same_tensors,
    committed_ids,
    metrics,
    overrides,
    stream_ids,
    train_command,
    train_in_process,
)

from ltxdist.checkpoint import read_train_state
from ltxdist.data.position import DataStart, resume_start


def _resume_from(source: Path, step: int, target: Path, name: str | None = None) -> None:
    """A fresh run directory holding only `source`'s checkpoint of `step` (under `name` if given)."""
    (target / "checkpoints").mkdir(parents=True)
    checkpoint = f"step-{step:06d}"
    shutil.copytree(source / "checkpoints" / checkpoint, target / "checkpoints" / (name or checkpoint))


def _ids(run: Path, rank: int, steps: range) -> list[list[str]]:
    ledger = committed_ids(run)
    return [ledger[(rank, s)]["ids"] for s in steps]


def _data_position(run: Path, step: int) -> dict:
    return read_train_state(run / "checkpoints" / f"step-{step:06d}").data


def test_one_process_resumed_at_step_k_trains_the_uninterrupted_samples(
    tiny_ckpt, tiny_data, tmp_path, caplog
):
    """Two buckets with batch 2 (partial batches carry over), a shuffle buffer, 2 DataLoader workers and
    an epoch boundary after the resume: the saved cursors are what the resumed run seeks to."""
    extra = {
        "data.batch_size": 2,
        "data.num_workers": 2,
        "trainer.max_steps": 14,  # 12 batches per epoch: the resumed part crosses into epoch 1
        "trainer.checkpoint_every_n_steps": 7,
    }
    run = tmp_path / "run"
    train_in_process(overrides(tiny_ckpt, tiny_data, run, **extra))
    position = _data_position(run, 7)
    assert json.loads(json.dumps(position)) == position  # plain JSON, for any checkpointer to store
    assert position["batches_seen"] == 7 and len(position["ranks"]) == 1 and len(position["ranks"][0]) == 2

    resumed = tmp_path / "resumed"
    _resume_from(run, 7, resumed)
    with caplog.at_level(logging.INFO, logger="ltxdist"):
        train_in_process(overrides(tiny_ckpt, tiny_data, resumed, **extra))
    assert "every worker's stream seeks to its saved cursor" in caplog.text
    later = range(8, 15)
    assert _ids(resumed, 0, later) == _ids(run, 0, later)
    epochs = [c["epoch"] for c in _data_position(run, 7)["ranks"][0] + _data_position(run, 14)["ranks"][0]]
    assert epochs == [0, 0, 1, 1], "the resumed steps cross into the next epoch"
    assert_same_tensors(adapters(resumed, 14), adapters(run, 14))
    with pytest.raises(AssertionError):  # a wrong reference fails
        assert_same_tensors(adapters(resumed, 14), adapters(run, 7))


@pytest.mark.slow
def test_two_ddp_ranks_match_one_process_and_resume_on_two_and_on_one(
    tiny_ckpt, fault_data, tmp_path, caplog
):
    """One process with batch 2 and two DDP ranks with batch 1 read the same samples (one bucket, no
    shuffle buffer, every 2nd sample per rank) and end with the same adapters. The DDP run's step-3
    checkpoint resumes on 2 ranks (each seeks to its own cursors) and on 1 process (the position
    converted through the 6 samples consumed): every later step trains on the uninterrupted samples."""
    common = {
        "trainer.max_steps": 6,
        "trainer.checkpoint_every_n_steps": 3,
        "data.shuffle_buffer": 1,
        "data.split": "sample",
    }
    single = tmp_path / "single"
    train_in_process(overrides(tiny_ckpt, fault_data, single, **common, **{"data.batch_size": 2}))
    steps, later = range(1, 7), range(4, 7)
    # What each rank of an uninterrupted DDP run reads: its stream from the start (no cursor involved).
    plan = {"shuffle_buffer": 1, "split": "sample", "world_size": 2}
    per_rank = {r: stream_ids(fault_data, 6, rank=r, **plan) for r in (0, 1)}
    assert [[*per_rank[0][i], *per_rank[1][i]] for i in range(6)] == _ids(single, 0, steps)

    # The uninterrupted DDP run, started as README documents: `torchrun -m` from the checkout root.
    uninterrupted = tmp_path / "ddp"
    args = overrides(
        tiny_ckpt, fault_data, uninterrupted, **common, **DDP,
        **{"parallel.devices": 2, "trainer.progress_bar": "true"},
    )  # fmt: skip
    # Not started by torchrun: nothing runs, and the error says how to start it (one process would
    # otherwise run as a second rank 0, or Lightning re-launch this script behind Hydra's back).
    alone = subprocess.run(
        [sys.executable, "-m", "ltxdist.training.train", *args],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert alone.returncode != 0
    assert "NPROC=2 launch/train.sh " in alone.stderr and "--nproc_per_node 2" in alone.stderr, alone.stderr
    assert "parallel=ddp" in alone.stderr.split("NPROC=2 launch/train.sh", 1)[1]  # the user's overrides
    assert "Traceback" not in alone.stderr and not (uninterrupted / "config.yaml").exists()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*torchrun, "-m", "ltxdist.training.train", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["step"] for r in metrics(uninterrupted)] == list(steps)
    # One progress report (rank 0's; plain lines, as output is not a terminal); rank 1 reports nothing.
    assert (proc.stdout + proc.stderr).count("step 1/6 ") == 1, proc.stderr[-2000:]
    want = adapters(single, 6)
    moved = max((want[k] - adapters(single, 3)[k]).abs().max() for k in want if k.endswith("lora_B"))
    assert moved > 1e-4, "training must have moved the adapters for the comparison to mean anything"
    assert_same_tensors(adapters(uninterrupted, 6), want, atol=1e-5)

    on_two = tmp_path / "ddp-resumed"  # through the ledger wrapper (ledger.py), under torchrun
    _resume_from(uninterrupted, 3, on_two)
    args = overrides(tiny_ckpt, fault_data, on_two, **common, **DDP)
    proc = subprocess.run(train_command(args, 2), env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "every worker's stream seeks to its saved cursor" in proc.stdout + proc.stderr
    for r in (0, 1):
        assert _ids(on_two, r, later) == per_rank[r][3:]
    assert_same_tensors(adapters(on_two, 6), adapters(uninterrupted, 6), atol=1e-6)

    on_one = tmp_path / "one-from-two"
    _resume_from(uninterrupted, 3, on_one)
    with caplog.at_level(logging.INFO, logger="ltxdist"):
        train_in_process(overrides(tiny_ckpt, fault_data, on_one, **common, **{"data.batch_size": 2}))
    assert "data_parallel_size 2 -> 1" in caplog.text and "micro_batch_size 1 -> 2" in caplog.text
    assert _ids(on_one, 0, later) == _ids(single, 0, later)
    assert_same_tensors(adapters(on_one, 6), want, atol=1e-5)


def test_a_checkpoint_moved_aside_by_an_interrupted_overwrite_is_resumed(
    tiny_ckpt, fault_data, tmp_path, caplog
):
    """A kill while a checkpoint directory was being replaced leaves the old one at `step-N.tmp-old`:
    the next run puts it back before choosing where to resume, and resumes from it."""
    run = tmp_path / "run"
    train_in_process(overrides(tiny_ckpt, fault_data, run, **{"trainer.max_steps": 4}))
    resumed = tmp_path / "resumed"
    _resume_from(run, 2, resumed)
    _resume_from(run, 4, resumed / "aside", name="step-000004.tmp-old")
    (resumed / "aside" / "checkpoints" / "step-000004.tmp-old").rename(
        resumed / "checkpoints" / "step-000004.tmp-old"
    )
    (resumed / "checkpoints" / "step-000004.tmp-AbC123").mkdir()  # a partial replacement
    with caplog.at_level(logging.INFO, logger="ltxdist"):
        train_in_process(overrides(tiny_ckpt, fault_data, resumed, **{"trainer.max_steps": 4}))
    assert f"resuming from {resumed / 'checkpoints' / 'step-000004'}" in caplog.text
    assert not committed_ids(resumed), "nothing left to train: step 4 was the last"
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_the_position_seeks_under_the_same_layout_and_converts_otherwise():
    layout = {"data_parallel_size": 2, "micro_batch_size": 1, "num_workers": 2, "seed": 0, "sources": ["a"]}
    cursors = [[{"epoch": 0}, None], [{"epoch": 1}, {"epoch": 2}]]
    saved = {"format": 1, "batches_seen": 6, "layout": layout, "ranks": cursors}
    assert resume_start(saved, layout, 1) == DataStart(6, cursors[1])
    # 12 samples consumed: 4 micro-batches of 3 on one process, found by fast-forwarding (no cursors).
    one = {**layout, "data_parallel_size": 1, "micro_batch_size": 3}
    start = resume_start(saved, one, 0)
    assert (start.batches_seen, start.cursors) == (4, None)
    assert "data_parallel_size 2 -> 1" in start.converted
    # Same layout, another worker count: the cursors do not fit, the position converts 1:1.
    assert resume_start(saved, {**layout, "num_workers": 1}, 0) == DataStart(6, None, "num_workers 2 -> 1")
    with pytest.raises(ValueError, match=r"12 samples .* global batches of 5: set data\.batch_size"):
        resume_start(saved, {**layout, "data_parallel_size": 1, "micro_batch_size": 5}, 0)
