"""The LightningModule's loss path: activation checkpointing, caption dropout, per-modality weights."""

from __future__ import annotations

import itertools

import pytest
import torch
from hydra import compose, initialize_config_dir

from ltxdist.config.store import CONF_DIR, register_configs
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.training.module import LTXLoRAModule

register_configs()


def _module(tiny_ckpt, tiny_data, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"model.checkpoint={tiny_ckpt}",
                f"data.path={tiny_data}",
                "model.dtype=float32",
                "lora.rank=4",
                *overrides,
            ],
        )
    module = LTXLoRAModule(cfg)
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.lora_parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))  # B != 0 so every adapter gets gradients
    return module


def _batch(tiny_data):
    stream = CachedLatentStream(tiny_data, StreamPlan(batch_size=2, seed=0))
    return next(itertools.islice(stream.iter_batches(), 1, None))


def test_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_ckpt, tiny_data):
    batch = _batch(tiny_data)
    results = []
    for ac in ("false", "true"):
        module = _module(
            tiny_ckpt,
            tiny_data,
            f"model.gradient_checkpointing={ac}",
            "strategy.first_frame_conditioning_p=0.5",
        )
        module.train()
        assert module.transformer._enable_gradient_checkpointing is (ac == "true")
        loss, _ = module.compute_loss(batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in module.lora_parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_caption_dropout_uses_the_cached_empty_caption(tiny_ckpt, tiny_data):
    from ltxdist.data.shards import load_empty_caption

    batch = _batch(tiny_data)
    empty = load_empty_caption(tiny_data)
    module = _module(tiny_ckpt, tiny_data, "strategy.caption_dropout_p=1.0")
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    dropped = module._caption_dropout(batch, gens)
    for key in ("video_context", "audio_context"):
        assert torch.equal(dropped[key], empty[key].unsqueeze(0).expand_as(batch[key]).to(batch[key].dtype))
        assert not torch.equal(batch[key], dropped[key])  # the input batch is not modified in place
    kept = _module(tiny_ckpt, tiny_data, "strategy.caption_dropout_p=0.0")._caption_dropout(batch, gens)
    assert kept is batch


@pytest.mark.parametrize(("wv", "wa"), [(1.0, 1.0), (0.0, 1.0), (2.0, 0.5)])
def test_per_modality_loss_weights(tiny_ckpt, tiny_data, wv, wa):
    batch = _batch(tiny_data)
    module = _module(
        tiny_ckpt, tiny_data, f"strategy.video_loss_weight={wv}", f"strategy.audio_loss_weight={wa}"
    )
    total, parts = module.compute_loss(batch)
    torch.testing.assert_close(total.detach(), wv * parts["loss/video"] + wa * parts["loss/audio"])
    assert parts["loss/video"] > 0 and parts["loss/audio"] > 0
    buckets = parts["sigma_buckets/video"]
    assert sum(int(count) for _, count in buckets.values()) == 2  # every sample lands in one sigma bucket


def test_warm_start_carries_adapters_and_moments_but_not_the_schedule(tiny_ckpt, tiny_data, tmp_path):
    from ltxdist.training.checkpoint_io import SafetensorsCheckpointIO
    from ltxdist.training.warm_start import warm_start

    batch = _batch(tiny_data)
    src = _module(tiny_ckpt, tiny_data, "optim.lr=0.01")
    opt_src = torch.optim.AdamW(src.lora_parameters(), lr=0.01)
    loss, _ = src.compute_loss(batch)
    loss.backward()
    opt_src.step()
    SafetensorsCheckpointIO().save_checkpoint(
        {"state_dict": src.state_dict(), "optimizer_states": [opt_src.state_dict()]}, tmp_path / "ck"
    )

    dst = _module(tiny_ckpt, tiny_data, "lora.init_seed=7")
    opt_dst = torch.optim.AdamW(dst.lora_parameters(), lr=0.001)
    warm_start(dst, opt_dst, tmp_path / "ck")
    for a, b in zip(src.lora_parameters(), dst.lora_parameters(), strict=True):
        torch.testing.assert_close(a, b)
    moments_src = opt_src.state_dict()["state"]
    moments_dst = opt_dst.state_dict()["state"]
    assert moments_dst.keys() == moments_src.keys()
    for i in moments_src:
        torch.testing.assert_close(moments_dst[i]["exp_avg"], moments_src[i]["exp_avg"])
    assert opt_dst.param_groups[0]["lr"] == 0.001  # the new stage's own learning rate
