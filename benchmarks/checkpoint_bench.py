"""Save and load time of ltxdist checkpoints against checkpoint size and number of ranks.

    python benchmarks/checkpoint_bench.py                          # 16 / 64 / 256 MB on 1 / 2 / 4 ranks
    python benchmarks/checkpoint_bench.py --sizes-mb 8 --ranks 1 2 --repeats 1     # smoke run

Each of N CPU processes (gloo) holds FSDP2-sharded LoRA-shaped adapters (pairs of (r, W) and (W, r)
matrices, fp32) and their AdamW state (exp_avg, exp_avg_sq, step), as a rank of an FSDP2 run does;
"checkpoint size" is the bytes on disk. Timed, on every rank together (the slowest rank counts):

- save: `ltxdist.checkpoint.save_checkpoint` (DCP + Hugging Face safetensors storage, temporary directory,
  train_state.json, meta.json, rename);
- load: `load_checkpoint` into a fresh module + optimizer of the same layout (headers read once by rank 0,
  each rank reads its rows; right after the save, so from the page cache);
- read 1: `read_checkpoint` of the whole checkpoint in one process (what resuming N -> 1 reads).

Also counted: safetensors files opened per rank during a load (one open per file it reads, never one per
tensor). Writes benchmarks/results/checkpoint_<hardware>_<date>.{json,md}. Not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ltxdist.bench.report import load_average, summarize, write_results

WIDTH, RANK = 4096, 128  # a rank-128 adapter on a 4096-wide projection, as LTX-2.3 video attention
COLUMNS = [
    "size_mb",
    "ranks",
    "tensors",
    "files",
    "save_median_s",
    "save_mb_per_s",
    "load_median_s",
    "load_mb_per_s",
    "read_one_process_s",
    "opens_rank0",
    "opens_other_max",
    "load_avg",
]


def _adapters(total_mb: float) -> torch.nn.Module:
    """Adapter pairs whose parameters + two AdamW moments make about `total_mb` (fp32: 12 bytes each)."""
    pair = 2 * RANK * WIDTH
    pairs = max(1, round(total_mb * 2**20 / 12 / pair))
    module = torch.nn.Module()
    g = torch.Generator().manual_seed(0)
    for i in range(pairs):
        block = torch.nn.Module()
        block.lora_A = torch.nn.Parameter(torch.randn(RANK, WIDTH, generator=g) * 0.01)
        block.lora_B = torch.nn.Parameter(torch.randn(WIDTH, RANK, generator=g) * 0.01)
        module.add_module(f"block{i}", block)
    return module


def _sharded(total_mb: float, mesh: Any) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from torch.distributed.fsdp import fully_shard

    module = _adapters(total_mb)
    for block in module.children():
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module, torch.optim.AdamW(module.parameters(), lr=1e-4)


def worker(rank: int, world: int, init: str, args: argparse.Namespace, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    import ltxdist.checkpoint.storage as storage
    from ltxdist.checkpoint import TorchTrainable, TrainState, load_checkpoint, save_checkpoint

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    opens = [0]
    real_open = storage.safe_open

    def counting_open(*a: Any, **k: Any) -> Any:
        opens[0] += 1
        return real_open(*a, **k)

    storage.safe_open = counting_open
    results = []
    for size in args.sizes_mb:
        module, opt = _sharded(size, mesh)
        for p in module.parameters():  # one step, so AdamW has its state
            p.grad = torch.ones_like(p)
        opt.step()
        root = Path(args.work) / f"w{world}-s{size}"
        saves, loads, open_counts = [], [], []
        for repeat in range(args.repeats):
            path = root / f"step-{repeat:06d}"
            dist.barrier()
            start = time.perf_counter()
            save_checkpoint(path, TorchTrainable(module, opt), TrainState(step=repeat))
            saves.append(_slowest(time.perf_counter() - start))
            fresh, fresh_opt = _sharded(size, mesh)
            opens[0] = 0
            dist.barrier()
            start = time.perf_counter()
            load_checkpoint(path, TorchTrainable(fresh, fresh_opt))
            loads.append(_slowest(time.perf_counter() - start))
            open_counts.append(_gathered(opens[0], world))
            del fresh, fresh_opt
        files = len(list((root / "step-000000").glob("*.safetensors")))
        tensors = 4 * sum(1 for _ in module.parameters())  # adapter + exp_avg + exp_avg_sq + step
        bytes_on_disk = sum(p.stat().st_size for p in (root / "step-000000").iterdir())
        if rank == 0:
            results.append(
                {
                    "size_mb": round(bytes_on_disk / 2**20, 1),
                    "ranks": world,
                    "files": files,
                    "tensors": tensors,
                    "save": saves,
                    "load": loads,
                    "opens_rank0": max(c[0] for c in open_counts),
                    "opens_other_max": max((max(c[1:]) for c in open_counts if len(c) > 1), default=0),
                    "path": str(root / "step-000000"),
                }
            )
        dist.barrier()
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def _gathered(value: int, world: int) -> list[int]:
    import torch.distributed as dist

    out = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(out, torch.tensor([value]))
    return [int(t) for t in out]


def _slowest(seconds: float) -> float:
    import torch.distributed as dist

    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[16, 64, 256])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args()
    from ltxdist.checkpoint import read_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(prefix="checkpoint-bench-") as work:
        args.work = work
        for world in args.ranks:
            out = Path(work) / f"result-{world}.json"
            init = Path(work) / f"init-{world}"
            torch.multiprocessing.spawn(worker, args=(world, str(init), args, str(out)), nprocs=world)
            for result in json.loads(out.read_text()):
                load_avg = load_average()
                start = time.perf_counter()
                read_checkpoint(result["path"])
                read_one = time.perf_counter() - start
                save, load = summarize(result["save"]), summarize(result["load"])
                rows.append(
                    {
                        "size_mb": result["size_mb"],
                        "ranks": world,
                        "tensors": result["tensors"],
                        "files": result["files"],
                        "save_median_s": round(save["median_s"], 3),
                        "save_mb_per_s": round(result["size_mb"] / save["median_s"], 1),
                        "load_median_s": round(load["median_s"], 3),
                        "load_mb_per_s": round(result["size_mb"] / load["median_s"], 1),
                        "read_one_process_s": round(read_one, 3),
                        "opens_rank0": result["opens_rank0"],
                        "opens_other_max": result["opens_other_max"],
                        "load_avg": load_avg,
                        "save_samples_s": result["save"],
                        "load_samples_s": result["load"],
                    }
                )
                shutil.rmtree(Path(result["path"]).parent, ignore_errors=True)
    notes = (
        "CPU processes (gloo) on one machine, one intra-op thread each; the slowest rank's time per "
        "repeat, median over repeats. Loads follow their save, so they read from the page cache: a "
        "network filesystem adds its read time. opens_rank0 / opens_other_max: safetensors files rank 0 / "
        "any other rank opened during one load (rank 0 opens every file once for the headers and reuses "
        "the handles; the others open what they read, once each), against `tensors` in the checkpoint."
    )
    write_results(
        "checkpoint",
        rows,
        COLUMNS,
        {
            "sizes_mb": args.sizes_mb,
            "ranks": args.ranks,
            "repeats": args.repeats,
            "width": WIDTH,
            "rank": RANK,
        },
        notes=notes,
        out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
