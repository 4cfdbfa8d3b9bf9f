import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltxdist.models import CheckpointError, build_meta_transformer, load_transformer, read_checkpoint_info
from ltxdist.models.presets import LTX23_MODEL_VERSION, transformer_config
from ltxdist.models.tiny_checkpoint import write_random_checkpoint


def test_tiny_checkpoint_is_in_the_official_layout(tiny_ckpt):
    with safe_open(str(tiny_ckpt), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    transformer_keys = [k for k in keys if k.startswith("model.diffusion_model.")]
    assert transformer_keys, "transformer weights must live under model.diffusion_model."
    assert meta["model_version"] == LTX23_MODEL_VERSION
    config = json.loads(meta["config"])
    assert config["transformer"]["rope_type"] == "split"
    assert config["transformer"]["caption_proj_before_connector"] is True
    # ComfyUI reads this key (default false: non-causal positions); the released 2.3 config has true
    assert config["transformer"]["causal_temporal_positioning"] is True
    assert transformer_config("ltx23_22b")["transformer"]["causal_temporal_positioning"] is True
    sd = load_file(str(tiny_ckpt))
    assert all(sd[k].dtype == torch.bfloat16 for k in transformer_keys)
    # every tensor initialised: finite, and no tensor left all-zero (torch.empty would give garbage/zeros)
    for k in transformer_keys:
        assert torch.isfinite(sd[k].float()).all(), k
        assert sd[k].float().abs().sum() > 0, k


def test_tiny_checkpoint_is_seeded(tmp_path):
    paths = [
        write_random_checkpoint(tmp_path / f"{name}.safetensors", seed=seed)
        for name, seed in (("a", 1), ("b", 1), ("c", 2))
    ]
    a, b, c = (load_file(str(p)) for p in paths)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    # metadata too (compared as a dict: safetensors writes its metadata map in no fixed order)
    metas = []
    for path in paths[:2]:
        with safe_open(str(path), "pt") as f:
            metas.append(f.metadata())
    assert metas[0] == metas[1]
    # Another seed changes every randomly drawn tensor (constant ones, e.g. norm weights of 1, stay).
    drawn = [k for k in a if a[k].numel() > 1 and a[k].float().std() > 0]
    assert len(drawn) > 0.5 * len(a)
    assert [k for k in drawn if torch.equal(a[k], c[k])] == []


def test_loader_builds_every_parameter_and_exposes_version(tiny_ckpt):
    loaded = load_transformer(tiny_ckpt, dtype=torch.bfloat16)
    params = dict(loaded.model.named_parameters())
    assert all(p.device.type == "cpu" for p in params.values())
    assert loaded.model_version == LTX23_MODEL_VERSION
    sd = load_file(str(tiny_ckpt))
    for name, p in params.items():
        assert torch.equal(p.detach(), sd["model.diffusion_model." + name]), name
    assert 300_000 < sum(p.numel() for p in params.values()) < 600_000


def _rewrite(src, dst, drop=(), add=None):
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    sd = {k: v for k, v in load_file(str(src)).items() if k not in drop}
    sd.update(add or {})
    save_file(sd, str(dst), metadata=meta)


def test_missing_and_unexpected_keys_are_errors_listing_them(tiny_ckpt, tmp_path):
    missing = "model.diffusion_model.transformer_blocks.1.attn2.to_k.bias"
    _rewrite(tiny_ckpt, tmp_path / "m.safetensors", drop=[missing])
    with pytest.raises(CheckpointError, match=r"missing 1 keys: transformer_blocks\.1\.attn2\.to_k\.bias"):
        load_transformer(tmp_path / "m.safetensors")
    extra = {"model.diffusion_model.transformer_blocks.7.attn1.to_q.weight": torch.zeros(2, 2)}
    _rewrite(tiny_ckpt, tmp_path / "u.safetensors", add=extra)
    with pytest.raises(
        CheckpointError, match=r"unexpected 1 keys: transformer_blocks\.7\.attn1\.to_q\.weight"
    ):
        load_transformer(tmp_path / "u.safetensors")


def test_missing_file_and_missing_config_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint_info(tmp_path / "nope.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "noconf.safetensors"))
    with pytest.raises(CheckpointError, match=r"noconf\.safetensors has no 'config'"):
        read_checkpoint_info(tmp_path / "noconf.safetensors")


def test_a_config_disagreeing_with_ltx_core_on_causal_positions_is_refused(tiny_ckpt, tmp_path):
    """ltx-core's position tools are causal whatever the config says (latent frame 0 covers pixel frame
    [0, 1) only); a file saying otherwise would be run as something it does not describe."""
    from ltx_core.components.patchifiers import VideoLatentPatchifier
    from ltx_core.tools import VideoLatentTools
    from ltx_core.types import VideoLatentShape

    shape = VideoLatentShape(batch=1, channels=128, frames=2, height=1, width=1)
    positions = (
        VideoLatentTools(VideoLatentPatchifier(patch_size=1), shape, fps=24.0)
        .create_initial_state(torch.device("cpu"), torch.float32)
        .positions
    )
    assert positions[0, 0, 0].tolist() == pytest.approx([0.0, 1 / 24])  # causal: frame 0 is one frame
    with safe_open(str(tiny_ckpt), framework="pt") as f:
        meta = dict(f.metadata())
    config = json.loads(meta["config"])
    config["transformer"]["causal_temporal_positioning"] = False
    bad = tmp_path / "noncausal.safetensors"
    save_file(load_file(str(tiny_ckpt)), str(bad), metadata={**meta, "config": json.dumps(config)})
    with pytest.raises(
        CheckpointError, match=r"noncausal\.safetensors: .*causal_temporal_positioning is False, but ltx-core"
    ):
        load_transformer(bad)
    del config["transformer"]["causal_temporal_positioning"]  # absent: ltx-core's assumption holds
    save_file(load_file(str(tiny_ckpt)), str(bad), metadata={**meta, "config": json.dumps(config)})
    assert read_checkpoint_info(bad).config["transformer"].get("causal_temporal_positioning") is None


def test_22b_preset_builds_on_meta_with_the_published_size():
    model = build_meta_transformer(transformer_config("ltx23_22b"))
    n_params = sum(p.numel() for p in model.parameters())
    per_block = sum(p.numel() for p in model.transformer_blocks[0].parameters())
    assert all(p.device.type == "meta" for p in model.parameters())
    assert len(model.transformer_blocks) == 48
    # public figures: ~19.0B in the transformer, ~386.7M per block
    assert 18.5e9 < n_params < 19.5e9, n_params
    assert 380e6 < per_block < 392e6, per_block


def test_a_mistyped_checkpoint_path_is_an_error_not_a_new_checkpoint(tiny_data, tmp_path):
    """Issue 24, case 7: with model=tiny a mistyped model.checkpoint silently became a new random
    checkpoint at that path. Now only a command that asks for one writes it (experiment=tiny_demo)."""
    from hydra import compose, initialize_config_dir

    from ltxdist.config.schema import ConfigError
    from ltxdist.config.store import CONF_DIR, register_configs
    from ltxdist.training.train import train

    typo = tmp_path / "checkpoints" / "ltx-2.3-tiyn.safetensors"
    overrides = [
        "model=tiny",
        f"model.checkpoint={typo}",
        f"data.path={tiny_data}",
        f"run.dir={tmp_path / 'r'}",
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
        demo = compose("train", overrides=["experiment=tiny_demo", *overrides[1:]])
    with pytest.raises(ConfigError, match=rf"^model\.checkpoint: {typo} does not exist"):
        train(cfg)
    assert not typo.exists() and not (tmp_path / "r" / "config.yaml").exists()
    assert demo.model.create_if_missing  # the demo asks for it (it then writes the tiny checkpoint there)
