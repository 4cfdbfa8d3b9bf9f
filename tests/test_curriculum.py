"""Staged curriculum: stages carry the LoRA and optimizer moments; a run killed in stage 3 resumes there;
DeepSpeed (which cannot carry them) is refused before anything trains. The run that is SIGKILLed is a
process of its own; the reference and the resumed run train in this process (no start-up to pay)."""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from e2e_utils import BIN, REPO, compose_train, train_in_process

from ltxdist.checkpoint import read_checkpoint
from ltxdist.training.run_dir import complete_checkpoints

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
GUIDE = REPO / "docs" / "recipes" / "staged_curriculum.md"


def _guide_command() -> list[str]:
    """The training command of the guide's tiny run, word by word, $WORK / $MODELS unexpanded."""
    block = re.search(r"<!-- tested -->\s*```bash\n(.*?)```", GUIDE.read_text(), re.S).group(1)
    (line,) = [ln for ln in block.replace("\\\n", " ").splitlines() if "ltxdist-train" in ln]
    return shlex.split(line.split("&&", 1)[-1])  # the guide runs it after `cd $WORK &&`


def _args(tmp: Path, run: str) -> list[str]:
    # The guide's command as written, run in tmp (its $WORK: the synthetic data goes to tmp/data/), with
    # $MODELS at tmp (the tiny checkpoint is written there on first use) and its run.dir moved to tmp/run.
    words = [w.replace("$MODELS", str(tmp)).replace("$WORK", str(tmp)) for w in _guide_command()]
    assert words[0] == "ltxdist-train" and sum(w.startswith("run.dir=") for w in words) == 1, words
    words = [f"run.dir={tmp / run}" if w.startswith("run.dir=") else w for w in words]
    return [str(BIN / words[0]), *words[1:]]


def _final_adapters(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "stages").iterdir())[-1]
    return read_checkpoint(complete_checkpoints(last)[-1][1]).adapters


def _train_here(tmp: Path, run: str) -> None:
    """The same command in this process, from tmp (the guide's stage data paths are relative to $WORK)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        train_in_process(compose_train(_args(tmp, run)[1:]))


@pytest.mark.slow
def test_curriculum_runs_all_stages_and_resumes_when_killed_in_stage_3(tmp_path, caplog):
    _train_here(tmp_path, "ref")
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

    with caplog.at_level(logging.INFO, logger="ltxdist"):
        _train_here(tmp_path, "killed")
    log = caplog.text
    assert "heads: already complete" in log and "full_frames: already complete" in log
    assert f"resuming from {stage3 / 'checkpoints'}" in log
    assert {p: p.stat().st_mtime for p in earlier} == earlier  # finished stages were not re-run
    a, b = _final_adapters(tmp_path / "ref"), _final_adapters(tmp_path / "killed")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)


def test_curriculum_under_deepspeed_is_refused_before_any_stage_trains(tmp_path):
    from hydra import compose, initialize_config_dir

    from ltxdist.config.store import CONF_DIR, register_configs
    from ltxdist.training.checkpointing import WarmStartError
    from ltxdist.training.curriculum import run_curriculum
    from ltxdist.training.train import fit

    register_configs()
    overrides = ["experiment=staged_curriculum_tiny", f"run.dir={tmp_path}", "parallel=deepspeed_zero2"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)

    def train_one(stage_cfg: object) -> None:
        raise AssertionError("no stage may start")

    with pytest.raises(WarmStartError, match=r"parallel=deepspeed_zero2"):
        run_curriculum(cfg, train_one)
    # lora.init_from on its own is refused too, before any model is built or anything is read.
    cfg.stages = []
    cfg.lora.init_from = str(tmp_path / "missing")
    cfg.run.dir = str(tmp_path / "run")
    with pytest.raises(WarmStartError, match=r"lora\.init_from=.*parallel=deepspeed_zero2"):
        fit(cfg)


@pytest.mark.parametrize(
    "bad, named",
    [
        ("lora.rank=0", "lora.rank"),
        ("optim.schedule.name=cosin", "optim.schedule.name"),
        ("lora.rnak=4", "rnak"),
    ],
)
def test_a_bad_override_in_the_last_stage_fails_before_the_first_stage_trains(tmp_path, bad, named):
    from ltxdist.config.schema import ConfigError
    from ltxdist.config.store import compose_train_config
    from ltxdist.training.train import train

    cfg = compose_train_config(["experiment=staged_curriculum_tiny", f"run.dir={tmp_path / 'run'}"])
    last = len(cfg.stages) - 1
    assert last >= 2  # the guide's curriculum: earlier stages would train first
    cfg.stages[last].overrides = [*cfg.stages[last].overrides, bad]
    with pytest.raises(ConfigError, match=rf"stages\[{last}\] \({cfg.stages[last].name}\).*{named}"):
        train(cfg)
    assert not (tmp_path / "run").exists(), "nothing trained, nothing written"
