"""Data loading benchmark: ltxdist's webdataset shards vs one file per sample (the reference trainer's
`.precomputed/{latents,audio_latents,conditions}/<id>` layout), on the same synthetic cached samples.

    python benchmarks/data_bench.py --num-samples 10000 --workers 2

Measures samples/s over one full pass with a 2-worker DataLoader, with a warm page cache and with the
files evicted from it (posix_fadvise DONTNEED, no root needed), and the time to the first batch at two
dataset sizes. Both sides decode the same safetensors payloads and collate with the same function, so
the difference is the storage layout. Writes benchmarks/results/data_<hardware>_<date>.{json,md}.
Not a test: numbers depend on the machine and its disk.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ltxdist.data.collate import collate_samples
from ltxdist.data.sample import CachedSample
from ltxdist.data.shards import ShardIndex, save_empty_caption, shard_name, write_shard
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.data.synthetic import latent_shape

RESULTS = Path(__file__).resolve().parent / "results"


def make_sample(
    i: int, bucket: str, text_tokens: int, dims: tuple[int, int], gen: torch.Generator
) -> CachedSample:
    frames = int(bucket.split("x")[2])
    t = round(frames / 24 * 25)
    tensors = {
        "video_latents": torch.randn(latent_shape(bucket), generator=gen).to(torch.bfloat16),
        "audio_latents": torch.randn(8, t, 16, generator=gen).to(torch.bfloat16),
        "video_context": torch.randn(text_tokens, dims[0], generator=gen).to(torch.bfloat16),
        "audio_context": torch.randn(text_tokens, dims[1], generator=gen).to(torch.bfloat16),
        "context_mask": torch.ones(text_tokens, dtype=torch.bool),
    }
    meta = {"id": f"s{i:08d}", "bucket": bucket, "fps": 24.0, "caption": f"sample {i}", "source": "bench"}
    return CachedSample(tensors, meta)


def samples(n: int, args: argparse.Namespace) -> Iterator[CachedSample]:
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        yield make_sample(
            i, args.bucket, args.text_tokens, (args.video_context_dim, args.audio_context_dim), gen
        )


def write_sharded(directory: Path, n: int, args: argparse.Namespace) -> None:
    directory.mkdir(parents=True)
    index = ShardIndex(model_version="bench", encoder_fingerprints={"bench": "1"})
    batch: list[CachedSample] = []
    for s in tqdm(samples(n, args), total=n, desc=f"shards {n}", leave=False):
        batch.append(s)
        if len(batch) == args.samples_per_shard:
            index.shards.append(write_shard(directory / shard_name(len(index.shards)), batch))
            batch = []
    if batch:
        index.shards.append(write_shard(directory / shard_name(len(index.shards)), batch))
    empty = make_sample(
        0,
        args.bucket,
        args.text_tokens,
        (args.video_context_dim, args.audio_context_dim),
        torch.Generator().manual_seed(1),
    ).tensors
    save_empty_caption(directory, empty["video_context"], empty["audio_context"], empty["context_mask"])
    index.save(directory)


def write_per_file(directory: Path, n: int, args: argparse.Namespace) -> None:
    for sub in ("latents", "audio_latents", "conditions"):
        (directory / sub).mkdir(parents=True)
    for s in tqdm(samples(n, args), total=n, desc=f"files {n}", leave=False):
        meta = {k: str(v) for k, v in s.meta.items()}
        save_file(
            {"video_latents": s.tensors["video_latents"]},
            str(directory / "latents" / f"{s.key}.safetensors"),
            metadata=meta,
        )
        save_file(
            {"audio_latents": s.tensors["audio_latents"]},
            str(directory / "audio_latents" / f"{s.key}.safetensors"),
        )
        save_file(
            {k: s.tensors[k] for k in ("video_context", "audio_context", "context_mask")},
            str(directory / "conditions" / f"{s.key}.safetensors"),
        )


class PerFileDataset(torch.utils.data.Dataset):
    """The reference trainer's access pattern: list the latents folder, then open 3 files per sample."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.names = sorted(os.listdir(directory / "latents"))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name = self.names[i]
        tensors: dict[str, torch.Tensor] = {}
        for sub in ("latents", "audio_latents", "conditions"):
            tensors.update(load_file(str(self.directory / sub / name)))
        meta = {"id": name.split(".")[0], "bucket": "b", "fps": 24.0, "caption": ""}
        return collate_samples([CachedSample(tensors, meta)])


def evict(directory: Path) -> None:
    """Drop the files from the page cache so the next read comes from disk."""
    os.sync()
    for root, _, files in os.walk(directory):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed_pass(loader_factory: Any, n: int) -> dict[str, float]:
    start = time.perf_counter()
    loader = loader_factory()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    for _ in range(n - 1):
        next(it)
    total = time.perf_counter() - start
    del it
    return {"first_batch_s": first, "total_s": total, "samples_per_s": n / total}


def stream_loader(directory: Path, workers: int) -> Any:
    def make() -> Any:
        return torch.utils.data.DataLoader(
            CachedLatentStream(directory, StreamPlan(batch_size=1, seed=0)),
            batch_size=None,
            num_workers=workers,
        )

    return make


def file_loader(directory: Path, workers: int) -> Any:
    def make() -> Any:
        return torch.utils.data.DataLoader(
            PerFileDataset(directory),
            batch_size=None,
            shuffle=True,
            num_workers=workers,
            generator=torch.Generator().manual_seed(0),
        )

    return make


def hardware_label() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "-").lower()
    return f"cpu{os.cpu_count()}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--small-samples", type=int, default=1_000, help="second size for time-to-first-batch")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--bucket", default="512x288x49", help="latent size per sample (WxHxF)")
    p.add_argument("--text-tokens", type=int, default=128)
    p.add_argument("--video-context-dim", type=int, default=64)
    p.add_argument("--audio-context-dim", type=int, default=32)
    p.add_argument("--samples-per-shard", type=int, default=256)
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the generated data here and reuse it on the next run (default: a temp dir, removed)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    # A given --work-dir is kept (and reused by the next run); the default temp dir is removed.
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ltxdist-data-bench-"))
    try:
        sizes = sorted({args.small_samples, args.num_samples})
        for n in sizes:
            if not (work / f"shards_{n}" / "index.json").is_file():
                shutil.rmtree(work / f"shards_{n}", ignore_errors=True)
                write_sharded(work / f"shards_{n}", n, args)
            if len(list((work / f"files_{n}" / "conditions").glob("*.safetensors"))) != n:
                shutil.rmtree(work / f"files_{n}", ignore_errors=True)
                write_per_file(work / f"files_{n}", n, args)
        n = args.num_samples
        results: dict[str, Any] = {"throughput": {}, "first_batch_s": {}}
        for cache in ("warm", "cold"):
            for name, factory in (
                ("shards", stream_loader(work / f"shards_{n}", args.workers)),
                ("per_file", file_loader(work / f"files_{n}", args.workers)),
            ):
                directory = work / (f"shards_{n}" if name == "shards" else f"files_{n}")
                if cache == "cold":
                    evict(directory)
                else:
                    timed_pass(factory, min(n, 200))  # touch the data once so the pass below is warm
                results["throughput"][f"{name}_{cache}"] = timed_pass(factory, n)
                print(f"{name:9s} {cache}: {results['throughput'][f'{name}_{cache}']['samples_per_s']:.0f}/s")
        for size in sizes:
            for name in ("shards", "per_file"):
                directory = work / f"{name if name == 'shards' else 'files'}_{size}"
                factory = (stream_loader if name == "shards" else file_loader)(directory, args.workers)
                evict(directory)
                results["first_batch_s"][f"{name}_{size}"] = timed_pass(factory, 1)["first_batch_s"]
        sample_bytes = sum(f.stat().st_size for f in (work / f"files_{n}").rglob("*.safetensors")) / n
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    tp = results["throughput"]
    speedup = {
        c: tp[f"shards_{c}"]["samples_per_s"] / tp[f"per_file_{c}"]["samples_per_s"] for c in ("warm", "cold")
    }
    date = datetime.date.today().isoformat()
    report = {
        "benchmark": "data",
        "date": date,
        "hardware": hardware_label(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sizes": sizes,
        "bytes_per_sample": sample_bytes,
        "speedup_shards_vs_per_file": speedup,
        **results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"data_{report['hardware']}_{date}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {stem}.json and {stem}.md")


def render_markdown(report: dict[str, Any]) -> str:
    cfg, tp, fb, sizes = report["config"], report["throughput"], report["first_batch_s"], report["sizes"]
    layouts = ("shards", "per_file")
    rate = {(name, c): tp[f"{name}_{c}"]["samples_per_s"] for name in layouts for c in ("warm", "cold")}
    lines = [
        f"# Data loading benchmark ({report['date']}, {report['hardware']})",
        "",
        f"{cfg['num_samples']} samples of {report['bytes_per_sample'] / 1024:.0f} KiB "
        f"(bucket {cfg['bucket']}, {cfg['text_tokens']} text tokens), DataLoader with {cfg['workers']} "
        "workers, batch 1. Shards: "
        f"webdataset tars of {cfg['samples_per_shard']} samples read by `CachedLatentStream`; per file: the "
        "reference trainer's layout (3 safetensors files per sample, listed at start, shuffled). "
        "Cold = files evicted from the page cache (posix_fadvise) before the pass.",
        "",
        "| layout | warm samples/s | cold samples/s |",
        "| --- | ---: | ---: |",
        *(f"| {n} | {rate[n, 'warm']:.0f} | {rate[n, 'cold']:.0f} |" for n in layouts),
        f"| shards / per file | {report['speedup_shards_vs_per_file']['warm']:.2f}x "
        f"| {report['speedup_shards_vs_per_file']['cold']:.2f}x |",
        "",
        "| time to first batch (cold) | " + " | ".join(f"{s} samples" for s in sizes) + " |",
        "| --- |" + " ---: |" * len(sizes),
        *(f"| {n} | " + " | ".join(f"{fb[f'{n}_{s}']:.2f} s" for s in sizes) + " |" for n in layouts),
        "",
        f"Platform: {report['platform']}, Python {report['python']}, torch {report['torch']}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
