"""Mistakes found when a run starts, before the model loads or anything is written to the run folder:
a lora.targets pattern that matches nothing, and shards prepared for another strategy's references."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from e2e_utils import compose_train, train_in_process, train_overrides

from ltxdist.config.schema import ConfigError
from ltxdist.data.compat import ShardCompatibilityError


def _cfg(ckpt: Path, data: Path, run: Path, *raw: str):
    return compose_train([*train_overrides(ckpt, data, run, **{"trainer.max_steps": 1}), *raw])


_train = train_in_process


def _relabelled(data: Path, tmp_path: Path, **recorded: object) -> Path:
    """A copy of the synthetic shards whose index says how ltxdist-prepare made them."""
    copy = tmp_path / "shards"
    shutil.copytree(data, copy)
    index = json.loads((copy / "index.json").read_text())
    (copy / "index.json").write_text(json.dumps({**index, **recorded}))
    return copy


def test_a_target_pattern_that_matches_nothing_is_a_config_error_before_anything_is_written(
    tiny_ckpt, tiny_data, tmp_path
):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"lora\.targets: pattern\(s\) \['to_k'\] match no Linear"):
        _train(_cfg(tiny_ckpt, tiny_data, run, "lora.targets=[to_k]"))
    assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()


def test_blocks_the_model_does_not_have_are_named_as_lora_blocks(tiny_ckpt, tiny_data, tmp_path):
    """lora.blocks=[99] on a 2-block model matched nothing, and the error blamed lora.targets."""
    with pytest.raises(
        ConfigError, match=r"lora\.blocks: \[99\] are not blocks of this model \(it has 0-1\)"
    ):
        _train(_cfg(tiny_ckpt, tiny_data, tmp_path / "run", "lora.blocks=[1,99]"))


@pytest.mark.parametrize(
    ("recorded", "overrides", "message"),
    [
        (
            {"strategy": "video_to_video", "reference_downscale_factor": 2},
            ["strategy=video_to_video"],
            r"downscaled by 2 .*reference_downscale_factor=1: set strategy\.reference_downscale_factor=2",
        ),
        (
            {"strategy": "standard"},
            ["strategy=video_to_video"],
            r"--strategy standard, which writes no references",
        ),
        (
            {"strategy": "standard"},
            ["strategy=audio_ref_only_ic"],
            r"re-run ltxdist-prepare with --strategy audio",
        ),
    ],
)
def test_shards_prepared_for_other_references_are_refused_at_start(
    tiny_ckpt, tiny_data, tmp_path, recorded, overrides, message
):
    shards = _relabelled(tiny_data, tmp_path, **recorded)
    run = tmp_path / "run"
    with pytest.raises(ShardCompatibilityError, match=message) as refused:
        _train(_cfg(tiny_ckpt, shards, run, *overrides))
    assert str(shards) in str(refused.value) and not (run / "config.yaml").exists()


def test_matching_references_and_plain_strategies_pass_the_start_checks(tiny_ckpt, tiny_data, tmp_path):
    from ltxdist.data.compat import check_data_fits_strategy

    shards = _relabelled(tiny_data, tmp_path, strategy="video_to_video", reference_downscale_factor=2)
    cfg = _cfg(
        tiny_ckpt,
        shards,
        tmp_path / "run",
        "strategy=video_to_video",
        "strategy.reference_downscale_factor=2",
    )
    check_data_fits_strategy(cfg.data, cfg.strategy)
    standard = _cfg(tiny_ckpt, shards, tmp_path / "run")  # a standard run may ignore the references
    check_data_fits_strategy(standard.data, standard.strategy)
