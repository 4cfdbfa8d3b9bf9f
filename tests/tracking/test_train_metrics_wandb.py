"""A real training run with `logger=wandb` (offline) and validation sampling: the W&B run holds every
metric key with the values of metrics.jsonl, the resolved config, the LoRA artifacts and the validation
videos; throughput and FLOP numbers agree with hand counts; the API key is never written anywhere."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import av
import pytest
from e2e_utils import compose_train, train_in_process
from wandb_records import history, of_type

from ltxdist.config.schema import ConfigError, validate_validation_config
from ltxdist.sampling import SampleRequest, VideoSpec
from ltxdist.tracking.flops import FlopModel
from ltxdist.training.callbacks import MetricsJsonl
from ltxdist.training.validation import ValidationJob, rank_jobs

SECRET = "ltxdist-test-key-0123456789abcdef0123456789abcdef"
KEYS = {
    "loss/total",
    "loss/video",
    "loss/audio",
    "optim/lr",
    "optim/grad_norm",
    "train/nonfinite_skipped",
    "train/step_skipped",
    "throughput/tokens_per_s",
    "throughput/tokens_per_s_per_gpu",
    "throughput/samples_per_s",
    "throughput/samples_per_s_per_gpu",
    "perf/step_time_s",
    "perf/data_wait_s",
    "perf/data_wait_frac",
    "perf/model_tflops_per_gpu",
    "perf/mfu",
    "perf/hfu",
    "memory/host_peak_rss_gib",
}
# 64x64x17 bucket: 3 x 2 x 2 video tokens, 18 audio latent frames, 16 text tokens; batch 2
TOKENS = {"v": 12, "vt": 16, "a": 18, "at": 16}
BATCH, ACCUMULATE = 2, 2


def _run(inputs, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run, in this process (train_in_process: the command line's closed config), with the
    environment a shell would give `ltxdist-train` set while it trains."""
    args = {
        "experiment": "tiny_demo",
        "model.checkpoint": inputs.checkpoint,
        "model.dtype": "float32",
        "data.path": inputs.data,
        "data.batch_size": BATCH,
        "run.dir": run_dir,
        "run.name": "wandb test",
        "trainer.progress_bar": "false",
        "trainer.max_steps": 4,
        "trainer.checkpoint_every_n_steps": 2,
        "trainer.accumulate_grad_batches": ACCUMULATE,
        "lora.rank": 4,
        "lora.alpha": 8,
        "logger": "wandb",
        "logger.mode": "offline",
        "validation": "default",
        "validation.gemma_root": inputs.gemma,
        "validation.every_n_steps": 2,
        "validation.width": 64,
        "validation.height": 64,
        "validation.num_frames": 9,
        "validation.steps": 2,
        "validation.stg_blocks": "[1]",
        "validation.prompts": "[a red ball,a blue cube]",
        "validation.seeds": "[5]",
    }
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_API_KEY": SECRET,  # must never be written or printed
        "LTXDIST_PEAK_TFLOPS": "1.0",  # CPU has no known peak: give one so MFU/HFU are reported
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    train_in_process(compose_train([f"{k}={v}" for k, v in args.items()]))


@pytest.mark.slow
def test_wandb_run_holds_metrics_config_lora_and_validation_videos(
    tiny_run_inputs, tmp_path, monkeypatch, capfd, caplog
):
    run_dir = tmp_path / "run"
    caplog.set_level(logging.INFO)  # what the command prints: its log lines from INFO on
    _run(tiny_run_inputs, run_dir, monkeypatch)

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert set(r) >= KEYS, KEYS - set(r)
        assert any(k.startswith("loss/video/sigma_") for k in r) and any(
            k.startswith("loss/audio/sigma_") for k in r
        )
        # throughput = tokens processed in the step (2 micro-batches x batch 2 x 46 tokens) / step time
        assert r["throughput/tokens_per_s"] * r["perf/step_time_s"] == pytest.approx(
            ACCUMULATE * BATCH * (TOKENS["v"] + TOKENS["a"]), rel=1e-9
        )
        assert r["throughput/samples_per_s"] * r["perf/step_time_s"] == pytest.approx(ACCUMULATE * BATCH)
        assert 0 <= r["perf/data_wait_frac"] < 1
        assert r["loss/total"] == pytest.approx(r["loss/video"] + r["loss/audio"], rel=1e-6)
        assert r["perf/hfu"] == pytest.approx(r["perf/mfu"])  # no activation checkpointing in this run

    # MFU: model FLOPs of the step (hand-checked count, tests/tracking/test_flops.py) / time / 1 TFLOP/s
    from ltxdist.lora import LoRASpec, inject_lora
    from ltxdist.models import build_meta_transformer, read_checkpoint_info

    meta = build_meta_transformer(read_checkpoint_info(tiny_run_inputs.checkpoint).config)
    inject_lora(meta, LoRASpec(rank=4, alpha=8, targets=("attn",)))
    flops = ACCUMULATE * FlopModel.from_model(meta).step(batch=BATCH, tokens=TOKENS).model
    for r in rows:
        assert r["perf/mfu"] == pytest.approx(flops / r["perf/step_time_s"] / 1e12, rel=1e-9)

    (wandb_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    logged = history(wandb_file)
    metric_rows = {h["trainer/global_step"]: h for h in logged if "loss/total" in h}
    assert sorted(metric_rows) == [1, 2, 3, 4]
    for r in rows:
        w = metric_rows[r["step"]]
        assert not {"loss", "lr", "grad_norm"} & set(r), "one pipeline: no un-namespaced duplicates"
        for key, value in r.items():
            if key not in MetricsJsonl.HEADER:  # the record's step, data position and time stay local
                assert w[key] == value, key  # the very same numbers as metrics.jsonl

    video_rows = {h["trainer/global_step"]: h for h in logged if "validation/videos" in json.dumps(list(h))}
    assert sorted(video_rows) == [0, 2, 4]  # at start and every 2 steps
    media = sorted((wandb_file.parent / "files" / "media" / "videos").rglob("*.mp4"))
    assert len(media) == 3 * 2
    for step in (0, 2, 4):
        out = run_dir / "samples" / f"step-{step:06d}"
        index = json.loads((out / "index.json").read_text())
        assert [v["prompt"] for v in index["videos"]] == ["a red ball", "a blue cube"]
        for v in index["videos"]:
            with av.open(str(out / v["file"])) as c:
                assert c.streams.audio and sum(1 for _ in c.decode(video=0)) == 9

    config = {
        item.key: json.loads(item.value_json) for rec in of_type(wandb_file, "config") for item in rec.update
    }
    assert config["validation"]["prompts"] == ["a red ball", "a blue cube"]
    assert config["lora"]["rank"] == 4
    artifacts = of_type(wandb_file, "artifact")
    assert [(a.type, sorted(a.aliases)) for a in artifacts] == [
        ("lora", ["latest", "step-2"]),
        ("lora", ["latest", "step-4"]),
    ]
    assert [c.path for a in artifacts for c in a.manifest.contents] == [
        "lora_weights_step_000002.safetensors",
        "lora_weights_step_000004.safetensors",
    ]

    leaked = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    printed = capfd.readouterr()  # this process's output and that of what it started (W&B's service)
    assert not leaked and SECRET not in printed.out + printed.err + caplog.text


def _job(i: int) -> ValidationJob:
    return ValidationJob(i, i, SampleRequest(prompt=f"p{i}", video=VideoSpec(64, 64, 9)))


def test_validation_jobs_are_spread_over_ranks():
    jobs = [_job(i) for i in range(5)]
    r0, r1 = rank_jobs(jobs, 0, 2, lockstep=False), rank_jobs(jobs, 1, 2, lockstep=False)
    assert [j.index for j, _ in r0] == [0, 2, 4] and [j.index for j, _ in r1] == [1, 3]
    assert all(w for _, w in r0 + r1)
    # FSDP2 / ZeRO-3: every rank runs as many forwards; the filler is not written
    r1 = rank_jobs(jobs, 1, 2, lockstep=True)
    assert [(j.index, w) for j, w in r1] == [(1, True), (3, True), (1, False)]
    assert [(j.index, w) for j, w in rank_jobs(jobs[:1], 1, 2, lockstep=True)] == [(0, False)]


def test_validation_config_errors_name_the_flag():
    from omegaconf import OmegaConf

    from ltxdist.config.schema import ValidationConfig

    base = OmegaConf.structured(ValidationConfig(name="default", prompts=["a"], gemma_root="/g"))
    validate_validation_config(base, "standard")
    for change, strategy, flag in (
        ({"prompts": []}, "standard", "validation.prompts"),
        ({"num_frames": 10}, "standard", "validation.num_frames"),
        ({"width": 100}, "standard", "validation.width"),
        ({"gemma_root": None}, "standard", "validation.gemma_root"),
        ({}, "video_to_video", "validation.references"),
        ({"references": [{"video": "r.mp4"}]}, "audio_ref_only_ic", "validation.references"),
    ):
        cfg = OmegaConf.merge(base, change)
        with pytest.raises(ConfigError, match=flag):
            validate_validation_config(cfg, strategy)
    validate_validation_config(OmegaConf.merge(base, {"references": [{"video": "r.mp4"}]}), "video_to_video")
