"""Resume benchmark (issue 18): time to resume a run against the steps it had done, with the data
position restored by seeking to the saved stream cursors (this code) beside re-reading every consumed
batch (the replay of ltxdist before cursors).

    python benchmarks/resume_bench.py --steps 100 1000 10000

1. One real training run of the tiny model on synthetic shards (`ltxdist-train`, 1 process, batch 2, two
   buckets, shuffle buffer 64, 2 DataLoader workers) to one step past the largest step count, keeping
   the checkpoints of every step count asked for.
2. Data position alone, in this process, median of `--repeats`: DataLoader creation to the first batch
   after the position of each checkpoint, three ways:
     seek     the saved cursors (what a resumed run with the same layout does),
     headers  cursors found from tar headers (what a run resumed on another layout does),
     replay   the stream of the baseline commit (`--baseline-ref`, loaded from git) skipping the consumed
              batches the way it did: reading, decoding and collating each of them.
   All three must give the same first batch (checked).
3. Whole resume, median of `--e2e-repeats` fresh processes per step count and code: process start to
   the end of the first resumed optimizer step (its metrics.jsonl wall time), for this code (seek) and
   for the baseline commit's code (replay), run from an extracted copy of that commit's `ltxdist/`
   and `conf/`. The baseline reads only its own checkpoint format (before torch.distributed.checkpoint),
   so it resumes from the same step of a second, identical training run made with its code (`run-
   baseline`, trained once and kept with `--workdir`). Each resumed step must reproduce its own code's
   uninterrupted run (the loss of that step to 1e-5: the same batch, noise and adapters). The two codes'
   losses are not compared with each other: sigma sampling and the LoRA linear's summation order changed
   since, so their trajectories drift apart; that both read the same batches is what part 2 checks.

The 1-minute load average is recorded with every row (a shared machine slows everything). Not a test.
Writes benchmarks/results/resume_<hardware>_<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ltxdist.bench.report import load_average, summarize, write_results
from ltxdist.checkpoint import read_train_state
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.data.synthetic import write_synthetic_dataset
from ltxdist.models.tiny_checkpoint import write_random_checkpoint

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BASELINE_REF = "cac9636"  # the last commit whose resume replays every consumed batch
BUCKETS = ("64x64x17", "96x64x9")
SEED = 0


def train_args(args: argparse.Namespace, ckpt: Path, data: Path, run: Path, max_steps: int) -> list[str]:
    every = math.gcd(*args.steps)
    values = {
        "experiment": "tiny_demo",
        "model.checkpoint": ckpt,
        "model.dtype": "float32",
        "data.path": data,
        "data.batch_size": args.batch_size,
        "data.num_workers": args.workers,
        "data.shuffle_buffer": args.shuffle_buffer,
        "run.dir": run,
        "run.seed": SEED,
        "trainer.progress_bar": "false",
        "trainer.max_steps": max_steps,
        "trainer.checkpoint_every_n_steps": every,
        "trainer.keep_last_k": max(args.steps) // every + 2,  # and the final one
        "lora.rank": 4,
        "lora.alpha": 8,
    }
    return [f"{k}={v}" for k, v in values.items()]


def checkpoint_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:06d}"


# -- the baseline commit's code ---------------------------------------------------------------------
def extract_baseline(ref: str, out: Path) -> Path:
    """`ltxdist/`, `conf/` and `kernels/` of commit `ref`, from git (no checkout is touched)."""
    archive = subprocess.run(
        ["git", "archive", ref, "ltxdist", "conf", "kernels"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(out, filter="data")
    return out


def baseline_stream_module(source: Path) -> Any:
    """The baseline commit's ltxdist/data/streaming.py as a module of its own (its imports resolve to
    this checkout's shard reader, sample decoder and collate, which read the same bytes the same way)."""
    spec = importlib.util.spec_from_file_location("baseline_streaming", source / "ltxdist/data/streaming.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# -- data position alone ----------------------------------------------------------------------------
def first_batch_time(make_stream: Any, workers: int) -> tuple[float, list[str]]:
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(make_stream(), batch_size=None, num_workers=workers)
    batch = next(iter(loader))
    return time.perf_counter() - start, list(batch["ids"])


def bench_data(args: argparse.Namespace, data: Path, run: Path, baseline: Any) -> list[dict[str, Any]]:
    plan = StreamPlan(batch_size=args.batch_size, seed=SEED, shuffle_buffer=args.shuffle_buffer)
    old_plan = baseline.StreamPlan(batch_size=args.batch_size, seed=SEED, shuffle_buffer=args.shuffle_buffer)
    rows = []
    for steps in args.steps:
        position = read_train_state(checkpoint_dir(run, steps)).data
        seen, cursors = position["batches_seen"], position["ranks"][0]
        held = sum(len(c["buffer"]) + len(c["pending"]) for c in cursors if c)

        def headers(seen: int = seen) -> CachedLatentStream:
            stream = CachedLatentStream(data, plan, skip_batches=seen)
            stream.cursors = stream.cursors_after(seen, args.workers)
            return stream

        modes = {
            "seek": lambda seen=seen, cursors=cursors: CachedLatentStream(data, plan, seen, cursors),
            "headers": headers,
            "replay": lambda seen=seen: baseline.CachedLatentStream(data, old_plan, skip_batches=seen),
        }
        firsts = {}
        for mode, make in modes.items():
            load = load_average()
            samples = []
            for _ in range(args.repeats):
                seconds, firsts[mode] = first_batch_time(make, args.workers)
                samples.append(seconds)
            stats = summarize(samples)
            rows.append(
                {
                    "steps": steps,
                    "how": mode,
                    "batches_before": seen,
                    "consumed_decoded_again": seen * args.batch_size if mode == "replay" else 0,
                    "buffered_reread": held,
                    "first_batch_s": stats["median_s"],
                    "p25_s": stats["p25_s"],
                    "p75_s": stats["p75_s"],
                    "load_avg": load,
                }
            )
            print(f"data  steps {steps:>6} {mode:8s} {stats['median_s']:.3f} s", flush=True)
        if len({tuple(ids) for ids in firsts.values()}) != 1:
            raise RuntimeError(f"step {steps}: the resumed first batch differs between modes: {firsts}")
    return rows


# -- whole resume -----------------------------------------------------------------------------------
_BASELINE_MAIN = (
    "import sys; sys.path.insert(0, {src!r}); import ltxdist; "
    "assert ltxdist.__file__.startswith({src!r}), ltxdist.__file__; "
    "from ltxdist.training.train import main; sys.argv[0] = 'ltxdist-train'; main()"
)


def trained_to(run: Path, step: int) -> bool:
    """Whether `run` (kept with --workdir) logged optimizer step `step`."""
    metrics = run / "metrics.jsonl"
    return metrics.is_file() and any(json.loads(line)["step"] == step for line in metrics.open())


def step_row(run: Path, step: int) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if r["step"] == step]
    return row


def step_loss(run: Path, step: int) -> float:
    row = step_row(run, step)
    return float(row.get("loss/total", row.get("loss")))  # the baseline logs "loss"


def resume_once(cmd: list[str], env: dict[str, str], run: Path, step: int) -> tuple[float, float]:
    """Process start to the end of optimizer step `step` (its metrics line); and its loss."""
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"resume failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return step_row(run, step)["wall_time"] - start, step_loss(run, step)


def bench_e2e(
    args: argparse.Namespace,
    ckpt: Path,
    data: Path,
    runs: dict[str, Path],
    baseline_src: Path,
    work: Path,
) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    rows = []
    for steps in args.steps:
        losses: dict[str, float] = {}
        for code in ("seek", "replay"):
            load = load_average()
            samples = []
            for i in range(args.e2e_repeats):
                target = work / f"e2e-{steps}-{code}-{i}"
                (target / "checkpoints").mkdir(parents=True)
                shutil.copytree(checkpoint_dir(runs[code], steps), checkpoint_dir(target, steps))
                overrides = train_args(args, ckpt, data, target, steps + 1)
                if code == "seek":
                    cmd = [str(BIN / "ltxdist-train"), *overrides]
                else:
                    cmd = [sys.executable, "-c", _BASELINE_MAIN.format(src=str(baseline_src)), *overrides]
                seconds, losses[code] = resume_once(cmd, env, target, steps + 1)
                samples.append(seconds)
                shutil.rmtree(target)
            stats = summarize(samples)
            rows.append(
                {
                    "steps": steps,
                    "code": "this (seek)" if code == "seek" else f"{args.baseline_ref} (replay)",
                    "resume_to_first_step_s": stats["median_s"],
                    "min_s": stats["min_s"],
                    "max_s": stats["max_s"],
                    "load_avg": load,
                }
            )
            print(f"e2e   steps {steps:>6} {code:8s} {stats['median_s']:.2f} s", flush=True)
        for code, loss in losses.items():
            uninterrupted = step_loss(runs[code], steps + 1)
            if not math.isclose(loss, uninterrupted, rel_tol=1e-5):
                raise RuntimeError(
                    f"{code}: the resumed step {steps + 1} has loss {loss}, the uninterrupted run "
                    f"{uninterrupted}: the resume did not continue the run"
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--samples", type=int, default=256, help="synthetic samples (16 per shard)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shuffle-buffer", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="data-position timings per mode and step")
    parser.add_argument("--e2e-repeats", type=int, default=3, help="fresh resumed processes per step")
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run here (default: temporary)")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="steps 10 50 200, 1 repeat: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.e2e_repeats = [10, 50, 200], 1, 1
    args.steps = sorted(args.steps)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="resume-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ckpt = write_random_checkpoint(work / "ltx-2.3-tiny.safetensors", seed=0)
        data = work / "data"
        if not (data / "index.json").is_file():
            write_synthetic_dataset(
                data, ckpt, num_samples=args.samples, samples_per_shard=16, buckets=BUCKETS
            )
        run = work / "run"
        trained = work / "train_seconds.json"  # kept with the run, for a rerun that reuses it
        # One step past the last step count: each resumed run's first step has an uninterrupted twin.
        last = max(args.steps) + 1
        if not trained_to(run, last):
            shutil.rmtree(run, ignore_errors=True)
            started = time.perf_counter()
            cmd = [str(BIN / "ltxdist-train"), *train_args(args, ckpt, data, run, last)]
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"training failed:\n{proc.stderr[-3000:]}")
            trained.write_text(json.dumps(time.perf_counter() - started))
        train_s = float(json.loads(trained.read_text())) if trained.is_file() else float("nan")
        print(f"trained {last} steps in {train_s:.0f} s", flush=True)

        baseline_src = extract_baseline(args.baseline_ref, work / "baseline")
        data_rows = bench_data(args, data, run, baseline_stream_module(baseline_src))
        # The baseline's own checkpoints (its format): the same training run made with its code.
        baseline_run = work / "run-baseline"
        if not trained_to(baseline_run, last):
            shutil.rmtree(baseline_run, ignore_errors=True)
            overrides = train_args(args, ckpt, data, baseline_run, last)
            cmd = [sys.executable, "-c", _BASELINE_MAIN.format(src=str(baseline_src)), *overrides]
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"baseline training failed:\n{proc.stderr[-3000:]}")
        runs = {"seek": run, "replay": baseline_run}
        e2e_rows = bench_e2e(args, ckpt, data, runs, baseline_src, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    notes = (
        f"Resume of the tiny model at {', '.join(map(str, args.steps))} steps (batch {args.batch_size}, "
        f"{args.samples} synthetic samples in two buckets, shuffle buffer {args.shuffle_buffer}, "
        f"{args.workers} DataLoader workers); checkpoints from one real training run of "
        f"{max(args.steps) + 1} steps ({train_s:.0f} s). Main table: the whole resume, "
        "process start to the end of the first resumed step, this code (data position restored by seeking "
        f"to the saved cursors) vs commit {args.baseline_ref} (replays every consumed batch), same "
        "step of two identical training runs (each code reads its own checkpoint format); each resumed "
        "step reproduces its code's uninterrupted run (its loss to 1e-5, checked). Second table: the data "
        "position alone, DataLoader creation to the first batch, in one process. `consumed_decoded_again`: "
        "samples consumed before the checkpoint that are read and decoded again (replay: all of them; "
        "headers reads only their tar headers, JSON and safetensors headers). `buffered_reread`: the "
        "samples that were waiting in the shuffle buffers and partial batches of the workers, which every "
        "way reads again (a replay refills them too)."
    )
    write_results(
        "resume",
        e2e_rows,
        ["steps", "code", "resume_to_first_step_s", "min_s", "max_s", "load_avg"],
        {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        notes=notes,
        out_dir=args.out_dir,
        tables={
            "Data position alone (DataLoader creation to the first batch, seconds)": (
                data_rows,
                [
                    "steps",
                    "how",
                    "batches_before",
                    "consumed_decoded_again",
                    "buffered_reread",
                    "first_batch_s",
                    "p25_s",
                    "p75_s",
                    "load_avg",
                ],
            )
        },
    )


if __name__ == "__main__":
    main()
