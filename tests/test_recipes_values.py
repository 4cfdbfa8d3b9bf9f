"""The two published recipes resolve to the published values (LTX_FACTS.md section 2, typed in here
from the spec, not read from the code), and configs whose adapters could never train are refused."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from ltxdist.config import ConfigError, validate_config
from ltxdist.config.store import CONF_DIR, compose_train_config, register_configs
from ltxdist.lora.targets import resolve_target_modules
from ltxdist.models import build_meta_transformer
from ltxdist.models.presets import transformer_config
from ltxdist.training.optim import build_scheduler

register_configs()

QKVO = ("to_q", "to_k", "to_v", "to_out.0")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["data.path=/shards", *overrides])


def _adapted(cfg) -> set[str]:
    """Block-inner names of the Linears the recipe's lora.targets adapt (same names at every size)."""
    model = build_meta_transformer(transformer_config("tiny"))
    return {n.split(".", 2)[2] for n in resolve_target_modules(model, list(cfg.lora.targets))}


def _lr_curve(cfg, steps: list[int]) -> list[float]:
    """The learning rate the run's own scheduler sets at each (0-based) optimizer step."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = build_scheduler(opt, cfg.optim.schedule, cfg.optim.lr, cfg.trainer.max_steps)
    return [cfg.optim.lr * sched.lr_lambdas[0](step) for step in steps]


def test_ic_lora_recipe_has_the_published_values():
    cfg = _compose("experiment=ltx23_ic_lora_8xh100")
    validate_config(cfg)
    assert cfg.strategy.name == "video_to_video"
    assert (cfg.lora.rank, cfg.lora.alpha) == (128, 128)
    assert cfg.optim.name == "adamw8bit"
    assert cfg.model.dtype == "bfloat16"
    assert cfg.trainer.gradient_clip_val == 1.0
    assert cfg.data.batch_size == 1
    assert cfg.strategy.first_frame_conditioning_p == 0.0
    assert (cfg.parallel.name, cfg.parallel.devices) == ("ddp", 8)
    # lr 1.3e-4, linear down to 1.3e-5, then constant 1.3e-5
    n = cfg.optim.schedule.phase_one_steps
    assert n > 0
    lr = _lr_curve(cfg, [0, n // 2, n, n + 1, cfg.trainer.max_steps - 1])
    assert lr == pytest.approx([1.3e-4, (1.3e-4 + 1.3e-5) / 2, 1.3e-5, 1.3e-5, 1.3e-5], rel=1e-6)
    # video-only training: adapters on the video attention, none on modules that never run
    assert _adapted(cfg) == {f"{m}.{p}" for m in ("attn1", "attn2") for p in QKVO}


def test_id_lora_recipe_has_the_published_values():
    cfg = _compose("experiment=ltx23_id_lora_8xh100")
    validate_config(cfg)
    assert cfg.strategy.name == "audio_ref_only_ic"
    assert cfg.lora.rank == 128
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert cfg.trainer.max_steps == 3000
    assert cfg.strategy.first_frame_conditioning_p == pytest.approx(0.9)
    # rank 128 on the audio attention, the audio FFN and both cross-modal attentions
    attn = ("audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
    expected = {f"{m}.{p}" for m in attn for p in QKVO} | {"audio_ff.net.0.proj", "audio_ff.net.2"}
    assert _adapted(cfg) == expected


def test_ddp_refuses_adapters_on_modules_that_never_run():
    # The IC recipe as it was (every attention, audio included) while training no audio stream:
    # DDP would fail at step 2; the config check names the flag and the idle modules.
    with pytest.raises(ConfigError, match=r"^lora\.targets: .*audio_attn1\.to_q.*video_attn"):
        validate_config(_compose("experiment=ltx23_ic_lora_8xh100", "lora.targets=[attn]"))
    with pytest.raises(ConfigError, match=r"^lora\.targets: .*audio_ff\.net\.0\.proj"):
        validate_config(
            _compose("parallel=ddp", "strategy.with_audio=false", "lora=attn_ff", "lora.targets=[audio_ff.*]")
        )
    # Fine where every adapter runs (audio trained) or where idle adapters do not break the step.
    validate_config(
        _compose("experiment=ltx23_ic_lora_8xh100", "lora.targets=[attn]", "strategy.with_audio=true")
    )
    validate_config(
        _compose(
            "experiment=ltx23_ic_lora_8xh100", "lora.targets=[attn]", "parallel=single", "parallel.devices=1"
        )
    )


@pytest.mark.parametrize(
    ("override", "flag"),
    [
        ("strategy.audio_sigma=independent", "strategy.audio_sigma"),
        ("strategy.with_audio=false", "strategy.with_audio"),
    ],
)
def test_audio_ref_only_ic_refuses_flags_it_would_ignore(override, flag):
    validate_config(_compose("strategy=audio_ref_only_ic"))
    # Options of the other strategies: the closed config has no such key for audio_ref_only_ic.
    ours = "not of the selected strategy=audio_ref_only_ic"
    with pytest.raises(ConfigError, match=rf"^{flag}: an option of .*{ours}"):
        compose_train_config(["data.path=/shards", "strategy=audio_ref_only_ic", override])
