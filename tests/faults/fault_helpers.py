"""Helpers for the fault battery: training in this process or as a subprocess with a sample-id ledger,
poisoning cached samples, reading what runs leave behind, and a small real filesystem for full-disk
faults. (A uniquely named module: tests/ has no packages.)"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from e2e_utils import train_overrides

from ltxdist.checkpoint import read_checkpoint
from ltxdist.data.sample import decode_sample
from ltxdist.data.shards import load_index, read_shard_records, write_shard
from ltxdist.data.streaming import CachedLatentStream, StreamPlan

FAULTS = Path(__file__).resolve().parent
INSTRUMENTED_TRAIN = FAULTS / "instrumented_train.py"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
DDP = {
    "parallel": "ddp",
    "parallel.accelerator": "cpu",
    "parallel.process_group_backend": "gloo",
}

# Small, deterministic fp32 CPU runs: batch 1 so every optimizer step is exactly one sample.
FAST = {
    "trainer.max_steps": 8,
    "trainer.checkpoint_every_n_steps": 2,
    "trainer.keep_last_k": 20,
    "data.batch_size": 1,
    "data.shuffle_buffer": 4,
    "lora.dropout": 0.0,
}


def overrides(ckpt: Path, data: Path, run_dir: Path, **extra: object) -> list[str]:
    return train_overrides(ckpt, data, run_dir, **{**FAST, **extra})


# -- in-process training ---------------------------------------------------------------------------
def compose_train(args: list[str]) -> Any:
    """As `ltxdist-train ARGS` composes (a mistake is a one-line ConfigError)."""
    from ltxdist.config.store import compose_train_config

    return compose_train_config(args)


def train_in_process(args: list[str]) -> Path:
    """`ltxdist-train ARGS` in this process (no interpreter start-up), with the id ledger attached."""
    from ltxdist.training import train as train_module

    cfg = compose_train(args)
    build = train_module.build_trainer

    def build_with_ledger(cfg_: Any, run_dir: Path, callbacks: list, logger: Any) -> Any:
        from ledger import IdLedger

        return build(cfg_, run_dir, [IdLedger(run_dir / "ledger"), *callbacks], logger)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only fight the other processes for the 2 cores
    try:
        with mock.patch.object(train_module, "build_trainer", build_with_ledger):
            return train_module.train(cfg)
    finally:
        torch.set_num_threads(threads)


# -- subprocess training ---------------------------------------------------------------------------
def train_command(args: list[str], nproc: int = 1, port: int | None = None) -> list[str]:
    """ltxdist-train through the ledger wrapper: one process, or `nproc` under torchrun."""
    if nproc == 1:
        return [sys.executable, str(INSTRUMENTED_TRAIN), *args]
    rdzv = ["--master_port", str(port)] if port else ["--standalone"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rdzv,
        "--nproc_per_node",
        str(nproc),
        str(INSTRUMENTED_TRAIN),
        *args,
        f"parallel.devices={nproc}",
    ]


# -- what a run leaves behind ----------------------------------------------------------------------
def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def adapters(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / f"step-{step:06d}").adapters


def moments(run_dir: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    return read_checkpoint(run_dir / "checkpoints" / f"step-{step:06d}").optimizer


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 0) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=atol, msg=key)


def committed_ids(run_dir: Path) -> dict[tuple[int, int], list[str]]:
    """(rank, step) -> sample ids of the micro-batch that step trained on, in the attempt whose work
    survived: for each step, the newest attempt that reached it (every attempt resumes from a checkpoint
    at or before where the previous one stopped, so it redoes whatever came after)."""
    from ledger import read_ledger

    return read_ledger(run_dir / "ledger")


def partial_files(root: Path) -> list[Path]:
    """Temporary files or directories left behind (atomic writes that never completed)."""
    return sorted(p for p in root.rglob("*") if ".tmp-" in p.name)


# -- data ------------------------------------------------------------------------------------------
def stream_ids(data: Path, n: int, **plan: Any) -> list[list[str]]:
    """The ids of the first n batches the training stream yields (rank 0 of 1 unless `plan` says
    otherwise; the rest of the plan as the fast runs train)."""
    p = {"batch_size": 1, "seed": 0, "shuffle_buffer": FAST["data.shuffle_buffer"], **plan}
    stream = CachedLatentStream(data, StreamPlan(**p))
    out = []
    for batch in stream.iter_batches():
        out.append(list(batch["ids"]))
        if len(out) == n:
            break
    return out


def poison_samples(data: Path, values: dict[str, float]) -> None:
    """Rewrite the shards holding these sample ids with one video latent set to the value (NaN / Inf),
    as a corrupt cache would have it. Atomic, counts unchanged: the index stays valid."""
    for shard in load_index(data).shards:
        path = data / shard["name"]
        samples = [decode_sample(r, where=str(path)) for r in read_shard_records(path)]
        hit = False
        for s in samples:
            if s.key in values:
                v = s.tensors["video_latents"].clone()
                v.view(-1)[0] = values[s.key]
                s.tensors["video_latents"] = v
                hit = True
        if hit:
            write_shard(path, samples)


# -- a small real filesystem -----------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(where: Path, size_kib: int) -> Iterator[tuple[Path, str]]:
    """A real tmpfs of `size_kib` mounted at `where` (root with CAP_SYS_ADMIN, as in this sandbox and in
    containers run with it); elsewhere RLIMIT_FSIZE in this process, under which a write past the limit
    fails with EFBIG like a full disk. Yields (directory, "tmpfs" | "rlimit_fsize")."""
    where.mkdir(parents=True, exist_ok=True)
    name = f"ltxdist-faults-{uuid.uuid4().hex[:8]}"
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", name, str(where)]
    mounted = subprocess.run(mount, capture_output=True)
    if mounted.returncode == 0:
        try:
            yield where, "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a fatal signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (size_kib * 1024, hard))
    try:
        yield where, "rlimit_fsize"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def fill(directory: Path, leave_bytes: int = 0) -> Path:
    """Fill the filesystem of `directory` up to `leave_bytes` free; returns the filler file."""
    filler = directory / "filler.bin"
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


# -- odd media files -------------------------------------------------------------------------------
class MediaFiles(dict):
    """name -> bytes. Hypothesis prints fixture values of a failing example: keep the repr short."""

    def __repr__(self) -> str:
        return f"<{len(self)} media files: {', '.join(self)}>"


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few hundred bytes (its data does not fill it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_media(root: Path) -> MediaFiles:
    """A real clip (H.264 + AAC) and the odd files people have: zero frames, an audio file given as a
    video, a PNG whose header claims 12000x12000 pixels, an empty file."""
    import av
    import numpy as np

    from ltxdist.data.prepare.demo import CONCEPTS, make_clip

    clip = make_clip(root / "clip.mp4", CONCEPTS[0], 64, 64, 9, 24.0, seed=1)
    with av.open(str(root / "zero.mkv"), "w") as c:  # a video stream without a frame (mp4 would drop it)
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for packet in s.encode():
            c.mux(packet)
        a = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*a.encode(frame), *a.encode()]:
            c.mux(packet)
    with av.open(str(root / "tone.wav"), "w") as c:  # the wrong kind of file: audio only, PCM
        s = c.add_stream("pcm_s16le", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*s.encode(frame), *s.encode()]:
            c.mux(packet)
    return MediaFiles(
        {
            "clip.mp4": clip.read_bytes(),
            "zero.mkv": (root / "zero.mkv").read_bytes(),
            "tone.wav": (root / "tone.wav").read_bytes(),
            "huge.png": png_header(12000, 12000),
            "empty.mp4": b"",
        }
    )


# -- the soak's record -------------------------------------------------------------------------------
INPUTS_TRIED: dict[str, int] = {}  # fuzzed inputs per kind (test_fuzz_inputs.py), for the soak summary


def count_input(kind: str) -> None:
    INPUTS_TRIED[kind] = INPUTS_TRIED.get(kind, 0) + 1


class SoakRecord:
    """Trials run and survived, by fault; bytes of complete artifacts lost (must stay 0)."""

    def __init__(self) -> None:
        self.trials: list[dict[str, Any]] = []
        self.bytes_lost = 0
        self.notes: dict[str, Any] = {}

    def trial(self, fault: str, **details: Any) -> dict[str, Any]:
        """A trial, recorded as not survived until its checks pass (the caller sets survived)."""
        entry = {"fault": fault, "survived": False, **details}
        self.trials.append(entry)
        return entry

    def summary(self) -> dict[str, Any]:
        by_fault: dict[str, dict[str, int]] = {}
        for t in self.trials:
            entry = by_fault.setdefault(t["fault"], {"trials": 0, "survived": 0})
            entry["trials"] += 1
            entry["survived"] += int(t["survived"])
        return {
            "trials": len(self.trials),
            "faults_survived": sum(int(t["survived"]) for t in self.trials),
            "by_fault": by_fault,
            "sigkill_trials": sum(by_fault.get(f, {}).get("trials", 0) for f in by_fault if "sigkill" in f),
            "inputs_tried": dict(sorted(INPUTS_TRIED.items())),
            "inputs_tried_total": sum(INPUTS_TRIED.values()),
            "bytes_lost": self.bytes_lost,
            **self.notes,
            "details": self.trials,
        }


SOAK = SoakRecord()


def snapshot(paths: list[Path]) -> dict[Path, bytes]:
    """Contents of complete artifacts before a fault (tiny files: kept whole, compared after)."""
    return {p: p.read_bytes() for p in paths if p.is_file()}


def lost_bytes(before: dict[Path, bytes]) -> int:
    """Bytes of artifacts that were complete before the fault and are missing or changed after it."""
    lost = 0
    for path, content in before.items():
        if not path.is_file() or path.read_bytes() != content:
            lost += len(content)
    return lost


def complete_artifacts(run_dir: Path) -> list[Path]:
    """Every file of every complete checkpoint, and every LoRA file."""
    from ltxdist.training.run_dir import complete_checkpoints

    files = [f for _, ckpt in complete_checkpoints(run_dir) for f in ckpt.rglob("*") if f.is_file()]
    lora = run_dir / "lora"
    return files + sorted(p for p in lora.glob("*.safetensors")) if lora.is_dir() else files
