"""HSDP (2 x 2) on 4 CPU processes and DeepSpeed ZeRO-2/3 on 2 (gloo, fp32) against a 1-process run on
the same global batch; resume across layouts (HSDP -> DDP, HSDP -> FSDP2 on 1 process past a damaged
checkpoint, ZeRO-2 -> FSDP2, FSDP2 1 -> 2); kill / signal; what each rank materialised; validation
sampling spread over sharded ranks.

Every run trains the tiny model for 8 steps on a single-bucket dataset read in order (per-sample noise
streams make the draws independent of the layout). The reference is one process with batch 4; the
parallel runs split the global batch of 4 over their data-parallel processes, started by
launch/train.sh (torchrun).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from e2e_utils import compose_train, tiny_validation_overrides, train_in_process
from parallel_helpers import (
    REPORT_ENV,
    adapters,
    assert_same_adapters,
    command,
    env,
    materialize_reports,
    metrics,
    moments,
    run,
)
from safetensors.torch import load_file

from ltxdist.checkpoint import is_complete_checkpoint, read_checkpoint
from ltxdist.training.run_dir import complete_checkpoints

pytestmark = pytest.mark.slow
STEPS = 8
# 3 validation prompts over 4 HSDP ranks: one rank has no job and must still run as many forwards (each
# all-gathers sharded weights), or the run hangs (training/validation.py).
VAL_PROMPTS = ["a red ball", "a blue cube", "a green dot"]


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
def encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """VAEs, vocoder and text connectors (the same transformer weights as tiny_ckpt) and a tiny Gemma:
    what validation sampling needs besides the live model."""
    from ltxdist.models.tiny_checkpoint import write_random_checkpoint
    from ltxdist.models.tiny_encoders import TINY_GEMMA_DIR, write_tiny_gemma

    root = tmp_path_factory.mktemp("encoders")
    ckpt = write_random_checkpoint(root / "ltx-2.3-tiny.safetensors", seed=0, with_encoders=True)
    return ckpt, write_tiny_gemma(root / TINY_GEMMA_DIR, seed=0)


def _materialized(run_dir: Path) -> Path:
    return run_dir.parent / "materialize"


def _recording(run_env: dict[str, str], run_dir: Path) -> dict[str, str]:
    """`run_env`, with every rank writing what it materialised to _materialized(run_dir)."""
    return {**run_env, REPORT_ENV: str(_materialized(run_dir))}


@pytest.fixture(scope="module")
def ref(tiny_ckpt, data, tmp_path_factory) -> Path:
    """1 process, batch 4, plain (no parallel strategy); a checkpoint after every step. It trains in this
    process (nothing in it is about processes), recording what it materialised as the ranks do."""
    out = tmp_path_factory.mktemp("ref") / "run"
    extra = {"trainer.checkpoint_every_n_steps": 1, "trainer.keep_last_k": STEPS}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(REPORT_ENV, str(_materialized(out)))
        train_in_process(compose_train(command(tiny_ckpt, data, out, 1, **extra)[1:]))
    return out


@pytest.fixture(scope="module")
def hsdp(tiny_ckpt, data, run_env, encoders, tmp_path_factory) -> Path:
    """parallel=hsdp 2 x 2 on 4 processes (sharded over 2, replicated twice); also samples the validation
    prompts at the last step (3 prompts over 4 ranks)."""
    out = tmp_path_factory.mktemp("hsdp") / "run"
    enc_ckpt, gemma = encoders
    validation = {**tiny_validation_overrides(VAL_PROMPTS, gemma, STEPS), "validation.checkpoint": enc_ckpt}
    run(
        tiny_ckpt,
        data,
        out,
        4,
        _recording(run_env, out),
        parallel="hsdp",
        **{"parallel.replicate": 2},
        **validation,
    )
    return out


@pytest.fixture(scope="module")
def zero2(tiny_ckpt, data, run_env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero2") / "run"
    run(tiny_ckpt, data, out, 2, run_env, parallel="deepspeed_zero2")
    return out


@pytest.fixture(scope="module")
def zero3(tiny_ckpt, data, run_env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero3") / "run"
    run(tiny_ckpt, data, out, 2, _recording(run_env, out), parallel="deepspeed_zero3")
    return out


def _check_rank_held_a_share(report: dict, *, shards: int, row_reads: bool) -> None:
    """One rank's materialisation record: it holds about 1/shards of the frozen base, it never held the
    whole base at once, and the loader read one tensor at a time (with `row_reads`: only its rows)."""
    full, full_bytes = report["base_elements_full"], report["base_bytes_full"]
    # 1/shards up to uneven splits (FSDP2 rounds rows up on low ranks; ZeRO-3 pads partitions).
    assert 0.9 * full / shards <= report["base_elements_held"] <= 1.05 * full / shards, report
    assert report["peak_base_bytes"] < full_bytes, report
    largest = report["largest_base_tensor_elements"]
    if row_reads:
        assert report["largest_read_elements"] <= -(-largest // shards), report
    else:
        assert 0 < report["largest_read_elements"] <= largest, report


def _check_no_rank_held_the_full_base(
    run_dir: Path, ref: Path, *, row_reads: bool, world: int = 2, shards: int = 2
) -> None:
    reports = materialize_reports(_materialized(run_dir))
    assert [r["rank"] for r in reports] == list(range(world)) and {r["world_size"] for r in reports} == {
        world
    }
    full = reports[0]["base_elements_full"]
    assert all(r["base_elements_full"] == full for r in reports)
    # Between them the ranks hold every weight, once per replica (the shares cover the model).
    held = sum(r["base_elements_held"] for r in reports)
    assert world // shards * full <= held <= 1.05 * world // shards * full
    for report in reports:
        _check_rank_held_a_share(report, shards=shards, row_reads=row_reads)
    # The same check fails on the 1-process reference, which does hold the whole base.
    (whole,) = materialize_reports(_materialized(ref))
    assert whole["base_elements_full"] == full == whole["base_elements_held"]
    with pytest.raises(AssertionError):
        _check_rank_held_a_share(whole, shards=shards, row_reads=row_reads)


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
    lrs = [r["optim/lr"] for r in metrics(run_dir)]
    assert lrs == [r["optim/lr"] for r in metrics(ref)] and len(set(lrs)) > 3
    # The ComfyUI LoRA file is gathered from the shards and written by rank 0.
    name = f"lora/lora_weights_step_{STEPS:06d}.safetensors"
    lora, lora_ref = load_file(str(run_dir / name)), load_file(str(ref / name))
    assert lora.keys() == lora_ref.keys()
    for key in lora_ref:  # bf16 file: one rounding step of the tiny fp32 differences
        torch.testing.assert_close(lora[key].float(), lora_ref[key].float(), rtol=1e-2, atol=1e-4)


def test_hsdp_2x2_on_four_processes_matches_one_process(hsdp, ref):
    _check_matches_reference(hsdp, ref)
    # Each rank materialised half of the base (sharded over 2, not 4: replicated across the 2 replicas),
    # reading only its rows.
    _check_no_rank_held_the_full_base(hsdp, ref, row_reads=True, world=4, shards=2)
    # The checkpoint was written by several ranks (one safetensors file each, each piece once).
    final = hsdp / "checkpoints" / f"step-{STEPS:06d}"
    assert len(list(final.glob("shard-*.safetensors"))) >= 2
    layout = read_checkpoint(final).train_state.layout
    assert (layout["replicate"], layout["shard"], layout["data_parallel_size"]) == (2, 2, 4)
    # Validation with 3 prompts on 4 ranks finished (no rank waited forever in an all-gather) and every
    # video was written: one each by ranks 0-2, none by rank 3.
    out = hsdp / "samples" / f"step-{STEPS:06d}"
    index = json.loads((out / "index.json").read_text())
    assert [v["prompt"] for v in index["videos"]] == VAL_PROMPTS
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(v["file"] for v in index["videos"])


def test_deepspeed_zero2_two_processes_match_one_process(zero2, ref):
    _check_matches_reference(zero2, ref)


def test_deepspeed_zero3_two_processes_match_one_process(zero3, ref):
    _check_matches_reference(zero3, ref)
    # ZeRO-3 materialises block by block, each partitioned right after loading (whole tensors are read,
    # one at a time). NB: DeepSpeed then keeps parameters under stage3_param_persistence_threshold
    # whole on every rank after the first gather; on this tiny model that is all of them.
    _check_no_rank_held_the_full_base(zero3, ref, row_reads=False)


def test_fsdp2_with_sequence_parallel_matches_one_process_and_resumes_on_one(
    tiny_ckpt, data, run_env, ref, tmp_path
):
    """parallel=sequence_parallel (FSDP2 + Ulysses) on 2 processes forming ONE group: each holds half of
    every sample's tokens, both read the same batches of 2, so the global batch equals the reference's."""
    sp_run = tmp_path / "sp"
    overrides = {"parallel.sequence_parallel": 2, "parallel.devices": 2, "data.batch_size": 4}
    run(tiny_ckpt, data, sp_run, 2, run_env, parallel="sequence_parallel", **overrides)
    _check_matches_reference(sp_run, ref)
    # throughput counts each sample once, not once per rank of the group
    last = metrics(sp_run)[-1]
    assert last["throughput/samples_per_s"] == pytest.approx(4 / last["perf/step_time_s"], rel=1e-6)
    # Its checkpoint resumes without sequence parallelism on 1 process (data position: 1 group x 4).
    target = tmp_path / "resumed"
    _resume_from(sp_run, 4, target)
    run(tiny_ckpt, data, target, 1, run_env, parallel="fsdp2", **{"parallel.devices": 1})
    assert_same_adapters(adapters(target, STEPS), adapters(ref, STEPS))
    assert metrics(target)[0]["batches_seen"] == 5


def _resume_from(source: Path, step: int, target: Path, *, make_dirs: bool = True) -> None:
    (target / "checkpoints").mkdir(parents=True, exist_ok=not make_dirs)
    shutil.copytree(source / "checkpoints" / f"step-{step:06d}", target / "checkpoints" / f"step-{step:06d}")


def test_hsdp_checkpoint_resumes_under_fsdp2_on_one_process_past_a_damaged_newer_one(
    tiny_ckpt, data, run_env, hsdp, ref, tmp_path
):
    """HSDP (4 processes) -> FSDP2 (1 process). The newer checkpoint (step 8) has a damaged rank file:
    the resume names it and continues from step 4 instead, ending with the uninterrupted run's
    adapters."""
    target = tmp_path / "run"
    _resume_from(hsdp, 4, target)
    _resume_from(hsdp, STEPS, target, make_dirs=False)
    damaged = sorted((target / "checkpoints" / f"step-{STEPS:06d}").glob("shard-*.safetensors"))[-1]
    damaged.write_bytes(damaged.read_bytes()[:-64])
    proc = run(tiny_ckpt, data, target, 1, run_env, parallel="fsdp2", **{"parallel.devices": 1})
    log = proc.stdout + proc.stderr
    assert f"{damaged}: damaged" in log and "trying the previous complete one" in log, log[-3000:]
    assert_same_adapters(adapters(target, STEPS), adapters(ref, STEPS))
    rows = metrics(target)
    # Data position converted (4 x batch 1 -> 1 x batch 4): the next samples, none repeated or skipped.
    assert [r["step"] for r in rows] == [5, 6, 7, 8] and rows[0]["batches_seen"] == 5


def test_hsdp_checkpoint_resumes_under_ddp(tiny_ckpt, data, run_env, hsdp, ref, tmp_path):
    """HSDP (2 x 2, DTensor pieces) -> DDP on 2 processes (whole tensors on every rank)."""
    target = tmp_path / "run"
    _resume_from(hsdp, 4, target)
    run(tiny_ckpt, data, target, 2, run_env, parallel="ddp")
    assert_same_adapters(adapters(target, STEPS), adapters(ref, STEPS))
    rows = metrics(target)
    assert [r["step"] for r in rows] == [5, 6, 7, 8] and rows[0]["batches_seen"] == 5  # 4 x 1 -> 2 x 2
    # The exported LoRA file (rank 0 writes it) holds the same adapters.
    name = f"lora/lora_weights_step_{STEPS:06d}.safetensors"
    lora, lora_ref = load_file(str(target / name)), load_file(str(ref / name))
    for key in lora_ref:
        torch.testing.assert_close(lora[key].float(), lora_ref[key].float(), rtol=1e-2, atol=1e-4)


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
    # SIGTERM to launch/train.sh (NPROC=1): it reaches the worker through torchrun.
    one = command(tiny_ckpt, data, run_dir, 1, via_launch=True, parallel="fsdp2")
    stopped = _signal_mid_run(one, run_env, run_dir, signal.SIGTERM, 1)
    assert len(list((run_dir / "checkpoints" / f"step-{stopped:06d}").glob("shard-*.safetensors"))) == 1
    # Resume the 1-process checkpoint on 2 processes (resume=auto finds it).
    run(tiny_ckpt, data, run_dir, 2, run_env, parallel="fsdp2")
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "no step missing or repeated"
    assert rows[stopped]["batches_seen"] == stopped + 1  # per-rank position converted from 1 x batch 4
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
        assert got["loss/total"] == pytest.approx(want["loss/total"], rel=1e-5, abs=1e-6), got["step"]
    assert_same_adapters(adapters(run_dir, STEPS), adapters(ref, STEPS))


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _kill_all_ranks_after_checkpoint(
    cmd: list[str], run_env: dict[str, str], run_dir: Path, step: int
) -> None:
    """Start a 2-process run through launch/train.sh and SIGKILL both training processes (no handler,
    no clean-up: a node failure or the OOM killer) as soon as checkpoint `step` is complete."""
    log_path = run_dir.parent / f"{run_dir.name}-killed.log"
    target = run_dir / "checkpoints" / f"step-{step:06d}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, env={**run_env, "NPROC": "2"}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.time() + 300
            while not is_complete_checkpoint(target):
                assert proc.poll() is None, "the run ended before the kill: " + log_path.read_text()[-3000:]
                assert time.time() < deadline, f"no checkpoint {target}"
                time.sleep(0.01)
            # The workers run in their own sessions (torchrun starts them so): kill them by pid.
            ranks = [w for agent in _children(proc.pid) for w in _children(agent)]
            assert len(ranks) == 2, ranks
            for pid in ranks:
                os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=120)  # torchrun sees its workers die and exits
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode != 0


def test_zero2_resume_then_hard_kill_then_fsdp2_resume_follow_the_uninterrupted_run(
    tiny_ckpt, data, run_env, zero2, ref, tmp_path
):
    """ZeRO-2 resumes ZeRO-2's step-4 checkpoint (its optimizer-state restore), both ranks are SIGKILLed
    after step 6, and FSDP2 on 1 process resumes the ZeRO-2 checkpoint (DeepSpeed -> FSDP2, 2 -> 1
    processes): the loss curve, data position and final adapters are the uninterrupted runs'."""
    run_dir = tmp_path / "run"
    _resume_from(zero2, 4, run_dir)
    cmd = command(
        tiny_ckpt,
        data,
        run_dir,
        2,
        parallel="deepspeed_zero2",
        **{"trainer.checkpoint_every_n_steps": 1, "trainer.keep_last_k": STEPS},
    )
    _kill_all_ranks_after_checkpoint(cmd, run_env, run_dir, 6)
    done = [s for s, _ in complete_checkpoints(run_dir)]
    assert 6 in done and done[-1] < STEPS, f"the kill must land mid-run, found checkpoints {done}"
    # Two steps after the ZeRO-2 restore, adapters and AdamW moments are the 1-process run's: moments
    # lost or misplaced in the restore would change both.
    assert_same_adapters(adapters(run_dir, 6), adapters(ref, 6))
    m_got, m_want = moments(run_dir, 6), moments(ref, 6)
    for i in m_want:
        assert float(m_got[i]["step"]) == 6
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(m_got[i][key], m_want[i][key], rtol=1e-4, atol=1e-8)

    resumed = max(done)  # resume=auto takes the newest complete checkpoint: 6, or 7 if the kill was late
    run(tiny_ckpt, data, run_dir, 1, run_env, parallel="fsdp2", **{"parallel.devices": 1})
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(5, STEPS + 1)), "no step missing or repeated"
    # Each part of the loss curve against the uninterrupted run of its own layout (same samples per
    # process, so the same logged numbers): ZeRO-2 on 2 processes, then 1 process with batch 2.
    for got in rows:
        want = metrics(zero2 if got["step"] <= resumed else ref)[got["step"] - 1]
        assert got["step"] == want["step"] and got["batches_seen"] == want["batches_seen"], got["step"]
        assert got["loss/total"] == pytest.approx(want["loss/total"], rel=1e-4, abs=1e-6), got["step"]
    # distinct losses: a shifted curve shows
    assert len({round(r["loss/total"], 6) for r in rows}) == len(rows)
    final = run_dir / "checkpoints" / f"step-{STEPS:06d}"
    assert read_checkpoint(final).train_state.layout["engine"] == "fsdp"  # written by FSDP2
    assert_same_adapters(adapters(run_dir, STEPS), adapters(ref, STEPS))
