"""End-to-end training runs on the tiny model: the README demo, kill + resume, each strategy. (DDP on 2 CPU
processes against 1 process, and its resumes: tests/faults/test_resume_position.py.)

Only what is about the process runs as one: the demo script and the run that is SIGKILLed. The other
runs train in this process (e2e_utils.train_in_process: the command line's closed config, one thread),
which saves an interpreter and Lightning start-up each."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from e2e_utils import BIN, REPO, compose_train, train_in_process, train_overrides
from omegaconf import OmegaConf

from ltxdist.checkpoint import read_checkpoint
from ltxdist.data.shards import load_index
from ltxdist.lora import read_lora_file
from ltxdist.training.run_dir import complete_checkpoints

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _adapters(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(checkpoint_dir).adapters


@pytest.mark.slow
def test_readme_demo_runs_and_loss_goes_down(tmp_path):
    env = {
        **ENV,
        "DEMO_DIR": str(tmp_path / "run"),
        "DEMO_MODELS": str(tmp_path / "models"),
        "DEMO_DATA": str(tmp_path / "data"),
        "VENV": str(BIN.parent),  # the suite's own environment (make lock runs it in .venv-lock)
    }
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), "trainer.progress_bar=false"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 201))
    first = sum(r["loss/total"] for r in rows[:40]) / 40
    last = sum(r["loss/total"] for r in rows[-40:]) / 40
    assert last < 0.85 * first, (first, last)
    lora = read_lora_file(tmp_path / "run" / "lora" / "lora_weights_step_000200.safetensors")
    assert lora.metadata["step"] == "200" and lora.metadata["base_model_version"] == "2.3.0"
    assert (tmp_path / "run" / "merged.safetensors").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()
    # the data came from raw clips through ltxdist-prepare
    assert load_index(tmp_path / "data" / "shards").num_samples == 8
    # keep_last_k=2 of the demo
    assert [s for s, _ in complete_checkpoints(tmp_path / "run")] == [150, 200]


@pytest.mark.slow
def test_killed_run_resumes_from_last_complete_checkpoint(tiny_ckpt, tiny_data, tmp_path, caplog):
    common = dict(**{"trainer.max_steps": 60, "trainer.checkpoint_every_n_steps": 5})
    train_in_process(compose_train(train_overrides(tiny_ckpt, tiny_data, tmp_path / "ref", **common)))

    run = tmp_path / "killed"
    args = train_overrides(tiny_ckpt, tiny_data, run, **common)
    proc = subprocess.Popen(
        [str(BIN / "ltxdist-train"), *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "step-000015").exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [s for s, _ in complete_checkpoints(run)]
    assert done and done[-1] < 60, f"the kill must land mid-run, found checkpoints {done}"
    last = done[-1]

    with caplog.at_level(logging.INFO, logger="ltxdist"):
        train_in_process(compose_train(args))  # the killed command's own overrides
    assert f"resuming from {run / 'checkpoints' / f'step-{last:06d}'}" in caplog.text
    steps = [r["step"] for r in _metrics(run)]
    assert steps == list(range(1, 61)), "metrics continue at the checkpoint step, no gap and no repeat"
    a, b = (
        _adapters(tmp_path / "ref" / "checkpoints" / "step-000060"),
        _adapters(run / "checkpoints" / "step-000060"),
    )
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)


STRATEGY_RUNS = {
    # The 22B model trains with a bf16 base (model.dtype=bfloat16, fp32 adapters); every other end-to-end
    # run is fp32, so this one takes the bf16 path.
    "standard": {"model.dtype": "bfloat16"},
    "video_to_video": {
        "data.synthetic_reference_video_downscale": 2,
        "strategy.reference_downscale_factor": 2,
    },
    "audio_ref_only_ic": {
        "data.synthetic_reference_audio_frames": 10,
        "strategy.mask_video_to_ref_audio": "true",
        "strategy.mask_ref_audio_to_text": "true",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGY_RUNS))
def test_each_strategy_trains_with_falling_loss(tiny_ckpt, tmp_path, strategy):
    extra = {
        "strategy": strategy,
        "data.path": tmp_path / "data",
        "data.synthetic_if_missing": "true",
        "data.synthetic_num_samples": 16,
        "trainer.max_steps": 80,
        "trainer.checkpoint_every_n_steps": 80,
        "optim.lr": 3e-3,
        **STRATEGY_RUNS[strategy],
    }
    train_in_process(compose_train(train_overrides(tiny_ckpt, tmp_path / "data", tmp_path / "run", **extra)))
    rows = _metrics(tmp_path / "run")
    assert len(rows) == 80 and all(math.isfinite(r["loss/total"]) for r in rows)
    first = sum(r["loss/total"] for r in rows[:15]) / 15
    last = sum(r["loss/total"] for r in rows[-15:]) / 15
    assert last < 0.9 * first, (first, last)
    streams = {"loss/video"} if strategy == "video_to_video" else {"loss/video", "loss/audio"}
    assert streams <= set(rows[-1])
    meta = read_lora_file(tmp_path / "run" / "lora" / "lora_weights_step_000080.safetensors").metadata
    assert meta["training_strategy"] == strategy
    if strategy == "video_to_video":
        assert meta["reference_downscale_factor"] == "2"
    dtype = STRATEGY_RUNS[strategy].get("model.dtype", "float32")
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").model.dtype == dtype
    if strategy == "audio_ref_only_ic":  # what ltxdist-sample needs to condition as in training
        assert meta["use_negative_ref_positions"] == "true"  # the strategy's default
        assert (meta["mask_video_to_ref_audio"], meta["mask_ref_audio_to_text"]) == ("true", "true")
