"""Training step time and time to first step: ltxdist vs the baseline users have today (ltx-core + PEFT +
a plain PyTorch loop over per-sample files, benchmarks/baseline_trainer.py), same model, data, LoRA
targets, rank, batch size and dtype, measured in the same run on the same machine.

    python benchmarks/step_bench.py --presets tiny small --steps 30 --repeats 3

Both trainers run as fresh processes and log a wall time per optimizer step; step time is the median
of the per-step intervals after `--warmup` steps, start-up is process start to the end of step 1.
Not a test: numbers depend on the machine. Writes benchmarks/results/step_<hardware>_<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ltxdist.bench.report import load_average, summarize, target_verdict, write_results
from ltxdist.data.sample import decode_sample
from ltxdist.data.shards import load_index, read_shard_records
from ltxdist.data.synthetic import write_synthetic_dataset
from ltxdist.lora.targets import resolve_target_modules
from ltxdist.models import load_transformer
from ltxdist.models.tiny_checkpoint import write_random_checkpoint

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def export_per_sample_files(shards: Path, out: Path) -> None:
    """The same samples as one safetensors file each (the baseline's layout)."""
    out.mkdir(parents=True, exist_ok=True)
    for shard in load_index(shards).shards:
        for record in read_shard_records(shards / shard["name"]):
            sample = decode_sample(record)
            keep = {k: v for k, v in sample.tensors.items() if k != "context_mask"}
            save_file(keep, str(out / f"{sample.key}.safetensors"))


def run_logged(cmd: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one trainer to completion; its log holds a wall time per optimizer step."""
    load = load_average()
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    times = [r["wall_time"] for r in rows if "wall_time" in r]
    if len(times) < 2:
        raise RuntimeError(f"{log} holds {len(times)} timed steps; need at least 2")
    return {
        "startup_s": times[0] - start,
        "intervals": [b - a for a, b in itertools.pairwise(times)],
        "load_avg": load,
    }


def bench_preset(preset: str, args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict:
    ckpt = write_random_checkpoint(work / f"{preset}.safetensors", preset=preset, with_encoders=False)
    shards = work / f"{preset}-shards"
    write_synthetic_dataset(
        shards, ckpt, num_samples=args.samples, samples_per_shard=64, buckets=(args.bucket,)
    )
    files = work / f"{preset}-files"
    export_per_sample_files(shards, files)
    targets = resolve_target_modules(load_transformer(ckpt).model, ["attn"])
    steps = args.warmup + args.steps
    intervals: dict[str, list[float]] = {"ltxdist": [], "baseline": []}
    startup: dict[str, list[float]] = {"ltxdist": [], "baseline": []}
    loads: list[float] = []
    for r in range(args.repeats):
        run_dir = work / f"{preset}-run{r}"
        ltxdist_cmd = [
            str(BIN / "ltxdist-train"),
            f"model.checkpoint={ckpt}",
            f"data.path={shards}",
            f"run.dir={run_dir}",
            f"model.dtype={args.dtype}",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.workers}",
            f"lora.rank={args.rank}",
            f"lora.alpha={args.rank}",
            "lora.targets=[attn]",
            "strategy.first_frame_conditioning_p=0.0",
            f"trainer.max_steps={steps}",
            f"trainer.checkpoint_every_n_steps={steps * 10}",
            "trainer.progress_bar=false",
            "parallel.accelerator=auto",
            "model.create_if_missing=false",
            "logger=none",
        ]
        log = work / f"{preset}-baseline{r}.jsonl"
        baseline_cmd = [
            sys.executable,
            str(HERE / "baseline_trainer.py"),
            "--checkpoint",
            str(ckpt),
            "--data",
            str(files),
            "--out",
            str(log),
            "--steps",
            str(steps),
            "--batch-size",
            str(args.batch_size),
            "--rank",
            str(args.rank),
            "--dtype",
            args.dtype,
            "--workers",
            str(args.workers),
            "--targets",
            *targets,
        ]
        runs = [("ltxdist", ltxdist_cmd, run_dir / "metrics.jsonl"), ("baseline", baseline_cmd, log)]
        if r % 2:
            runs.reverse()  # alternate who goes first, so a drift in machine load hits both alike
        for name, cmd, out in runs:
            result = run_logged(cmd, out, env)
            # interval i ends at step i + 2: drop the ones ending within the warm-up steps
            intervals[name] += result["intervals"][max(0, args.warmup - 1) :]
            startup[name].append(result["startup_s"])
            loads.append(result["load_avg"])
    o, t = summarize(intervals["ltxdist"]), summarize(intervals["baseline"])
    return {
        "preset": preset,
        "ltxdist_step_ms": o["median_s"] * 1e3,
        "ltxdist_p25_p75_ms": f"{o['p25_s'] * 1e3:.1f}-{o['p75_s'] * 1e3:.1f}",
        "baseline_step_ms": t["median_s"] * 1e3,
        "baseline_p25_p75_ms": f"{t['p25_s'] * 1e3:.1f}-{t['p75_s'] * 1e3:.1f}",
        "speedup_vs_baseline": t["median_s"] / o["median_s"],
        "ltxdist_startup_s": summarize(startup["ltxdist"])["median_s"],
        "baseline_startup_s": summarize(startup["baseline"])["median_s"],
        "steps_timed": o["repeats"],
        "load_avg_min_max": f"{min(loads):.1f}-{max(loads):.1f}",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--bucket", default="128x128x17")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of both trainers")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: benchmarks/results of this checkout"
    )
    args = parser.parse_args(argv)
    # Both trainers get the same intra-op thread count. On a small shared machine more threads than
    # free cores turn every small op into a wait for the slowest thread, which swamps what is measured.
    threads = str(args.threads)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    with tempfile.TemporaryDirectory(prefix="ltxdist-step-bench-") as tmp:
        rows = [bench_preset(p, args, Path(tmp), env) for p in args.presets]
    columns = [
        "preset",
        "ltxdist_step_ms",
        "ltxdist_p25_p75_ms",
        "baseline_step_ms",
        "baseline_p25_p75_ms",
        "speedup_vs_baseline",
        "ltxdist_startup_s",
        "baseline_startup_s",
        "steps_timed",
        "load_avg_min_max",
    ]
    verdict = "; ".join(
        f"{r['preset']}: {r['speedup_vs_baseline']:.2f}x ({target_verdict(r['speedup_vs_baseline'] >= 1)})"
        for r in rows
    )
    notes = (
        "Training step (forward, backward, clip, AdamW over LoRA params, data loading, metrics) with the "
        "standard strategy, joint audio, LoRA on every attention projection, both trainers as fresh "
        f"processes with {args.threads} intra-op thread(s), alternating which runs first. Step time: median "
        "of the intervals between optimizer steps after the warm-up steps; start-up: process start to the "
        "end of step 1. speedup_vs_baseline > 1 means ltxdist is faster. load_avg: the machine's 1-minute "
        "load average when each run started (other processes slow both trainers).\n\n"
        f"Target (issue 8): ltxdist no slower than the baseline at equal settings. Measured: {verdict}."
    )
    write_results("step", rows, columns, vars(args), notes=notes, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
