"""Staged curriculum: stages carry the LoRA and optimizer moments; a run killed in stage 3 resumes there."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from e2e_utils import BIN

from ltxdist.training.checkpoint_io import SafetensorsCheckpointIO
from ltxdist.training.run_dir import complete_checkpoints

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _args(tmp: Path, run: str) -> list[str]:
    # The guide's command (docs/recipes/staged_curriculum.md), with paths moved into the test's tmp dir.
    return [
        str(BIN / "ltxdist-train"),
        "experiment=staged_curriculum_tiny",
        f"run.dir={tmp / run}",
        f"model.checkpoint={tmp / 'tiny.safetensors'}",
        "trainer.progress_bar=false",
    ]


def _final_adapters(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "stages").iterdir())[-1]
    return SafetensorsCheckpointIO().load_checkpoint(complete_checkpoints(last)[-1][1])["state_dict"]


@pytest.mark.slow
def test_curriculum_runs_all_stages_and_resumes_when_killed_in_stage_3(tmp_path):
    ref = subprocess.run(
        _args(tmp_path, "ref"), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    stages = sorted(p.name for p in (tmp_path / "ref" / "stages").iterdir())
    assert stages == ["01-heads", "02-full_frames", "03-video_no_audio", "04-video_clean_audio"]
    assert (tmp_path / "ref" / "lora" / "lora_weights_video_clean_audio_final.safetensors").is_file()
    assert (tmp_path / "ref" / "curriculum.json").is_file()

    proc = subprocess.Popen(
        _args(tmp_path, "killed"),
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    stage3 = tmp_path / "killed" / "stages" / "03-video_no_audio"
    deadline = time.time() + 300
    while time.time() < deadline and not (stage3 / "checkpoints" / "step-000010").exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (stage3 / "stage_complete.json").exists(), "the kill must land inside stage 3"
    earlier = {p: p.stat().st_mtime for p in (tmp_path / "killed" / "stages").glob("0[12]-*/metrics.jsonl")}

    resumed = subprocess.run(
        _args(tmp_path, "killed"), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stderr + resumed.stdout
    assert "heads: already complete" in log and "full_frames: already complete" in log
    assert f"resuming from {stage3 / 'checkpoints'}" in log
    assert {p: p.stat().st_mtime for p in earlier} == earlier  # finished stages were not re-run
    a, b = _final_adapters(tmp_path / "ref"), _final_adapters(tmp_path / "killed")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
