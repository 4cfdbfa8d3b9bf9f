"""FSDP2 and DeepSpeed ZeRO-2/3 on 2 CPU processes (gloo, fp32) against a 1-process run on the same
global batch; kill / signal / resume across process counts and strategies.

Every run trains the tiny model for 8 steps on a single-bucket dataset read in order (per-sample noise
streams make the draws independent of the layout). The reference is one process with batch 2; the
parallel runs are two processes with batch 1, started by launch/train.sh (torchrun).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from parallel_helpers import (
    adapters,
    assert_same_adapters,
    command,
    env,
    metrics,
    moments,
    run,
)
from safetensors.torch import load_file

from ltxdist.training.run_dir import complete_checkpoints

pytestmark = pytest.mark.slow
STEPS = 8


@pytest.fixture(scope="module")
def data(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ltxdist.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("parallel-data")
    write_synthetic_dataset(out, tiny_ckpt, num_samples=16, samples_per_shard=4, seed=1)
    return out


@pytest.fixture(scope="module")
def run_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return env(request.config.cache.mkdir("torch_extensions"))


@pytest.fixture(scope="module")
def ref(tiny_ckpt, data, run_env, tmp_path_factory) -> Path:
    """1 process, batch 2, plain (no parallel strategy); a checkpoint after every step."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run(
        tiny_ckpt,
        data,
        out,
        1,
        run_env,
        **{"trainer.checkpoint_every_n_steps": 1, "trainer.keep_last_k": STEPS},
    )
    return out


@pytest.fixture(scope="module")
def fsdp2(tiny_ckpt, data, run_env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp2") / "run"
    run(tiny_ckpt, data, out, 2, run_env, parallel="fsdp2")
    return out


@pytest.fixture(scope="module")
def zero3(tiny_ckpt, data, run_env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero3") / "run"
    run(tiny_ckpt, data, out, 2, run_env, parallel="deepspeed_zero3")
    return out


def _check_matches_reference(run_dir: Path, ref: Path) -> None:
    got, want = adapters(run_dir, STEPS), adapters(ref, STEPS)
    moved = max((want[k] - adapters(ref, 1)[k]).abs().max() for k in want if k.endswith("lora_B"))
    assert moved > 1e-3, "training must move the adapters for the comparison to mean anything"
    assert_same_adapters(got, want)
    # A wrong reference fails at this tolerance: one optimizer step less.
    with pytest.raises(AssertionError):
        assert_same_adapters(got, adapters(ref, STEPS - 1))
    # The optimizer state is the same too (same format under every strategy).
    m_got, m_want = moments(run_dir, STEPS), moments(ref, STEPS)
    for i in m_want:
        assert float(m_got[i]["step"]) == float(m_want[i]["step"]) == STEPS
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(m_got[i][key], m_want[i][key], rtol=1e-4, atol=1e-8)
    # The learning rate steps once per optimizer step, whatever the number of processes.
    lrs = [r["lr"] for r in metrics(run_dir)]
    assert lrs == [r["lr"] for r in metrics(ref)] and len(set(lrs)) > 3
    # The ComfyUI LoRA file is gathered from the shards and written by rank 0.
    name = f"lora/lora_weights_step_{STEPS:06d}.safetensors"
    lora, lora_ref = load_file(str(run_dir / name)), load_file(str(ref / name))
    assert lora.keys() == lora_ref.keys()
    for key in lora_ref:  # bf16 file: one rounding step of the tiny fp32 differences
        torch.testing.assert_close(lora[key].float(), lora_ref[key].float(), rtol=1e-2, atol=1e-4)


def test_fsdp2_two_processes_match_one_process(fsdp2, ref):
    _check_matches_reference(fsdp2, ref)
    shards = fsdp2 / "checkpoints" / f"step-{STEPS:06d}" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == ["rank-00000.safetensors", "rank-00001.safetensors"]


def test_deepspeed_zero2_two_processes_match_one_process(tiny_ckpt, data, run_env, ref, tmp_path):
    run(tiny_ckpt, data, tmp_path / "run", 2, run_env, parallel="deepspeed_zero2")
    _check_matches_reference(tmp_path / "run", ref)


def test_deepspeed_zero3_two_processes_match_one_process(zero3, ref):
    _check_matches_reference(zero3, ref)


def _resume_from(source: Path, step: int, target: Path) -> None:
    (target / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / f"step-{step:06d}", target / "checkpoints" / f"step-{step:06d}")


def test_fsdp2_one_process_resumes_a_two_process_checkpoint(tiny_ckpt, data, run_env, fsdp2, ref, tmp_path):
    target = tmp_path / "run"
    _resume_from(fsdp2, 4, target)
    run(tiny_ckpt, data, target, 1, run_env, parallel="fsdp2", **{"parallel.devices": 1})
    assert_same_adapters(adapters(target, STEPS), adapters(ref, STEPS))
    rows = metrics(target)
    # Data position converted (2 x batch 1 -> 1 x batch 2): the next samples, none repeated or skipped.
    assert [r["step"] for r in rows] == [5, 6, 7, 8] and rows[0]["batches_seen"] == 5


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before the signal was sent"
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(f'"step": {step},' in line for line in path.read_text().splitlines()):
            return
        time.sleep(0.05)
    raise TimeoutError(f"no step {step} in {run_dir}")


def _signal_mid_run(cmd: list[str], run_env: dict[str, str], run_dir: Path, sig: int, nproc: int) -> int:
    """Start a run, send `sig` to its first process after step 2, return the step it checkpointed."""
    log_path = run_dir.parent / f"{run_dir.name}-signal.log"
    with open(log_path, "w") as log:  # a file, not a pipe: nobody reads while the run goes on
        proc = subprocess.Popen(
            cmd,
            env={**run_env, "NPROC": str(nproc)},
            stdout=log,
            stderr=subprocess.STDOUT,  # Hydra's logging goes to stdout
            start_new_session=True,
        )
        try:
            _wait_for_step(run_dir, 2, proc)
            os.kill(proc.pid, sig)  # the training process, or launch/train.sh which forwards it
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    out = log_path.read_text()
    assert proc.returncode != 0, "a signalled run exits non-zero"
    assert f"{signal.Signals(sig).name} received: checkpoint for step" in out, out[-3000:]
    done = [s for s, _ in complete_checkpoints(run_dir)]
    last = [r["step"] for r in metrics(run_dir)][-1]
    assert done and done[-1] == last, "the checkpoint is written at the step the run stopped at"
    assert 2 <= last < STEPS, f"the signal must land mid-run (stopped at {last})"
    return last


def test_sigterm_checkpoints_and_two_processes_resume_a_one_process_fsdp2_run(
    tiny_ckpt, data, run_env, ref, tmp_path
):
    run_dir = tmp_path / "run"
    one = command(tiny_ckpt, data, run_dir, 1, parallel="fsdp2", **{"parallel.devices": 1})
    stopped = _signal_mid_run(one, run_env, run_dir, signal.SIGTERM, 1)
    assert (run_dir / "checkpoints" / f"step-{stopped:06d}" / "shards" / "rank-00000.safetensors").is_file()
    # Resume the 1-process checkpoint on 2 processes (resume=auto finds it).
    run(tiny_ckpt, data, run_dir, 2, run_env, parallel="fsdp2")
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "no step missing or repeated"
    assert rows[stopped]["batches_seen"] == stopped + 1  # per-rank position converted from 1 x batch 2
    assert_same_adapters(adapters(run_dir, STEPS), adapters(ref, STEPS))


def test_sigusr1_checkpoints_requeues_and_the_resumed_zero3_run_matches(
    tiny_ckpt, data, run_env, zero3, ref, tmp_path
):
    # A stand-in `scontrol` records the requeue the job would ask SLURM for.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
    (fake_bin / "scontrol").chmod(0o755)
    slurm_env = {**run_env, "PATH": f"{fake_bin}:{run_env['PATH']}", "SLURM_JOB_ID": "4242"}
    run_dir = tmp_path / "run"
    cmd = command(tiny_ckpt, data, run_dir, 2, parallel="deepspeed_zero3")
    stopped = _signal_mid_run(cmd, slurm_env, run_dir, signal.SIGUSR1, 2)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    # The "requeued job": the same command again resumes from the checkpoint.
    run(tiny_ckpt, data, run_dir, 2, slurm_env, parallel="deepspeed_zero3")
    rows, uninterrupted = metrics(run_dir), metrics(zero3)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["batches_seen"] for r in rows] == [r["batches_seen"] for r in uninterrupted]
    # The loss curve after the resume is the uninterrupted run's (same layout: the same numbers).
    for got, want in zip(rows[stopped:], uninterrupted[stopped:], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), got["step"]
    assert_same_adapters(adapters(run_dir, STEPS), adapters(ref, STEPS))
