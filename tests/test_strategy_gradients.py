"""Through the real training loss (`LTXLoRAModule.compute_loss`): clean tokens (first frame, IC reference
video, ID reference audio) and padding get exactly zero gradient from the loss, trained tokens do not;
and the adapters that never get a gradient are exactly those `validate_config` refuses under DDP."""

from __future__ import annotations

import pytest
import torch
from hand_samples import hand_sample

from ltxdist.config.store import compose_train_config, register_configs
from ltxdist.data.collate import collate_samples
from ltxdist.lora import lora_modules
from ltxdist.strategies.idle_modules import idle_lora_modules
from ltxdist.training.module import LTXLoRAModule

register_configs()

F, H, W = 3, 2, 4  # latent grid of the target video: 8 tokens per latent frame, 24 in all
FRAME = H * W


def _module(tiny_ckpt, tmp_path, *overrides) -> LTXLoRAModule:
    cfg = compose_train_config(
        [
            f"model.checkpoint={tiny_ckpt}",
            f"data.path={tmp_path}",
            "model.dtype=float32",
            "lora.rank=4",
            *overrides,
        ]
    )
    module = LTXLoRAModule(cfg)
    module.configure_model()
    return module


def _output_grads(module: LTXLoRAModule, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """d(loss)/d(transformer output) for video and audio, through compute_loss and a real backward."""
    captured: list[torch.Tensor | None] = []

    def keep(_module, _inputs, outputs):
        captured.clear()
        for out in outputs:
            if out is not None:
                out.retain_grad()
            captured.append(out)

    handle = module.transformer.register_forward_hook(keep)
    try:
        loss, _ = module.compute_loss(batch)
        loss.backward()
    finally:
        handle.remove()
    vx, ax = captured
    return vx.grad, (ax.grad if ax is not None else None)


def _trained(grad_BTC: torch.Tensor) -> torch.Tensor:
    """(B, T) True where a token's loss gradient is non-zero."""
    return grad_BTC.abs().sum(-1) > 0


def test_standard_first_frame_and_padded_audio_get_zero_loss_gradient(tiny_ckpt, tmp_path):
    module = _module(tiny_ckpt, tmp_path, "strategy=standard", "strategy.first_frame_conditioning_p=1.0")
    # sample 1: 3 padded audio frames
    batch = collate_samples([hand_sample(0, audio_t=9), hand_sample(1, audio_t=6)])
    gv, ga = _output_grads(module, batch)
    expect_v = torch.ones(2, F * FRAME, dtype=torch.bool)
    expect_v[:, :FRAME] = False  # latent frame 0 is clean conditioning
    assert torch.equal(_trained(gv), expect_v)
    assert (gv[:, :FRAME] == 0).all()
    assert torch.equal(_trained(ga), torch.tensor([[True] * 9, [True] * 6 + [False] * 3]))

    # The zero is the loss mask's doing (not a detached output): train on every token and it is gone.
    strategy = module.strategy_impl

    class EveryTokenTrained:
        name = strategy.name

        def prepare(self, batch, **kw):
            out = strategy.prepare(batch, **kw)
            out.video_targets.loss_mask_BT = torch.ones_like(out.video_targets.loss_mask_BT)
            return out

    module.strategy_impl = EveryTokenTrained()
    gv_all, _ = _output_grads(module, batch)
    assert _trained(gv_all).all()


def test_video_to_video_reference_gets_zero_loss_gradient(tiny_ckpt, tmp_path):
    module = _module(
        tiny_ckpt,
        tmp_path,
        "strategy=video_to_video",
        "strategy.reference_downscale_factor=2",
        "lora.targets=[video_attn]",
    )
    batch = collate_samples([hand_sample(0, ref=2)])
    gv, ga = _output_grads(module, batch)
    t_tgt, t_ref = F * FRAME, F * (H // 2) * (W // 2)
    assert ga is None  # with_audio=false: no audio stream at all
    assert gv.shape[1] == t_tgt + t_ref
    assert _trained(gv[:, :t_tgt]).all()  # first_frame_conditioning_p=0: every target token trains
    assert (gv[:, t_tgt:] == 0).all()  # the appended reference: clean, no loss


def test_audio_ref_only_ic_reference_audio_first_frame_and_padding_get_zero_loss_gradient(
    tiny_ckpt, tmp_path
):
    module = _module(
        tiny_ckpt,
        tmp_path,
        "strategy=audio_ref_only_ic",
        "strategy.first_frame_conditioning_p=1.0",
        "lora=audio_id",
        "lora.rank=4",
    )
    # sample 1: reference 4 of 5 frames, target 7 of 9 frames (both padded)
    batch = collate_samples(
        [hand_sample(0, audio_t=9, ref_audio_t=5), hand_sample(1, audio_t=7, ref_audio_t=4)]
    )
    gv, ga = _output_grads(module, batch)
    assert (gv[:, :FRAME] == 0).all() and _trained(gv[:, FRAME:]).all()  # first frame = reference image
    assert ga.shape[1] == 5 + 9
    assert (ga[:, :5] == 0).all()  # reference audio (and its padding): clean, no loss
    assert torch.equal(_trained(ga[:, 5:]), torch.tensor([[True] * 9, [True] * 7 + [False] * 2]))


@pytest.mark.parametrize(("strategy", "with_audio"), [("video_to_video", "false"), ("standard", "true")])
def test_adapters_without_gradient_are_exactly_the_ones_refused_under_ddp(
    tiny_ckpt, tmp_path, strategy, with_audio
):
    """validate_config names its idle modules from a list; check that list against what ltx-core really
    skips: after one backward, the adapters with no gradient are exactly the listed ones."""
    module = _module(
        tiny_ckpt,
        tmp_path,
        f"strategy={strategy}",
        f"strategy.with_audio={with_audio}",
        *(["strategy.reference_downscale_factor=2"] if strategy == "video_to_video" else []),
        "lora.targets=[attn_ff]",
    )
    with torch.no_grad():  # B != 0 so that every adapter that runs gets a gradient on A as well
        for m in lora_modules(module.transformer).values():
            m.lora_B.fill_(0.1)
    ref = 2 if strategy == "video_to_video" else None
    loss, _ = module.compute_loss(collate_samples([hand_sample(0, ref=ref)]))
    loss.backward()
    no_grad = {
        name.split(".", 2)[2]  # transformer_blocks.{i}.<inner>
        for name, m in lora_modules(module.transformer).items()
        if m.lora_A.grad is None and m.lora_B.grad is None
    }
    assert no_grad == set(idle_lora_modules(module.cfg.strategy, ["attn_ff"]))
    assert bool(no_grad) == (with_audio == "false")
