"""Two CPU processes (DDP, gloo): validation prompts spread over the ranks all land in samples/step-N/,
and the throughput in metrics.jsonl counts the tokens of both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import av
import pytest
from e2e_utils import tiny_validation_overrides

PROMPTS = ["a red ball", "a blue cube", "a green dot"]


@pytest.mark.slow
def test_ddp_validation_spread_and_global_throughput(tiny_run_inputs, tmp_path):
    run_dir = tmp_path / "run"
    args = {
        "experiment": "tiny_demo",
        "model.checkpoint": tiny_run_inputs.checkpoint,
        "model.dtype": "float32",
        "data.path": tiny_run_inputs.data,
        "data.batch_size": 1,
        "data.split": "sample",
        "run.dir": run_dir,
        "trainer.progress_bar": "false",
        "trainer.max_steps": 2,
        "trainer.checkpoint_every_n_steps": 2,
        "lora.rank": 4,
        "lora.alpha": 8,
        "parallel": "ddp",
        "parallel.devices": 2,
        "parallel.accelerator": "cpu",
        "parallel.process_group_backend": "gloo",
        **tiny_validation_overrides(PROMPTS, tiny_run_inputs.gemma, every_n_steps=2),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",  # a free port: tests may run side by side (make test runs 2 workers)
            "-m",
            "ltxdist.training.train",
            *[f"{k}={v}" for k, v in args.items()],
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = run_dir / "samples" / "step-000002"
    index = json.loads((out / "index.json").read_text())
    assert [v["prompt"] for v in index["videos"]] == PROMPTS  # rank 0 wrote 2 of them, rank 1 one
    for v in index["videos"]:
        with av.open(str(out / v["file"])) as c:
            assert not c.streams.audio and sum(1 for _ in c.decode(video=0)) == 9
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # 2 ranks x 1 sample x (12 video + 18 audio tokens), over the step time
        assert r["throughput/tokens_per_s"] * r["perf/step_time_s"] == pytest.approx(2 * 30, rel=1e-9)
        assert r["throughput/tokens_per_s_per_gpu"] == pytest.approx(r["throughput/tokens_per_s"] / 2)
        assert r["throughput/samples_per_s"] * r["perf/step_time_s"] == pytest.approx(2)
