"""video_to_video (IC-LoRA) and audio_ref_only_ic (ID-LoRA): layout, positions, timesteps, loss masks,
attention masks, gradients, and parity with ltx-core's own IC-LoRA conditioning."""

from __future__ import annotations

import pytest
import torch
from hand_samples import hand_sample
from ltx_core.components.patchifiers import VideoLatentPatchifier
from ltx_core.conditioning.types.reference_video_cond import VideoConditionByReferenceLatent
from ltx_core.tools import VideoLatentTools
from ltx_core.types import VideoLatentShape

from ltxdist._ltx_core import BatchedPerturbationConfig, Modality
from ltxdist.data.collate import collate_samples
from ltxdist.lora import LoRASpec, export_lora, inject_lora, lora_modules
from ltxdist.models import load_transformer
from ltxdist.strategies import AudioRefOnlyICStrategy, ReferenceMismatchError, VideoToVideoStrategy
from ltxdist.strategies.attention_masks import set_attention_masks
from ltxdist.strategies.rng import sample_generators
from ltxdist.training.losses import masked_mse_per_sample

CPU = torch.device("cpu")


def _prep(strategy, batch, dtype=torch.float32, seed=0):
    return strategy.prepare(
        batch, dtype=dtype, device=CPU, generators=sample_generators(seed, batch["ids"], batch["epochs"])
    )


# -- video_to_video -------------------------------------------------------------------------------


def test_ic_layout_positions_timesteps_and_loss_mask():
    batch = collate_samples([hand_sample(0, ref=2), hand_sample(1, ref=2)])
    out = _prep(VideoToVideoStrategy(reference_downscale_factor=2), batch, dtype=torch.bfloat16)
    t_tgt, t_ref = 3 * 2 * 4, 3 * 1 * 2
    v = out.video
    assert v.latent.shape == (2, t_tgt + t_ref, 128)
    # reference tokens are the clean reference latents, appended after the target
    ref_tokens = batch["reference_video_latents"].flatten(2).transpose(1, 2)
    torch.testing.assert_close(v.latent[:, t_tgt:].float(), ref_tokens.to(torch.bfloat16).float())
    # timesteps: sigma on the target, 0 on the reference
    assert v.timesteps.shape == (2, t_tgt + t_ref)
    torch.testing.assert_close(v.timesteps[:, :t_tgt], v.sigma.view(2, 1).expand(2, t_tgt))
    assert (v.timesteps[:, t_tgt:] == 0).all()
    # loss only on the target part
    assert out.video_targets.pred_slice == slice(0, t_tgt)
    assert out.video_targets.loss_mask_BT.shape == (2, t_tgt) and (out.video_targets.loss_mask_BT == 1).all()
    # positions: reference on its own grid from t=0, H/W scaled by 2, float32 (not rounded to bf16)
    pos = v.positions
    assert pos.dtype == torch.float32
    ref_pos = pos[:, :, t_tgt:]
    assert ref_pos[0, 1, :, 0].tolist() == [0, 0, 0, 0, 0, 0]  # every reference row starts at h=0 (1 row)
    assert ref_pos[0, 2, :2].tolist() == [[0.0, 64.0], [64.0, 128.0]]  # w bounds x 32 px x factor 2
    # same time grid as the target from t=0, up to the target's bf16 rounding
    torch.testing.assert_close(ref_pos[0, 0], pos[0, 0, :t_tgt:4], rtol=1e-2, atol=1e-3)
    # target positions rounded to bf16 like VideoLatentTools; the reference kept exact in float32
    assert torch.equal(pos[:, :, :t_tgt], pos[:, :, :t_tgt].to(torch.bfloat16).float())


def test_ic_matches_ltx_core_reference_conditioning_layout():
    batch = collate_samples([hand_sample(0, ref=2)])
    out = _prep(VideoToVideoStrategy(reference_downscale_factor=2), batch, dtype=torch.bfloat16)
    tools = VideoLatentTools(VideoLatentPatchifier(1), VideoLatentShape(1, 128, 3, 2, 4), fps=24.0)
    state = tools.create_initial_state(CPU, torch.bfloat16)
    cond = VideoConditionByReferenceLatent(
        batch["reference_video_latents"].to(torch.bfloat16), downscale_factor=2
    )
    state = cond.apply_to(state, tools)
    assert torch.equal(out.video.positions, state.positions)
    sigma = float(out.video.sigma[0])
    torch.testing.assert_close(out.video.timesteps.float(), (state.denoise_mask * sigma).squeeze(-1))


def test_ic_factor_mismatch_is_an_error_naming_thehand_sample():
    batch = collate_samples([hand_sample(0, ref=2)])
    with pytest.raises(ReferenceMismatchError, match=r"\['s0'\].*reference_downscale_factor=1"):
        _prep(VideoToVideoStrategy(reference_downscale_factor=1), batch)
    odd = hand_sample(1, ref=1)
    odd.tensors["reference_video_latents"] = torch.randn(128, 3, 1, 1)  # 2/1 vs 4/1: not one factor
    with pytest.raises(ReferenceMismatchError, match="one integer factor"):
        _prep(VideoToVideoStrategy(reference_downscale_factor=2), collate_samples([odd]))
    with pytest.raises(ReferenceMismatchError, match="needs reference_video_latents"):
        _prep(VideoToVideoStrategy(), collate_samples([hand_sample(2)]))


def test_ic_variable_reference_lengths_are_padded_and_never_attended():
    batch = collate_samples([hand_sample(0, ref=2, ref_f=3), hand_sample(1, ref=2, ref_f=2)])
    assert batch["reference_video_lengths"].tolist() == [3, 2] and batch["reference_video_padded"]
    out = _prep(VideoToVideoStrategy(reference_downscale_factor=2), batch)
    keep = out.key_keep["attn1"]
    t_tgt = 24
    assert keep[0].all()
    assert keep[1, : t_tgt + 4].all() and not keep[1, t_tgt + 4 :].any()


@pytest.fixture(scope="module")
def tiny_model(tiny_ckpt):
    model = load_transformer(tiny_ckpt, dtype=torch.float32).model
    inject_lora(model, LoRASpec(rank=4, alpha=4, targets=("attn_ff",)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(0.1 * torch.randn(m.lora_B.shape, generator=g))
    return model


def _run(model, out):
    set_attention_masks(model, out.key_keep, out.query_keep)
    b = out.video.latent.shape[0]
    return model(out.video, out.audio, BatchedPerturbationConfig.empty(b))


def test_ic_clean_tokens_get_no_loss_gradient_and_the_reference_matters(tiny_model):
    batch = collate_samples([hand_sample(0, ref=2)])
    strategy = VideoToVideoStrategy(reference_downscale_factor=2)
    out = _prep(strategy, batch)
    vx, _ = _run(tiny_model, out)
    vx = vx.detach().requires_grad_(True)
    loss = masked_mse_per_sample(vx[:, out.video_targets.pred_slice], out.video_targets).mean()
    loss.backward()
    assert (vx.grad[:, 24:] == 0).all() and vx.grad[:, :24].abs().sum() > 0
    # a different reference changes the prediction of the target tokens
    other = dict(batch)
    other["reference_video_latents"] = batch["reference_video_latents"] + 1.0
    vx2, _ = _run(tiny_model, _prep(strategy, other))
    assert (vx2[:, :24] - vx[:, :24]).abs().max() > 1e-3


def test_padding_key_mask_blocks_attention(tiny_model):
    batch = collate_samples([hand_sample(0, ref=2, ref_f=3), hand_sample(1, ref=2, ref_f=2)])
    strategy = VideoToVideoStrategy(reference_downscale_factor=2)
    out = _prep(strategy, batch)
    vx, _ = _run(tiny_model, out)
    # perturb sample 1's padded reference tokens: its target prediction must not move
    lat = out.video.latent.clone()
    lat[1, 28:] += 5.0
    out2 = _prep(strategy, batch)
    out2.video = Modality(**{**out.video.__dict__, "latent": lat})
    vx2, _ = _run(tiny_model, out2)
    torch.testing.assert_close(vx2[1, :24], vx[1, :24], rtol=1e-5, atol=1e-5)
    # without the mask the same perturbation does move it (the check has teeth)
    out2.key_keep = {}
    vx3, _ = _run(tiny_model, out2)
    assert (vx3[1, :24] - vx[1, :24]).abs().max() > 1e-3


def test_exported_ic_lora_through_ltx_core_conditioning_matches_training(tiny_ckpt, tmp_path):
    from ltxdist._ltx_core import (
        LTXV_LORA_COMFY_RENAMING_MAP,
        LTXV_MODEL_COMFY_RENAMING_MAP,
        LTXModelConfigurator,
        SingleGPUModelBuilder,
    )
    from ltxdist.lora import read_lora_file

    model = load_transformer(tiny_ckpt, dtype=torch.bfloat16).model
    inject_lora(model, LoRASpec(rank=4, alpha=4, targets=("attn",)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_A.copy_(0.2 * torch.randn(m.lora_A.shape, generator=g))
            m.lora_B.copy_(0.2 * torch.randn(m.lora_B.shape, generator=g))
    path = export_lora(
        model,
        tmp_path / "ic.safetensors",
        base_model_version="2.3.0",
        training_strategy="video_to_video",
        step=1,
        target_modules=["attn"],
        extra_metadata={"reference_downscale_factor": "2"},
    )
    factor = int(read_lora_file(path).metadata["reference_downscale_factor"])

    batch = collate_samples([hand_sample(0, ref=2)])
    out = _prep(VideoToVideoStrategy(reference_downscale_factor=2), batch, dtype=torch.bfloat16)
    with torch.no_grad():
        ours, _ = _run(model, out)

    # inference: ltx-core's builder fuses the LoRA; its IC conditioning appends the reference
    fused = (
        SingleGPUModelBuilder(
            model_class_configurator=LTXModelConfigurator,
            model_path=str(tiny_ckpt),
            model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
        )
        .lora(str(path), 1.0, LTXV_LORA_COMFY_RENAMING_MAP)
        .build(device=CPU, dtype=torch.bfloat16)
    )
    tools = VideoLatentTools(VideoLatentPatchifier(1), VideoLatentShape(1, 128, 3, 2, 4), fps=24.0)
    xt = out.video.latent[:, :24].transpose(1, 2).reshape(1, 128, 3, 2, 4)
    state = tools.create_initial_state(CPU, torch.bfloat16, initial_latent=xt)
    ref = batch["reference_video_latents"].to(torch.bfloat16)
    state = VideoConditionByReferenceLatent(ref, downscale_factor=factor).apply_to(state, tools)
    sigma = out.video.sigma
    inference = Modality(
        latent=state.latent,
        sigma=sigma,
        timesteps=state.denoise_mask * sigma.view(1, 1, 1),
        positions=state.positions,
        context=out.video.context,
        context_mask=None,
    )
    with torch.no_grad():
        theirs, _ = fused(inference, None, BatchedPerturbationConfig.empty(1))
    rel = ((theirs[:, :24].float() - ours[:, :24].float()).norm() / ours[:, :24].float().norm()).item()
    assert rel < 0.03, rel
    # the wrong factor at inference gives a different prediction: the metadata matters
    state_w = tools.create_initial_state(CPU, torch.bfloat16, initial_latent=xt)
    state_w = VideoConditionByReferenceLatent(ref, downscale_factor=1).apply_to(state_w, tools)
    wrong = Modality(
        latent=state_w.latent,
        sigma=sigma,
        timesteps=state_w.denoise_mask * sigma.view(1, 1, 1),
        positions=state_w.positions,
        context=out.video.context,
        context_mask=None,
    )
    with torch.no_grad():
        theirs_w, _ = fused(wrong, None, BatchedPerturbationConfig.empty(1))
    rel_w = ((theirs_w[:, :24].float() - ours[:, :24].float()).norm() / ours[:, :24].float().norm()).item()
    assert rel_w > 3 * rel and rel_w > 0.02, (rel, rel_w)


# -- audio_ref_only_ic ----------------------------------------------------------------------------


def test_id_layout_positions_timesteps_and_masks():
    batch = collate_samples(
        [hand_sample(0, audio_t=9, ref_audio_t=5), hand_sample(1, audio_t=7, ref_audio_t=4)]
    )
    strategy = AudioRefOnlyICStrategy(
        first_frame_conditioning_p=1.0,
        use_negative_ref_positions=True,
        mask_video_to_ref_audio=True,
        mask_ref_audio_to_text=True,
    )
    out = _prep(strategy, batch)
    a = out.audio
    assert a.latent.shape == (2, 5 + 9, 128)
    ref_tokens = batch["reference_audio_latents"].permute(0, 2, 1, 3).reshape(2, 5, 128)
    torch.testing.assert_close(a.latent[:, :5], ref_tokens)
    # reference clean: timestep 0; target: the sample's sigma, shared with video
    assert (a.timesteps[:, :5] == 0).all()
    torch.testing.assert_close(a.timesteps[:, 5:], a.sigma.view(2, 1).expand(2, 9))
    torch.testing.assert_close(a.sigma, out.video.sigma)
    # video: first frame clean (p=1)
    assert (out.video.timesteps[:, :8] == 0).all() and (out.video.timesteps[:, 8:] > 0).all()
    # negative positions: each sample's real reference tokens span [-span - 0.04 s, -0.04 s), per token
    # exactly the causal audio grid moved back; sample 1 has 4 real frames of 5
    for b, n_ref in ((0, 5), (1, 4)):
        got = a.positions[b, 0, :n_ref]
        torch.testing.assert_close(got, torch.tensor(_negative_reference_bounds(n_ref)), rtol=0, atol=1e-6)
        assert float(got[-1, 1]) == pytest.approx(-0.04, abs=1e-6)
    # the target is untouched: its first token starts at t = 0
    assert a.positions[:, 0, 5, 0].tolist() == [0.0, 0.0]
    # loss: target tokens only, padding (sample 1 has 7 of 9 frames) excluded
    assert out.audio_targets.pred_slice == slice(5, None)
    assert out.audio_targets.loss_mask_BT.tolist() == [[1.0] * 9, [1.0] * 7 + [0.0] * 2]
    # masks: padded keys blocked in audio self-attn; a2v blocks reference + padding; ref queries cut from text
    keep = out.key_keep["audio_attn1"]
    assert keep[0].all() and keep[1].tolist() == [True] * 4 + [False] + [True] * 7 + [False] * 2
    a2v = out.key_keep["audio_to_video_attn"]
    assert not a2v[:, :5].any() and a2v[1, 5:].tolist() == [True] * 7 + [False] * 2
    assert out.query_keep["audio_attn2"][:, :5].sum() == 0 and out.query_keep["audio_attn2"][:, 5:].all()


def _negative_reference_bounds(n_ref: int) -> list[list[float]]:
    """Reference audio token bounds in seconds, computed by hand from the spec: latent frame k covers mel
    frames [max(4k - 3, 0), 4k + 1) of 10 ms (ltx-core's causal audio grid), and the whole reference is
    moved back so that its last frame ends 0.04 s before the target starts."""
    bounds = [[max(4 * k - 3, 0) * 0.01, (4 * k + 1) * 0.01] for k in range(n_ref)]
    shift = bounds[-1][1] + 0.04
    return [[lo - shift, hi - shift] for lo, hi in bounds]


def test_id_overlapping_positions_without_negative_flag():
    batch = collate_samples([hand_sample(0, ref_audio_t=5)])
    out = _prep(AudioRefOnlyICStrategy(use_negative_ref_positions=False), batch)
    torch.testing.assert_close(out.audio.positions[:, :, :5], out.audio.positions[:, :, 5:10])


def test_id_masks_block_what_they_claim(tiny_model):
    batch = collate_samples([hand_sample(0, audio_t=9, ref_audio_t=5)])
    strategy = AudioRefOnlyICStrategy(
        first_frame_conditioning_p=0.0, mask_video_to_ref_audio=True, mask_ref_audio_to_text=True
    )
    out = _prep(strategy, batch)

    def rerun(audio_context):
        o = _prep(strategy, batch)
        o.audio = Modality(**{**o.audio.__dict__, "context": audio_context})
        return o

    # 1) video queries never see reference-audio keys in audio_to_video_attn: perturbing the masked keys
    #    at the attention's own input leaves its output unchanged (block 0, masks as set by the strategy)
    _run(tiny_model, out)
    attn = tiny_model.transformer_blocks[0].audio_to_video_attn
    x = torch.randn(1, 24, 64)
    ctx = torch.randn(1, 14, 32)
    with torch.no_grad():
        base = attn(x, context=ctx)
        ctx_ref = ctx.clone()
        ctx_ref[:, :5] += 3.0  # reference-audio keys
        assert (attn(x, context=ctx_ref) - base).abs().max() < 1e-5
        ctx_tgt = ctx.clone()
        ctx_tgt[:, 5:] += 3.0  # target-audio keys still count
        assert (attn(x, context=ctx_tgt) - base).abs().max() > 1e-3
        set_attention_masks(tiny_model)  # without the mask the reference keys do count
        assert (attn(x, context=ctx_ref) - base).abs().max() > 1e-3
    captured = {}
    block = tiny_model.transformer_blocks[0]

    # 2) reference-audio queries get nothing from the text in audio_attn2 (block 0)
    captured.clear()
    handle = block.audio_attn2.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    _run(tiny_model, out)
    base_txt = captured["out"].clone()
    o3 = rerun(out.audio.context + 2.0)
    _run(tiny_model, o3)
    handle.remove()
    assert (captured["out"][:, :5] - base_txt[:, :5]).abs().max() < 1e-5
    assert (captured["out"][:, 5:] - base_txt[:, 5:]).abs().max() > 1e-3
    set_attention_masks(tiny_model)


def test_id_clean_reference_gets_no_loss_gradient_and_changes_the_target(tiny_model):
    batch = collate_samples([hand_sample(0, ref_audio_t=5)])
    strategy = AudioRefOnlyICStrategy(first_frame_conditioning_p=0.0)
    out = _prep(strategy, batch)
    _, ax = _run(tiny_model, out)
    ax = ax.detach().requires_grad_(True)
    masked_mse_per_sample(ax[:, out.audio_targets.pred_slice], out.audio_targets).mean().backward()
    assert (ax.grad[:, :5] == 0).all() and ax.grad[:, 5:].abs().sum() > 0
    other = dict(batch)
    other["reference_audio_latents"] = batch["reference_audio_latents"] * -1
    _, ax2 = _run(tiny_model, _prep(strategy, other))
    assert (ax2[:, 5:] - ax[:, 5:]).abs().max() > 1e-3


def test_id_requires_reference_audio():
    with pytest.raises(ReferenceMismatchError, match="needs reference_audio_latents"):
        _prep(AudioRefOnlyICStrategy(), collate_samples([hand_sample(0)]))
