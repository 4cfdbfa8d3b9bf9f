"""A full disk while writing a checkpoint, a LoRA file, a shard or a metrics line: the write fails with
an error naming the path, leaves no partial file, and what was there before stays usable.

The disk is a real tmpfs of a few hundred KiB when the sandbox allows mounting (root); elsewhere
RLIMIT_FSIZE makes the same writes fail with EFBIG (see fault_helpers.small_disk)."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from fault_helpers import fill, partial_files, small_disk

from ltxdist.checkpoint import TorchTrainable, TrainState, read_checkpoint, save_checkpoint
from ltxdist.data.sample import CachedSample
from ltxdist.data.shards import read_shard_records, write_shard
from ltxdist.io import AtomicWriteError
from ltxdist.lora import LoRASpec, export_lora, inject_lora, read_lora_file
from ltxdist.models import load_transformer
from ltxdist.training.callbacks import _append_line
from ltxdist.training.run_dir import complete_checkpoints

FULL = (errno.ENOSPC, errno.EFBIG)


def _adapter(rows: int, seed: int) -> TorchTrainable:
    module = torch.nn.Module()
    module.a = torch.nn.Parameter(torch.randn(rows, 64, generator=torch.Generator().manual_seed(seed)))
    return TorchTrainable(module, None)


def _is_write_error(exc: BaseException, path) -> bool:
    return isinstance(exc, AtomicWriteError) and exc.errno in FULL and str(path) in str(exc)


def test_checkpoint_on_a_full_disk_fails_naming_it_and_the_previous_one_stays_usable(tmp_path):
    with small_disk(tmp_path / "disk", 256) as (disk, kind):
        run = disk / "run"
        save_checkpoint(run / "checkpoints" / "step-000002", _adapter(64, 2), TrainState(step=2))
        if kind == "tmpfs":
            fill(disk, leave_bytes=4096)  # room for a directory entry, not for 16 KiB of tensors
        target = run / "checkpoints" / "step-000004"
        with pytest.raises(AtomicWriteError) as info:
            save_checkpoint(target, _adapter(4096, 4), TrainState(step=4))  # 1 MiB
        assert _is_write_error(info.value, target), str(info.value)
        assert "full" in str(info.value)
        assert partial_files(disk) == [] and not target.exists()
        assert [s for s, _ in complete_checkpoints(run)] == [2]
        torch.testing.assert_close(
            read_checkpoint(run / "checkpoints" / "step-000002").adapters["a"],
            _adapter(64, 2).params["a"].detach(),
            rtol=0,
            atol=0,
        )


def test_lora_file_on_a_full_disk_keeps_the_previous_file(tmp_path, tiny_ckpt):
    model = load_transformer(tiny_ckpt).model
    inject_lora(model, LoRASpec(rank=4, alpha=4, targets=("attn",)))
    kw = dict(base_model_version="2.3.0", training_strategy="standard", target_modules=["attn"])
    with small_disk(tmp_path / "disk", 512) as (disk, kind):
        path = disk / "lora" / "lora_weights_step_000004.safetensors"
        export_lora(model, path, step=4, **kw)
        before = path.read_bytes()
        if kind == "tmpfs":
            fill(disk, leave_bytes=1024)
        else:
            pytest.skip("RLIMIT_FSIZE only limits one file's size; the LoRA file fits")
        for p in (path, disk / "lora" / "lora_weights_step_000008.safetensors"):
            with pytest.raises(AtomicWriteError) as info:
                export_lora(model, p, step=8, **kw)
            assert _is_write_error(info.value, p), str(info.value)
        assert path.read_bytes() == before and read_lora_file(path).metadata["step"] == "4"
        assert sorted(q.name for q in (disk / "lora").iterdir()) == [path.name]


def test_shard_and_metrics_line_on_a_full_disk(tmp_path):
    sample = CachedSample(
        tensors={
            "video_latents": torch.randn(128, 3, 2, 2),
            "video_context": torch.randn(16, 64),
            "audio_context": torch.randn(16, 32),
            "context_mask": torch.ones(16, dtype=torch.long),
        },
        meta={"id": "sample-000000", "bucket": "64x64x17", "fps": 24.0, "caption": "x"},
    )
    with small_disk(tmp_path / "disk", 160) as (disk, kind):
        shard = disk / "shard-000000.tar"
        write_shard(shard, [sample])
        metrics = disk / "metrics.jsonl"
        _append_line(metrics, json.dumps({"step": 1}) + "\n")
        if kind == "tmpfs":
            fill(disk, leave_bytes=8192)  # room for part of a line: it must be cut back off
        with pytest.raises(AtomicWriteError) as info:
            write_shard(shard, [sample] * 8)
        assert _is_write_error(info.value, shard), str(info.value)
        assert len(read_shard_records(shard)) == 1  # the complete old shard, not half of the new one
        if kind == "tmpfs":  # a line of 64 KiB would pass RLIMIT_FSIZE's per-file limit differently
            with pytest.raises(AtomicWriteError) as info:
                _append_line(metrics, json.dumps({"step": 2, "pad": "x" * 65536}) + "\n")
            assert _is_write_error(info.value, metrics), str(info.value)
        assert metrics.read_text() == '{"step": 1}\n'  # no half line
        assert partial_files(disk) == []
