"""Peak memory and step time of LoRA training under each parallel config, on the GPUs of this machine.

    python benchmarks/parallel_bench.py                       # full-size LTX-2.3 22B, 768x448x121, rank 128
    python benchmarks/parallel_bench.py --configs fsdp2 deepspeed_zero3 --steps 10
    python benchmarks/parallel_bench.py --tiny                # CPU smoke test: tiny model, 2 processes, gloo

Every config runs the real training path (`ltxdist.training.train.train`: LightningModule, strategy,
data stream from webdataset shards, checkpoint + LoRA export at the end) under torchrun with one
process per GPU. The full-size model has random weights: the base checkpoint is a metadata-only
"skeleton" (config + version, no tensors) and the worker fills the weights with random values where
the loader would read them (44 GB of random bytes would only measure the disk). The tiny preset uses a
real tiny checkpoint and the unpatched loader.

Step time: median (and p25/p75) of the intervals between optimizer steps after `--warmup` steps, from
the run's metrics.jsonl. Peak memory: `torch.cuda.max_memory_allocated` / `_reserved`, the maximum over
ranks (on CPU: peak RSS). A config that runs out of memory is reported as OOM, not dropped.
Writes benchmarks/results/parallel_<hardware>_<date>.{json,md}. Not a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
CONFIGS = ("ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3")
COLUMNS = [
    "config",
    "world",
    "status",
    "step_median_s",
    "step_p25_s",
    "step_p75_s",
    "samples_per_s",
    "peak_alloc_gib",
    "peak_reserved_gib",
    "peak_rss_gib",
]
SKELETON_KEY = "ltxdist_benchmark_skeleton"


# -- worker (one per process, under torchrun) -------------------------------------------------------
def _random_base_weights(
    model: torch.nn.Module, path: Path, dtype: torch.dtype | None, *, select: Any = None
) -> None:
    """Stands in for `copy_base_weights`: fill this rank's part of every base weight at random, on its
    device (same scales as ltxdist.models.init, which works on whole CPU tensors)."""
    from ltxdist.parallel.shard_rows import local_tensor

    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name.endswith((".lora_A", ".lora_B")) or (select is not None and not select(name)):
                continue
            local = local_tensor(tensor)
            leaf = name.rsplit(".", 1)[-1]
            if "scale_shift_table" in leaf:
                local.normal_(0.0, 1.0 / math.sqrt(tensor.shape[-1]))
            elif leaf == "weight" and tensor.ndim == 2:
                local.normal_(0.0, 1.0 / math.sqrt(tensor.shape[1]))
            elif leaf == "weight":
                local.fill_(1.0)
            else:
                local.zero_()


def worker(args: argparse.Namespace) -> None:
    from hydra import compose, initialize_config_dir

    import ltxdist.parallel.materialize as materialize
    import ltxdist.training.module as module
    from ltxdist.config.store import CONF_DIR, register_configs
    from ltxdist.training.train import train

    if args.skeleton:
        module.check_transformer_keys = lambda model, path: None  # the skeleton holds no tensors
        materialize.copy_base_weights = _random_base_weights
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    on_gpu = torch.cuda.is_available() and cfg.parallel.accelerator != "cpu"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    train(cfg)
    # The process group outlives trainer.fit: its rank, not an environment variable, names the file.
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    import resource

    stats = {"rank": rank, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if on_gpu:
        stats["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
        stats["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    (Path(args.stats_dir) / f"rank-{rank:05d}.json").write_text(json.dumps(stats))


# -- orchestrator -------------------------------------------------------------------------------------
def _skeleton_checkpoint(preset: str, out: Path) -> Path:
    from ltxdist.io import save_safetensors_atomic
    from ltxdist.models.presets import LTX23_MODEL_VERSION, transformer_config

    metadata = {"config": json.dumps(transformer_config(preset)), "model_version": LTX23_MODEL_VERSION}
    save_safetensors_atomic({SKELETON_KEY: torch.zeros(1)}, out, metadata=metadata)
    return out


def _prepare(args: argparse.Namespace, work: Path) -> tuple[Path, Path, bool]:
    from ltxdist.data.synthetic import write_synthetic_dataset

    preset = "tiny" if args.tiny else args.preset
    if args.random_weights:
        ckpt, skeleton = _skeleton_checkpoint(preset, work / f"{preset}-skeleton.safetensors"), True
    else:
        from ltxdist.models.tiny_checkpoint import write_random_checkpoint

        ckpt, skeleton = write_random_checkpoint(work / f"{preset}.safetensors", preset=preset), False
    shards = work / "shards"
    write_synthetic_dataset(
        shards, ckpt, num_samples=args.samples, samples_per_shard=4, buckets=(args.bucket,)
    )
    return ckpt, shards, skeleton


def _overrides(args: argparse.Namespace, name: str, ckpt: Path, shards: Path, run_dir: Path) -> list[str]:
    preset = "tiny" if args.tiny else args.preset
    return [
        f"model={preset}",
        f"model.checkpoint={ckpt}",
        f"model.dtype={args.dtype}",
        "model.gradient_checkpointing=true",
        *(["model.create_if_missing=false"] if preset == "tiny" else []),  # an option of model=tiny only
        f"lora.rank={args.rank}",
        f"lora.alpha={args.rank}",
        f"lora.targets=[{','.join(args.targets)}]",
        "data=synthetic",
        f"data.path={shards}",
        "data.synthetic_if_missing=false",
        f"data.batch_size={args.batch_size}",
        "data.shuffle_buffer=1",
        f"data.num_workers={args.num_workers}",
        f"parallel={name}",
        f"parallel.devices={args.nproc}",
        f"parallel.accelerator={'cpu' if args.tiny else 'gpu'}",
        *(["parallel.process_group_backend=gloo"] if args.tiny else []),
        f"trainer.max_steps={args.warmup + args.steps}",
        "trainer.checkpoint_every_n_steps=1000000",  # one checkpoint + export at the end, not timed
        "trainer.progress_bar=false",
        "logger=none",
        f"run.dir={run_dir}",
        "run.resume=never",
    ]


def bench_config(
    args: argparse.Namespace, name: str, ckpt: Path, shards: Path, skeleton: bool, work: Path
) -> dict:
    from ltxdist.bench.report import summarize

    run_dir, stats_dir = work / name, work / f"{name}-stats"
    # The benchmark's own scratch run of an earlier invocation with this --work-dir: run.resume=never
    # (a fresh, timed run) refuses a folder that holds checkpoints, so it goes first.
    shutil.rmtree(run_dir, ignore_errors=True)
    stats_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(args.nproc),
        str(Path(__file__).resolve()),
        "--worker",
        "--stats-dir",
        str(stats_dir),
        *(["--skeleton"] if skeleton else []),
        "--",
        *_overrides(args, name, ckpt, shards, run_dir),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.tiny:
        env.setdefault("OMP_NUM_THREADS", "1")
    row: dict[str, Any] = {"config": name, "world": args.nproc}
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    row["wall_s"] = round(time.time() - start, 1)
    log = proc.stdout + proc.stderr
    (work / f"{name}.log").write_text(log)
    if proc.returncode != 0:
        row["status"] = "OOM" if "out of memory" in log.lower() else f"failed (exit {proc.returncode})"
        print(f"{name}: {row['status']}; last lines:\n{log[-2000:]}", file=sys.stderr)
        return row
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["wall_time"] for r in rows]
    intervals = [b - a for a, b in itertools.pairwise(times)][args.warmup - 1 :]
    timing = summarize(intervals)
    ranks = [json.loads(p.read_text()) for p in sorted(stats_dir.glob("rank-*.json"))]
    row.update(
        status="ok",
        step_median_s=timing["median_s"],
        step_p25_s=timing["p25_s"],
        step_p75_s=timing["p75_s"],
        samples_per_s=args.nproc * args.batch_size / timing["median_s"],
        peak_rss_gib=max(r["peak_rss_gib"] for r in ranks),
    )
    if "peak_alloc_gib" in ranks[0]:
        row["peak_alloc_gib"] = max(r["peak_alloc_gib"] for r in ranks)
        row["peak_reserved_gib"] = max(r["peak_reserved_gib"] for r in ranks)
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, 2 processes, gloo")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--preset", default="ltx23_22b")
    parser.add_argument("--bucket", default=None, help="WxHxF (default 768x448x121; tiny: 64x64x17)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default 128; tiny: 8)")
    parser.add_argument("--targets", nargs="+", default=["attn"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--nproc", type=int, default=None, help="processes (default: all GPUs; tiny: 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny: 4)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="model.dtype (default bfloat16; tiny: float32)")
    parser.add_argument(
        "--random-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="metadata-only base checkpoint, weights drawn in place (default: on, off with --tiny)",
    )
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per config")
    parser.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary directory")
    # worker mode (internal): run one config inside torchrun
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skeleton", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stats-dir", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.bucket = args.bucket or ("64x64x17" if tiny else "768x448x121")
    args.rank = args.rank or (8 if tiny else 128)
    args.steps = args.steps or (4 if tiny else 10)
    args.dtype = args.dtype or ("float32" if tiny else "bfloat16")
    args.num_workers = 0 if tiny else args.num_workers
    if args.random_weights is None:
        args.random_weights = not tiny
    if args.nproc is None:
        args.nproc = 2 if tiny else max(1, torch.cuda.device_count())
    if not tiny and not args.worker and not torch.cuda.is_available():
        parser.error("no GPU: the full-size benchmark needs CUDA (use --tiny for the CPU smoke test)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    from ltxdist.bench.report import write_results

    with tempfile.TemporaryDirectory(prefix="parallel-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt, shards, skeleton = _prepare(args, work)
        rows = [bench_config(args, name, ckpt, shards, skeleton, work) for name in args.configs]
    model = "tiny" if args.tiny else args.preset
    notes = (
        f"{model} ({'random weights' if args.random_weights else 'checkpoint file'}), bucket {args.bucket}, "
        f"LoRA rank {args.rank} on {'+'.join(args.targets)}, batch {args.batch_size} per process, "
        f"{args.dtype} base, activation checkpointing on, {args.nproc} process(es). Step time: median over "
        f"{args.steps} steps after {args.warmup} warm-up steps."
        + (
            " CPU smoke test of the benchmark itself: the numbers say nothing about GPUs."
            if args.tiny
            else ""
        )
    )
    config = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("overrides",)
    }
    write_results("parallel", rows, COLUMNS, config, notes=notes, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
