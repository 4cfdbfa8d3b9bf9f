"""The soak: faults at random points in real training and preprocessing runs (subprocesses, the tiny
model, fp32 on CPU, 1 or 2 processes over gloo), each trial checked the same way:

- the newest complete checkpoint reads back (and no complete artifact lost a byte to the fault);
- `run.resume=auto` continues from it;
- the final adapters and LoRA file equal an uninterrupted run's;
- the sample ids of every committed step equal the uninterrupted run's (nothing lost or repeated).

Preprocessing trials: the rerun resumes and every manifest row ends up in the shards exactly once, with
the same tensors as an uninterrupted preparation. Run with `make soak`; SOAK_SEED fixes the random
kill points (recorded in the summary JSON)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
from e2e_utils import prepare_command
from fault_helpers import (
    DDP,
    ENV,
    SOAK,
    adapters,
    assert_same_tensors,
    committed_ids,
    complete_artifacts,
    fill,
    lost_bytes,
    metrics,
    overrides,
    partial_files,
    poison_samples,
    small_disk,
    snapshot,
    stream_ids,
    train_command,
)
from safetensors.torch import load_file

from ltxdist.checkpoint import read_checkpoint
from ltxdist.data.sample import decode_sample
from ltxdist.data.shards import load_index, read_shard_records
from ltxdist.training.run_dir import complete_checkpoints

pytestmark = pytest.mark.soak

STEPS = 24
EVERY = 3
SEED = int(os.environ.get("SOAK_SEED", random.SystemRandom().randrange(1 << 30)))
RNG = random.Random(SEED)
SOAK.notes["seed"] = SEED
SINGLE = {"trainer.max_steps": STEPS, "trainer.checkpoint_every_n_steps": EVERY, "trainer.keep_last_k": 50}
TWO = {**SINGLE, **DDP, "parallel.collective_timeout_s": 60}


# -- running and faulting attempts ---------------------------------------------------------------------
class Attempts:
    """Successive attempts of one run (same command: each resumes with run.resume=auto)."""

    def __init__(self, run_dir: Path, args: list[str], nproc: int = 1, log_dir: Path | None = None):
        self.run_dir, self.args, self.nproc = run_dir, args, nproc
        self.log_dir = log_dir or run_dir.parent
        self.count = 0
        self.started_ns = 0

    def start(self, **env: str) -> tuple[subprocess.Popen, Path]:
        self.count += 1
        self.started_ns = time.time_ns()
        log = self.log_dir / f"{self.run_dir.name}-attempt{self.count}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                train_command(self.args, self.nproc),
                env={**ENV, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return proc, log

    def finish(self, timeout: float = 600) -> str:
        proc, log = self.start()
        wait(proc, timeout)
        text = log.read_text()
        assert proc.returncode == 0, text[-4000:]
        return text


def wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        if line.startswith('{"step": '):
            steps.append(int(line.split(",", 1)[0].split(": ")[1]))
    return max(steps)


def progress(attempts: Attempts) -> int:
    """The newest step the current attempt finished (its own ledger files: a killed attempt's metrics
    lines and temporary checkpoints stay until the next attempt starts training and removes them)."""
    newest = 0
    for path in (attempts.run_dir / "ledger").glob("rank-*.jsonl"):
        if int(path.stem.rsplit("-", 1)[1]) < attempts.started_ns:
            continue
        for line in path.read_text().splitlines():
            if line.endswith("}"):
                newest = max(newest, int(line.split(",", 1)[0].split(": ")[1]))
    return newest


def wait_until(
    proc: subprocess.Popen, cond: Callable[[], bool], timeout: float = 300, poll: float = 0.005
) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def ranks(proc: subprocess.Popen) -> dict[int, psutil.Process]:
    """rank -> worker process of a torchrun launch."""
    out = {}
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            env = child.environ()
        except psutil.Error:
            continue
        if "LOCAL_RANK" in env and "instrumented_train" in " ".join(child.cmdline()):
            out[int(env["RANK"])] = child
    return out


def checkpointing(run_dir: Path) -> bool:
    root = run_dir / "checkpoints"
    return root.is_dir() and any(".tmp-" in p.name for p in root.iterdir())


def check_after_fault(run_dir: Path, before: dict[Path, bytes]) -> int | None:
    """The newest complete checkpoint reads back; nothing complete was lost. Returns its step."""
    lost = lost_bytes(before)
    SOAK.bytes_lost += lost
    assert lost == 0, f"{lost} bytes of complete checkpoints / LoRA files were lost"
    done = complete_checkpoints(run_dir)
    if not done:
        return None
    state = read_checkpoint(done[-1][1])
    assert state.train_state.step == done[-1][0]
    return done[-1][0]


def check_final(run_dir: Path, ref: Path, nproc: int = 1) -> None:
    """Same adapters, LoRA file and per-step sample ids as the uninterrupted run; no step twice."""
    assert_same_tensors(adapters(run_dir, STEPS), adapters(ref, STEPS), atol=1e-6)
    name = f"lora/lora_weights_step_{STEPS:06d}.safetensors"
    assert_same_tensors(load_file(str(run_dir / name)), load_file(str(ref / name)), atol=0)
    got, want = committed_ids(run_dir), committed_ids(ref)
    assert sorted(got) == sorted(want) == [(r, s) for r in range(nproc) for s in range(1, STEPS + 1)]
    for key in want:
        assert got[key]["ids"] == want[key]["ids"], f"rank {key[0]} step {key[1]} trained on other samples"
        assert got[key]["skipped"] == want[key]["skipped"]
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, STEPS + 1))
    assert partial_files(run_dir) == []


# -- shared data and references ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def soak_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("soak")


@pytest.fixture(scope="module")
def ref_single(tiny_ckpt, fault_data, soak_root) -> Path:
    run = soak_root / "ref-single"
    Attempts(run, overrides(tiny_ckpt, fault_data, run, **SINGLE)).finish()
    ids = [committed_ids(run)[(0, s)]["ids"][0] for s in range(1, 17)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 16, "the first epoch holds every sample once"
    return run


@pytest.fixture(scope="module")
def ref_ddp(tiny_ckpt, fault_data, soak_root) -> Path:
    run = soak_root / "ref-ddp"
    Attempts(run, overrides(tiny_ckpt, fault_data, run, **TWO), nproc=2).finish()
    return run


# -- SIGKILL -------------------------------------------------------------------------------------------
def _kill_chain(attempts: Attempts, kills: int, fault: str, pick_victim: Callable) -> list[dict]:
    """`kills` attempts each SIGKILLed at a random point (mid-step, or while a checkpoint is being
    written), then one that finishes. Returns the trial records: survived once the caller's final
    comparison passes."""
    run = attempts.run_dir
    trials = []
    for _ in range(kills):
        base = check_after_fault(run, {}) or 0
        mode = RNG.choice(["step", "checkpoint"])
        proc, log = attempts.start(FAULT_SLOW_CHECKPOINT_S="0.4")
        if mode == "step":
            target = base + RNG.randint(1, 2 * EVERY)
            hit = wait_until(proc, lambda t=target: progress(attempts) >= t)
            time.sleep(RNG.uniform(0, 0.15))
        else:  # while writing the first or the second checkpoint after the one it resumed from
            target = base + EVERY * RNG.randint(1, 2) - 1
            hit = wait_until(proc, lambda t=target: progress(attempts) >= t and checkpointing(run))
        assert hit and proc.poll() is None, (
            f"the run ended before the kill ({mode}): {log.read_text()[-3000:]}"
        )
        if base:  # the attempt continued from the previous fault's newest checkpoint
            assert f"resuming from {run / 'checkpoints' / f'step-{base:06d}'}" in log.read_text()
        before = snapshot(complete_artifacts(run))
        pick_victim(proc).send_signal(signal.SIGKILL)
        wait(proc, 180)
        newest = check_after_fault(run, before)
        trials.append(
            SOAK.trial(fault, mode=mode, killed_after_step=progress(attempts), newest_checkpoint=newest)
        )
    newest = complete_checkpoints(run)
    text = attempts.finish()
    if newest:
        assert f"resuming from {newest[-1][1]}" in text, "run.resume=auto continues from the newest"
    return trials


def survived(trials: list[dict]) -> None:
    for t in trials:
        t["survived"] = True


def test_sigkill_one_process_at_random_points(tiny_ckpt, fault_data, soak_root, ref_single):
    run = soak_root / "sigkill-single"
    attempts = Attempts(run, overrides(tiny_ckpt, fault_data, run, **SINGLE))
    trials = _kill_chain(attempts, 10, "sigkill_single_process", lambda proc: psutil.Process(proc.pid))
    check_final(run, ref_single)
    survived(trials)


def test_sigkill_one_of_two_ranks_at_random_points(tiny_ckpt, fault_data, soak_root, ref_ddp):
    run = soak_root / "sigkill-ddp"
    attempts = Attempts(run, overrides(tiny_ckpt, fault_data, run, **TWO), nproc=2)

    def one_rank(proc: subprocess.Popen) -> psutil.Process:
        found: dict[int, psutil.Process] = {}
        wait_until(proc, lambda: len(found.update(ranks(proc)) or found) == 2, timeout=30)
        return found[RNG.randrange(2)]

    trials = _kill_chain(attempts, 4, "sigkill_one_ddp_rank", one_rank)
    check_final(run, ref_ddp, nproc=2)
    survived(trials)


def test_sigkill_during_shard_writing_then_rerun(tmp_path, tiny_encoders_model):
    """ltxdist-prepare killed at random points (often right after a shard was renamed into place and
    before its unit record): every rerun resumes; at the end each row is in the shards exactly once."""
    from ltxdist.data.prepare.demo import CONCEPTS, make_clip

    ckpt, gemma = tiny_encoders_model
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(12):
        make_clip(
            raw / f"clip{i:02d}.mp4",
            CONCEPTS[i % len(CONCEPTS)],
            64,
            64,
            17,
            24.0,
            seed=i,
            caption=f"clip {i}",
        )

    def command(out: Path) -> list[str]:
        return prepare_command(raw, out, ckpt, gemma, "--dtype", "fp32")

    ref = tmp_path / "ref"
    assert subprocess.run(command(ref), env=ENV, capture_output=True, timeout=600).returncode == 0
    out = tmp_path / "out"
    trials: list[dict] = []
    for attempt in range(14):  # until 6 kills landed (an attempt may finish before its kill point)
        if len(trials) == 6:
            break
        shards_before = {p.name for p in out.glob("shard-*.tar")}
        records_before = snapshot(sorted(out.glob("shard-*.unit.json")))
        before = snapshot([p.with_name(p.name.replace(".unit.json", ".tar")) for p in records_before])
        with open(tmp_path / f"prepare-{attempt}.log", "w") as log:
            proc = subprocess.Popen(
                command(out), env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        mode = RNG.choice(["after_shard_rename", "mid_unit"])
        if mode == "after_shard_rename":  # the tar is in place, its unit record not yet written
            hit = wait_until(
                proc,
                lambda seen=shards_before: bool({p.name for p in out.glob("shard-*.tar")} - seen),
                poll=0.001,
            )
        else:  # somewhere while encoding or writing a later unit
            n = len(records_before) + RNG.randint(0, 2)
            hit = wait_until(proc, lambda n=n: len(list(out.glob("shard-*.unit.json"))) >= n)
            time.sleep(RNG.uniform(0, 0.4))
            hit = hit and proc.poll() is None
        if not hit:
            wait(proc, 120)
            SOAK.notes["prepare_attempts_finished_before_kill"] = (
                SOAK.notes.get("prepare_attempts_finished_before_kill", 0) + 1
            )
            continue
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        lost = lost_bytes({**before, **records_before})
        SOAK.bytes_lost += lost
        assert lost == 0
        trials.append(
            SOAK.trial("sigkill_prepare", mode=mode, units_done=len(list(out.glob("shard-*.unit.json"))))
        )
    assert len(trials) == 6, f"only {len(trials)} of the prepare runs were killed before finishing"
    final = subprocess.run(command(out), env=ENV, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stdout[-3000:]

    def samples(directory: Path) -> dict[str, dict[str, torch.Tensor]]:
        found: dict[str, dict[str, torch.Tensor]] = {}
        for shard in load_index(directory).shards:
            for record in read_shard_records(directory / shard["name"]):
                sample = decode_sample(record)
                assert sample.key not in found, f"{sample.key} is in the shards twice"
                found[sample.key] = sample.tensors
        return found

    got, want = samples(out), samples(ref)
    assert sorted(got) == sorted(want) == [f"row{i:08d}" for i in range(12)]
    for key in want:
        assert_same_tensors(got[key], want[key])
    survived(trials)
    SOAK.notes["prepare_stale_tmp_files"] = len(partial_files(out))
    assert partial_files(out) == [], "the reruns removed what the kills left half-written"


# -- preemption signals --------------------------------------------------------------------------------
def _signal_trial(attempts: Attempts, sig: int, fault: str, pick: Callable) -> dict:
    run = attempts.run_dir
    proc, log = attempts.start()
    target = RNG.randint(2, STEPS - 4)
    assert wait_until(proc, lambda: last_step(run) >= target), log.read_text()[-3000:]
    pick(proc).send_signal(sig)
    wait(proc, 300)
    text = log.read_text()
    assert proc.returncode != 0, "a signalled run exits non-zero"
    assert f"{signal.Signals(sig).name} received: checkpoint for step" in text, text[-3000:]
    stopped = check_after_fault(run, {})
    assert stopped == last_step(run), "the checkpoint is written at the step the run stopped at"
    text = attempts.finish()
    assert f"resuming from {run / 'checkpoints' / f'step-{stopped:06d}'}" in text
    return SOAK.trial(fault, stopped_at=stopped)


def test_sigterm_one_process(tiny_ckpt, fault_data, soak_root, ref_single):
    run = soak_root / "sigterm"
    attempts = Attempts(run, overrides(tiny_ckpt, fault_data, run, **SINGLE))
    trial = _signal_trial(attempts, signal.SIGTERM, "sigterm", lambda proc: psutil.Process(proc.pid))
    check_final(run, ref_single)
    survived([trial])


def test_sigusr1_to_one_of_two_ranks(tiny_ckpt, fault_data, soak_root, ref_ddp):
    run = soak_root / "sigusr1"
    attempts = Attempts(run, overrides(tiny_ckpt, fault_data, run, **TWO), nproc=2)

    def one_rank(proc: subprocess.Popen) -> psutil.Process:
        return ranks(proc)[RNG.randrange(2)]

    trial = _signal_trial(attempts, signal.SIGUSR1, "sigusr1_one_ddp_rank", one_rank)
    check_final(run, ref_ddp, nproc=2)
    survived([trial])


# -- full disk, hung rank, vanished shard, NaN bursts ------------------------------------------------------
def test_full_disk_while_checkpointing(tiny_ckpt, fault_data, soak_root, ref_single):
    with small_disk(soak_root / "small-disk", 4096) as (disk, kind):
        if kind != "tmpfs":
            pytest.skip("needs a real small filesystem (mount -t tmpfs): not allowed here")
        run = disk / "run"
        # Logs outside the small disk: the run's own writes are what must fail.
        attempts = Attempts(run, overrides(tiny_ckpt, fault_data, run, **SINGLE), log_dir=soak_root)
        trial = SOAK.trial("full_disk")
        proc, log = attempts.start()
        target = RNG.randint(4, 12)
        assert wait_until(proc, lambda: last_step(run) >= target), log.read_text()[-3000:]
        filler = fill(disk, leave_bytes=16 * 1024)  # metrics lines still fit, a checkpoint does not
        before = snapshot(complete_artifacts(run))
        wait(proc, 300)
        text = log.read_text()
        assert proc.returncode != 0 and "AtomicWriteError" in text, text[-3000:]
        assert "could not write" in text and str(run) in text and "disk or quota is full" in text
        newest = check_after_fault(run, before)
        assert partial_files(run) == [], "a failed write leaves nothing half-written"
        filler.unlink()  # space freed: resume
        attempts.finish()
        check_final(run, ref_single)
        survived([trial])
        trial.update(filled_after_step=target, newest_checkpoint=newest)


def test_hung_rank_times_out_naming_the_flag(tiny_ckpt, fault_data, soak_root, ref_ddp):
    run = soak_root / "hung"
    timeout_s = 20
    args = overrides(tiny_ckpt, fault_data, run, **{**TWO, "parallel.collective_timeout_s": timeout_s})
    attempts = Attempts(run, args, nproc=2)
    trial = SOAK.trial("hung_rank")
    proc, log = attempts.start()
    assert wait_until(proc, lambda: last_step(run) >= RNG.randint(3, 10)), log.read_text()[-3000:]
    victim = ranks(proc)[1]
    victim.send_signal(signal.SIGSTOP)  # alive, holding its sockets, doing nothing: a hung rank
    t0 = time.time()
    wait(proc, timeout_s + 240)
    took = time.time() - t0
    text = log.read_text()
    with_flag = f"parallel.collective_timeout_s={timeout_s} s"
    assert proc.returncode != 0 and with_flag in text, text[-4000:]
    if victim.is_running():
        victim.kill()
    check_after_fault(run, {})
    attempts.args = overrides(tiny_ckpt, fault_data, run, **TWO)
    attempts.finish()
    check_final(run, ref_ddp, nproc=2)
    survived([trial])
    trial["seconds_to_error"] = round(took, 1)


def test_shard_vanishes_mid_epoch(tiny_ckpt, fault_data, soak_root, ref_single, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(fault_data, data)
    run = soak_root / "vanished"
    attempts = Attempts(run, overrides(tiny_ckpt, data, run, **SINGLE))
    trial = SOAK.trial("vanished_shard")
    proc, log = attempts.start()
    assert wait_until(proc, lambda: last_step(run) >= RNG.randint(2, 10)), log.read_text()[-3000:]
    away = tmp_path / "away"
    away.mkdir()
    shards = sorted(data.glob("shard-*.tar"))
    for shard in shards:  # the open one stays readable through its file handle, the next one is gone
        shutil.move(shard, away / shard.name)
    before = snapshot(complete_artifacts(run))
    wait(proc, 300)
    text = log.read_text()
    assert proc.returncode != 0 and "ShardReadError" in text, text[-3000:]
    assert any(str(s) in text for s in shards) and "was removed" in text
    check_after_fault(run, before)
    for shard in shards:
        shutil.move(away / shard.name, shard)
    attempts.finish()
    check_final(run, ref_single)
    survived([trial])


def test_nan_bursts_with_a_kill_match_the_uninterrupted_run(tiny_ckpt, fault_data, soak_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(fault_data, data)
    order = [ids[0] for ids in stream_ids(data, STEPS)]  # 1.5 epochs: poisoned samples come back

    def steps_of(bad: set[str]) -> list[int]:
        return [i + 1 for i, sample in enumerate(order) if sample in bad]

    bad = set(RNG.sample(order[:16], 4))
    while max(len(burst) for burst in _runs(steps_of(bad))) >= 3:  # shorter than K=3: skipped, not fatal
        bad = set(RNG.sample(order[:16], 4))
    steps = steps_of(bad)
    poison_samples(data, {sample: RNG.choice([float("nan"), float("inf"), -float("inf")]) for sample in bad})
    extra = {**SINGLE, "trainer.max_consecutive_nonfinite": 3}
    ref = soak_root / "nan-ref"
    Attempts(ref, overrides(tiny_ckpt, data, ref, **extra)).finish()
    skipped = [s for s in range(1, STEPS + 1) if committed_ids(ref)[(0, s)]["skipped"]]
    want = [s for s in range(1, STEPS + 1) if bad & set(committed_ids(ref)[(0, s)]["ids"])]
    assert skipped == want == steps and metrics(ref)[-1]["train/nonfinite_skipped"] == len(want)
    run = soak_root / "nan-killed"
    attempts = Attempts(run, overrides(tiny_ckpt, data, run, **extra))
    trials = _kill_chain(attempts, 1, "nan_bursts_then_sigkill", lambda proc: psutil.Process(proc.pid))
    check_final(run, ref)
    assert [r["train/nonfinite_skipped"] for r in metrics(run)] == [
        r["train/nonfinite_skipped"] for r in metrics(ref)
    ]
    survived(trials)
    trials[0].update(poisoned_steps=steps, skipped_steps=skipped)


def test_nan_burst_of_k_stops_and_a_repaired_dataset_resumes(
    tiny_ckpt, fault_data, soak_root, ref_single, tmp_path
):
    data = tmp_path / "data"
    shutil.copytree(fault_data, data)
    order = [ids[0] for ids in stream_ids(data, 16)]
    start = RNG.choice([4, 7, 10, 13])  # right after a checkpoint: the newest one predates the burst
    poison_samples(data, {order[s - 1]: float("nan") for s in range(start, start + 3)})
    run = soak_root / "nan-abort"
    attempts = Attempts(
        run, overrides(tiny_ckpt, data, run, **{**SINGLE, "trainer.max_consecutive_nonfinite": 3})
    )
    trial = SOAK.trial("nan_burst_abort", burst=[start, start + 2])
    proc, log = attempts.start()
    wait(proc, 300)
    text = log.read_text()
    assert proc.returncode != 0 and "NonFiniteTrainingError" in text, text[-3000:]
    assert f"(steps {start}..{start + 2})" in text and "trainer.max_consecutive_nonfinite=3" in text
    assert check_after_fault(run, {}) == start - 1
    for shard in load_index(fault_data).shards:  # the corrupt shards replaced by good copies
        shutil.copy(fault_data / shard["name"], data / shard["name"])
    attempts.finish()
    check_final(run, ref_single)
    survived([trial])


def _runs(steps: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in steps:
        if out and out[-1][-1] == s - 1:
            out[-1].append(s)
        else:
            out.append([s])
    return out


@pytest.mark.parametrize("parallel", ["fsdp2", "deepspeed_zero2"])
def test_nan_step_is_skipped_on_every_rank_under_sharded_strategies(
    tiny_ckpt, fault_data, soak_root, tmp_path, parallel, request
):
    """FSDP2 (sharded gradients: the flag is all-reduced) and DeepSpeed (its own overflow check skips,
    ltxdist counts): the step with a corrupt sample on one rank is skipped by both ranks alike, and so is
    the step whose loss is Inf on the other rank while its gradients would be finite."""
    data = tmp_path / "data"
    shutil.copytree(fault_data, data)
    per_rank = {r: stream_ids(data, 6, rank=r, world_size=2) for r in (0, 1)}
    bad_rank = RNG.randrange(2)
    poison_samples(data, {per_rank[bad_rank][2][0]: float("nan")})  # step 3 of that rank
    inf_loss = per_rank[1 - bad_rank][4][0]  # step 5 of the other rank
    run = soak_root / f"nan-{parallel}"
    extra = {**TWO, "parallel": parallel, "trainer.max_steps": 6, "trainer.checkpoint_every_n_steps": 1}
    cache = getattr(request.config, "cache", None)  # DeepSpeed compiles a C++ op once: keep it between runs
    env = {"TORCH_EXTENSIONS_DIR": str(cache.mkdir("torch_extensions") if cache else tmp_path / "ext")}
    trial = SOAK.trial(f"nan_step_{parallel}", bad_rank=bad_rank)
    attempts = Attempts(run, overrides(tiny_ckpt, data, run, **extra), nproc=2)
    proc, log = attempts.start(**env, FAULT_INF_LOSS_IDS=inf_loss)
    wait(proc, 600)
    assert proc.returncode == 0, log.read_text()[-4000:]
    ledger = committed_ids(run)
    skipped = [False, False, True, False, True, False]
    for r in (0, 1):
        assert [ledger[(r, s)]["ids"] for s in range(1, 7)] == per_rank[r]
        assert [ledger[(r, s)]["skipped"] for s in range(1, 7)] == skipped
    assert [row["train/nonfinite_skipped"] for row in metrics(run)] == [0, 0, 1, 1, 2, 2]
    assert_same_tensors(adapters(run, 3), adapters(run, 2))
    assert_same_tensors(adapters(run, 5), adapters(run, 4))
    with pytest.raises(AssertionError):
        assert_same_tensors(adapters(run, 4), adapters(run, 3))
    assert all(torch.isfinite(t).all() for t in adapters(run, 6).values())
    survived([trial])
