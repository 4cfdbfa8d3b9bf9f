"""Data loading benchmark (issue 3): ltxdist's shard stream vs one file per sample, on the same samples.

    python benchmarks/data_bench.py --num-samples 10000 --workers 2

Layouts, each read the way its trainer reads it:
  shards    webdataset tars + index.json, read by `CachedLatentStream` in a DataLoader with `--workers`
            workers (batches formed in the workers), exactly as ltxdist's training DataModule does.
  per_file  the reference trainer's `.precomputed/{latents,audio_latents,conditions}/<id>` layout: a
            map-style Dataset that opens the 3 files of a sample (safetensors `load_file`, memory-mapped;
            the reference trainer's torch.load of `.pt` pickles is not used: ltxdist ships no pickle),
            shuffled by the DataLoader, same workers and batch size, PyTorch's default collate.

Throughput: one pass over all samples per layout and cache state; the pass is cut into `--chunks`
equal parts after the first batch (worker start-up), the first part is the warm-up, and the rest are
the repeats (median and p25/p75 of their samples/s). `warm`: the files were read once before the pass
(page cache filled); `cold`: evicted from this machine's page cache first (posix_fadvise DONTNEED; a
virtual disk may still be cached by the host). Time to first batch: DataLoader creation to the first
batch, cold, at two dataset sizes, median of `--first-batch-repeats`. The 1-minute load average is
recorded with every measurement: other processes on the machine slow both layouts.

Sample content is random (a pool of `--distinct` samples cycled under distinct ids: loading speed does
not depend on the values). Writes benchmarks/results/data_<hardware>_<date>.{json,md}. Not a test.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save

from ltxdist.bench.report import load_average, target_verdict, write_results
from ltxdist.data.collate import WireBatch, collate_samples
from ltxdist.data.sample import CachedSample, decode_sample
from ltxdist.data.shards import (
    ShardIndex,
    load_index,
    read_shard,
    save_empty_caption,
    shard_name,
    write_shard,
)
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.data.synthetic import latent_shape

TARGET_SPEEDUP = 3.0  # issue 3: streaming at least 3x one file per sample on 10k samples
PER_FILE_DIRS = ("latents", "audio_latents", "conditions")
LAYOUTS = ("shards", "per_file")
BREAKDOWN_TITLE = (
    "Where the time goes (CPU ms per sample in one process with one thread, first {n} samples; "
    "each stage includes the ones above it)"
)


# -- data -----------------------------------------------------------------------------------------
def sample_pool(args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """`--distinct` random samples (bf16 latents and contexts, all-ones mask) of the bench's sizes."""
    gen = torch.Generator().manual_seed(0)
    frames = int(args.bucket.split("x")[2])
    audio_t = round(frames / 24 * 25)
    pool = []
    for _ in range(args.distinct):
        pool.append(
            {
                "video_latents": torch.randn(latent_shape(args.bucket), generator=gen).to(torch.bfloat16),
                "audio_latents": torch.randn(8, audio_t, 16, generator=gen).to(torch.bfloat16),
                "video_context": torch.randn(
                    args.text_tokens, args.video_context_dim, generator=gen
                ).bfloat16(),
                "audio_context": torch.randn(
                    args.text_tokens, args.audio_context_dim, generator=gen
                ).bfloat16(),
                "context_mask": torch.ones(args.text_tokens, dtype=torch.bool),
            }
        )
    return pool


def write_sharded(
    directory: Path, n: int, pool: list[dict[str, torch.Tensor]], args: argparse.Namespace
) -> None:
    """Shards as ltxdist-prepare writes them (write_shard + index.json + the empty caption)."""
    directory.mkdir(parents=True)
    index = ShardIndex(model_version="bench", encoder_fingerprints={"bench": "1"})
    for start in range(0, n, args.samples_per_shard):
        samples = [
            CachedSample(
                pool[i % len(pool)], {"id": f"s{i:08d}", "bucket": args.bucket, "fps": 24.0, "caption": ""}
            )
            for i in range(start, min(n, start + args.samples_per_shard))
        ]
        index.shards.append(write_shard(directory / shard_name(len(index.shards)), samples))
    first = pool[0]
    save_empty_caption(directory, first["video_context"], first["audio_context"], first["context_mask"])
    index.save(directory)


def write_per_file(directory: Path, n: int, pool: list[dict[str, torch.Tensor]]) -> None:
    """The reference trainer's layout: latents/, audio_latents/, conditions/, one file each per sample."""
    groups = {
        "latents": ("video_latents",),
        "audio_latents": ("audio_latents",),
        "conditions": ("video_context", "audio_context", "context_mask"),
    }
    encoded = [{sub: safetensors_save({k: p[k] for k in keys}) for sub, keys in groups.items()} for p in pool]
    for sub in PER_FILE_DIRS:
        (directory / sub).mkdir(parents=True)
    for i in range(n):
        for sub, payload in encoded[i % len(pool)].items():
            (directory / sub / f"s{i:08d}.safetensors").write_bytes(payload)


def ensure_data(work: Path, n: int, args: argparse.Namespace, pool: list[dict[str, torch.Tensor]]) -> None:
    """Write both layouts of n samples unless a complete copy is already in `work` (--work-dir reuse)."""
    shards, files = work / f"shards_{n}", work / f"files_{n}"
    if not (shards / "index.json").is_file():
        shutil.rmtree(shards, ignore_errors=True)
        write_sharded(shards, n, pool, args)
    complete = files.is_dir() and sum(1 for _ in (files / "conditions").glob("*.safetensors")) == n
    if not complete:
        shutil.rmtree(files, ignore_errors=True)
        write_per_file(files, n, pool)


# -- the per-file reader ------------------------------------------------------------------------------
class PerFileDataset(torch.utils.data.Dataset):
    """Map-style dataset over the per-file layout: list the latents folder once, open 3 files a sample."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.names = sorted(os.listdir(directory / "latents"))
        if not self.names:
            raise FileNotFoundError(f"no per-sample files in {directory / 'latents'}")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name = self.names[i]
        item: dict[str, Any] = {}
        for sub in PER_FILE_DIRS:
            item.update(load_file(str(self.directory / sub / name)))
        item["fps"] = 24.0
        item["id"] = name.split(".")[0]
        return item


# -- measurement ----------------------------------------------------------------------------------
def make_loader(layout: str, directory: Path, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    if layout == "shards":
        stream = CachedLatentStream(directory, StreamPlan(batch_size=args.batch_size, seed=0))
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers)
    return torch.utils.data.DataLoader(
        PerFileDataset(directory),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(0),
    )


def layout_dir(work: Path, layout: str, n: int) -> Path:
    return work / (f"shards_{n}" if layout == "shards" else f"files_{n}")


def read_all(directory: Path) -> None:
    """Fill the page cache with every file of `directory`."""
    for root, _, files in os.walk(directory):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                while fh.read(1 << 22):
                    pass


def evict(directory: Path) -> None:
    """Drop the files of `directory` from this machine's page cache (no root needed)."""
    os.sync()
    for root, _, files in os.walk(directory):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def throughput_pass(
    loader_factory: Callable[[], Any], n: int, batch_size: int, chunks: int
) -> dict[str, Any]:
    """One pass of n samples; samples/s of each of `chunks` equal parts after the first batch."""
    batches = n // batch_size
    per_chunk = (batches - 1) // chunks
    if per_chunk < 1:
        raise ValueError(f"--num-samples {n} is too small for {chunks} chunks of batch {batch_size}")
    load_before = load_average()
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    it = iter(loader_factory())
    next(it)
    first = time.perf_counter() - start
    rates = []
    for _ in range(chunks):
        t0 = time.perf_counter()
        for _ in range(per_chunk):
            next(it)
        rates.append(per_chunk * batch_size / (time.perf_counter() - t0))
    del it  # joins the workers, so their CPU time is counted below
    cpu_ms = 1e3 * (cpu_seconds() - cpu_before) / ((1 + chunks * per_chunk) * batch_size)
    timed = rates[1:] if len(rates) > 1 else rates  # the first chunk is the warm-up
    q = statistics.quantiles(timed, n=4) if len(timed) > 1 else timed * 3
    return {
        "samples_per_s": statistics.median(timed),
        "p25_per_s": q[0],
        "p75_per_s": q[2],
        "chunk_rates": [round(r, 1) for r in rates],
        "cpu_ms_per_sample": cpu_ms,
        "first_batch_s": first,
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
    }


def first_batch_s(loader_factory: Callable[[], Any], directory: Path, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        evict(directory)
        start = time.perf_counter()
        it = iter(loader_factory())
        next(it)
        out.append(time.perf_counter() - start)
        del it
    return out


# -- where the time goes ------------------------------------------------------------------------------
def _ms_per_sample(fn: Callable[[], int], repeats: int = 3) -> float:
    """Lowest of `repeats` runs (the first also warms caches), CPU ms per sample."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        n = fn()
        best = min(best, 1e3 * (time.process_time() - start) / n)
    return best


@functools.cache
def _handoff_queue() -> Any:
    return torch.multiprocessing.get_context("spawn").Queue()


def worker_handoff(batch: Any) -> Any:
    """What a DataLoader worker's result queue does to a batch, timed in this process: the batch goes
    through the kind of queue DataLoader workers put their results on (torch.multiprocessing's, which
    moves tensors as shared-memory handles, WireBatch as raw bytes) and is taken back out, as the
    trainer's process does. Only torch's own inter-process hand-off of an object built a line earlier;
    no file is read, and ltxdist stores nothing as pickle (samples are safetensors + JSON)."""
    queue = _handoff_queue()
    queue.put(batch)
    return queue.get()


def stage_breakdown(work: Path, n: int, limit: int) -> list[dict[str, Any]]:
    """CPU ms per sample of each stage of both readers, in this process with one thread, best of 3
    (cumulative: each stage includes the ones before it). The hand-off stage puts a batch on a worker result
    queue and takes it back out (worker_handoff); received in the same process, a shared-memory batch can
    reuse the sender's mapping, so those rows undercount the receiving side."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    shards, files = layout_dir(work, "shards", n), layout_dir(work, "per_file", n)
    names = [s["name"] for s in load_index(shards).shards]

    def records() -> Iterator[dict[str, Any]]:
        for name in names:
            yield from read_shard(shards / name)

    def shard_stage(stage: int) -> Callable[[], int]:
        def run() -> int:
            count = 0
            for record in itertools.islice(records(), limit):
                count += 1
                if stage == 0:
                    continue
                sample = decode_sample(record)
                if stage == 1:
                    continue
                batch = collate_samples([sample])
                if stage >= 3:
                    handed = (
                        WireBatch(batch) if stage == 3 else batch
                    )  # 4: a plain dict goes by shared memory
                    worker_handoff(handed)
            return count

        return run

    dataset = PerFileDataset(files)

    def file_stage(stage: int) -> Callable[[], int]:
        def run() -> int:
            count = min(limit, len(dataset))
            for i in range(count):
                item = dataset[i]
                if stage >= 2:
                    batch = torch.utils.data.default_collate([item])
                    if stage >= 3:
                        worker_handoff(batch)
            return count

        return run

    rows = []
    try:
        for label, stage in (
            ("read tar members", 0),
            ("+ decode", 1),
            ("+ collate", 2),
            ("+ hand-off (packed batch, pipe)", 3),
            ("+ hand-off (packed batch, shared memory)", 4),
        ):
            rows.append(
                {"layout": "shards", "stage": label, "cpu_ms_per_sample": _ms_per_sample(shard_stage(stage))}
            )
        for label, stage in (
            ("open + load 3 files", 0),
            ("+ default collate", 2),
            ("+ hand-off (shared memory per tensor)", 3),
        ):
            rows.append(
                {"layout": "per_file", "stage": label, "cpu_ms_per_sample": _ms_per_sample(file_stage(stage))}
            )
    finally:
        torch.set_num_threads(threads)
    return rows


def run(args: argparse.Namespace, work: Path) -> tuple[list[dict], list[dict], list[dict], dict]:
    pool = sample_pool(args)
    sizes = sorted({args.small_samples, args.num_samples})
    for n in sizes:
        ensure_data(work, n, args, pool)
    n = args.num_samples
    rows = []
    for cache in args.cache:
        for layout in LAYOUTS:
            directory = layout_dir(work, layout, n)
            (read_all if cache == "warm" else evict)(directory)
            factory = functools.partial(make_loader, layout, directory, args)
            result = throughput_pass(factory, n, args.batch_size, args.chunks)
            rows.append({"layout": layout, "cache": cache, **result})
            print(f"{layout:9s} {cache}: {result['samples_per_s']:.0f} samples/s {result['chunk_rates']}")
    first_rows = []
    for size in sizes:
        for layout in LAYOUTS:
            directory = layout_dir(work, layout, size)
            factory = functools.partial(make_loader, layout, directory, args)
            times = first_batch_s(factory, directory, args.first_batch_repeats)
            first_rows.append(
                {
                    "layout": layout,
                    "samples": size,
                    "first_batch_median_s": statistics.median(times),
                    "min_s": min(times),
                    "max_s": max(times),
                    "load_avg": load_average(),
                }
            )
    files = layout_dir(work, "per_file", n).rglob("*.safetensors")
    bytes_per_sample = sum(f.stat().st_size for f in files) / n
    stages = stage_breakdown(work, n, args.breakdown_samples) if args.breakdown_samples else []
    return rows, first_rows, stages, {"bytes_per_sample": bytes_per_sample, "sizes": sizes}


def speedups(rows: list[dict]) -> dict[str, float]:
    rate = {(r["layout"], r["cache"]): r["samples_per_s"] for r in rows}
    caches = sorted({r["cache"] for r in rows})
    return {c: rate["shards", c] / rate["per_file", c] for c in caches}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--small-samples", type=int, default=1_000, help="second size for time to first batch")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--bucket", default="512x288x49", help="latent size per sample (WxHxF)")
    p.add_argument("--text-tokens", type=int, default=128)
    p.add_argument("--video-context-dim", type=int, default=64)
    p.add_argument("--audio-context-dim", type=int, default=32)
    p.add_argument("--samples-per-shard", type=int, default=256)
    p.add_argument("--distinct", type=int, default=64, help="distinct random samples, cycled")
    p.add_argument("--chunks", type=int, default=5, help="parts of a pass: 1 warm-up + repeats")
    p.add_argument("--first-batch-repeats", type=int, default=3)
    p.add_argument("--breakdown-samples", type=int, default=1000, help="samples per stage timing (0: skip)")
    p.add_argument("--cache", nargs="+", default=["warm", "cold"], choices=["warm", "cold"])
    p.add_argument("--work-dir", type=Path, default=None, help="keep the data here and reuse it next time")
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ltxdist-data-bench-"))
    try:
        rows, first_rows, stages, info = run(args, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    ratio = speedups(rows)
    for r in rows:
        r["shards_over_per_file"] = ratio[r["cache"]] if r["layout"] == "shards" else ""
    verdict = "; ".join(
        f"{c}: {x:.2f}x ({target_verdict(x >= TARGET_SPEEDUP)})" for c, x in sorted(ratio.items())
    )
    notes = (
        f"{args.num_samples} samples of {info['bytes_per_sample'] / 1024:.0f} KiB (bucket {args.bucket}, "
        f"{args.text_tokens} text tokens), DataLoader with {args.workers} workers, batch {args.batch_size}. "
        "Shards: webdataset tars read by `CachedLatentStream`; per_file: the reference trainer's layout "
        "(3 safetensors files per sample, map-style Dataset, shuffled, default collate). See the "
        "docstring of benchmarks/data_bench.py for the method.\n\n"
        f"Target (issue 3): shards >= {TARGET_SPEEDUP:.0f}x per_file on {args.num_samples} samples. "
        f"Measured: {verdict}."
    )
    columns = ["layout", "cache", "samples_per_s", "p25_per_s", "p75_per_s", "shards_over_per_file",
               "cpu_ms_per_sample", "first_batch_s", "load_avg_before", "load_avg_after"]  # fmt: skip
    first_columns = ["layout", "samples", "first_batch_median_s", "min_s", "max_s", "load_avg"]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(info)
    return write_results(
        "data",
        rows,
        columns,
        config,
        notes=notes,
        out_dir=args.out_dir,
        tables={
            "Time to first batch (cold cache)": (first_rows, first_columns),
            BREAKDOWN_TITLE.format(n=args.breakdown_samples): (
                stages,
                ["layout", "stage", "cpu_ms_per_sample"],
            ),
        },
    )


if __name__ == "__main__":
    main()
