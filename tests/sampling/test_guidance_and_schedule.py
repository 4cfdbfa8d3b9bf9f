"""Sigma schedule against a hand computation; CFG / STG / modality guidance against hand-combined model
passes; STG's perturbation against a hand-made "skip self-attention"."""

from __future__ import annotations

import math

import pytest
import torch
from ltx_core.guidance.perturbations import Perturbation, PerturbationConfig, PerturbationType

from ltxdist._ltx_core import BatchedPerturbationConfig, Modality
from ltxdist.sampling.guidance import Guidance, GuidanceParams, TextContext, X0Predictor, guided_x0
from ltxdist.sampling.schedule import sigma_schedule
from ltxdist.strategies.positions import audio_positions, video_positions

# -- schedule -------------------------------------------------------------------------------------


def _hand_schedule(steps: int, tokens: int) -> list[float]:
    # LTX-2 shift: mu linear in tokens (0.95 at 1024, 2.05 at 4096), sigma' = e^mu / (e^mu + 1/s - 1),
    # then stretched so the last non-zero sigma is 0.1.
    mu = 0.95 + (2.05 - 0.95) * (tokens - 1024) / (4096 - 1024)
    raw = [1 - i / steps for i in range(steps + 1)]
    shifted = [math.exp(mu) / (math.exp(mu) + 1 / s - 1) if s > 0 else 0.0 for s in raw]
    scale = (1 - shifted[-2]) / (1 - 0.1)
    return [1 - (1 - s) / scale if s > 0 else 0.0 for s in shifted]


@pytest.mark.parametrize(("steps", "tokens"), [(4, None), (7, 1024), (30, 5376)])
def test_sigma_schedule_matches_hand_computation(steps, tokens):
    got = sigma_schedule(steps, num_tokens=tokens)
    want = _hand_schedule(steps, tokens or 4096)
    assert got.dtype == torch.float32 and got.shape == (steps + 1,)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=0, atol=2e-6)
    assert abs(float(got[0]) - 1.0) < 1e-6 and got[-1] == 0.0 and abs(float(got[-2]) - 0.1) < 1e-6
    assert (got[1:] < got[:-1]).all()
    unshifted = torch.linspace(1, 0, steps + 1)
    assert not torch.allclose(got, unshifted, atol=1e-3), "a plain linear schedule must not pass"


def test_sigma_schedule_rejects_one_step():
    with pytest.raises(ValueError, match="--steps"):
        sigma_schedule(1)


# -- guidance -------------------------------------------------------------------------------------


def _inputs(sigma: float = 0.6) -> tuple[Modality, Modality, TextContext]:
    g = torch.Generator().manual_seed(3)
    lat = torch.randn(1, 128, 2, 2, 2, generator=g)
    alat = torch.randn(1, 8, 9, 16, generator=g)
    video = Modality(
        latent=lat.flatten(2).transpose(1, 2).contiguous(),
        sigma=torch.tensor([sigma]),
        timesteps=torch.full((1, 8, 1), sigma),
        positions=video_positions(lat, torch.tensor([24.0]), torch.float32),
        context=torch.randn(1, 16, 64, generator=g),
    )
    audio = Modality(
        latent=alat.permute(0, 2, 1, 3).flatten(2).contiguous(),
        sigma=torch.tensor([sigma]),
        timesteps=torch.full((1, 9, 1), sigma),
        positions=audio_positions(alat),
        context=torch.randn(1, 16, 32, generator=g),
    )
    negative = TextContext(torch.randn(1, 16, 64, generator=g), torch.randn(1, 16, 32, generator=g))
    return video, audio, negative


def _x0(model, video, audio, perturbations):
    """x0 = x - v * t by hand, from one plain model call."""
    vx, ax = model(video, audio, perturbations)
    return video.latent - vx * video.timesteps, audio.latent - ax * audio.timesteps


def _negative(m: Modality, ctx: torch.Tensor) -> Modality:
    return Modality(latent=m.latent, sigma=m.sigma, timesteps=m.timesteps, positions=m.positions, context=ctx)


def _perturb(*items: Perturbation) -> BatchedPerturbationConfig:
    return BatchedPerturbationConfig([PerturbationConfig(list(items))])


@pytest.fixture(scope="module")
def model(sampler):
    return sampler.transformer


@torch.no_grad()
def test_cfg_stg_and_modality_guidance_match_hand_combination(model):
    video, audio, negative = _inputs()
    guidance = Guidance(
        video=GuidanceParams(cfg_scale=3.0, stg_scale=2.0, stg_blocks=(1,), modality_scale=1.5),
        audio=GuidanceParams(cfg_scale=5.0, stg_scale=0.5, stg_blocks=(0,), modality_scale=2.0),
    )
    predict = X0Predictor(model)
    got_v, got_a = guided_x0(
        predict,
        video,
        audio,
        t_video_BT1=video.timesteps,
        t_audio_BT1=audio.timesteps,
        guidance=guidance,
        negative=negative,
    )
    assert predict.forward_passes == 4  # cond, negative prompt, STG, isolated modalities

    cond_v, cond_a = _x0(model, video, audio, BatchedPerturbationConfig.empty(1))
    unc_v, unc_a = _x0(
        model,
        _negative(video, negative.video_BSC),
        _negative(audio, negative.audio_BSC),
        BatchedPerturbationConfig.empty(1),
    )
    stg = _perturb(
        Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, [1]),
        Perturbation(PerturbationType.SKIP_AUDIO_SELF_ATTN, [0]),
    )
    ptb_v, ptb_a = _x0(model, video, audio, stg)
    iso = _perturb(
        Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
        Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None),
    )
    iso_v, iso_a = _x0(model, video, audio, iso)
    want_v = cond_v + 2.0 * (cond_v - unc_v) + 2.0 * (cond_v - ptb_v) + 0.5 * (cond_v - iso_v)
    want_a = cond_a + 4.0 * (cond_a - unc_a) + 0.5 * (cond_a - ptb_a) + 1.0 * (cond_a - iso_a)
    torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_a, want_a, rtol=1e-5, atol=1e-5)

    # Each pass must matter, and a wrong combination must fail the same comparison.
    for a, b in ((cond_v, unc_v), (cond_v, ptb_v), (cond_v, iso_v), (cond_a, ptb_a)):
        assert (a - b).abs().max() > 1e-3
    wrong_sign = cond_v + 2.0 * (cond_v - unc_v) - 2.0 * (cond_v - ptb_v) + 0.5 * (cond_v - iso_v)
    ptb0_v, _ = _x0(model, video, audio, _perturb(Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, [0])))
    wrong_block = cond_v + 2.0 * (cond_v - unc_v) + 2.0 * (cond_v - ptb0_v) + 0.5 * (cond_v - iso_v)
    for wrong in (wrong_sign, wrong_block):
        assert not torch.allclose(got_v, wrong, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_rescale_and_no_guidance(model):
    video, audio, negative = _inputs(0.3)
    cond_v, cond_a = _x0(model, video, audio, BatchedPerturbationConfig.empty(1))
    predict = X0Predictor(model)
    off = Guidance()
    got_v, got_a = guided_x0(
        predict,
        video,
        audio,
        t_video_BT1=video.timesteps,
        t_audio_BT1=audio.timesteps,
        guidance=off,
        negative=None,
    )
    assert predict.forward_passes == 1
    torch.testing.assert_close(got_v, cond_v)
    torch.testing.assert_close(got_a, cond_a)

    rescaled = Guidance(video=GuidanceParams(cfg_scale=4.0, rescale_scale=0.7))
    got_v, got_a = guided_x0(
        X0Predictor(model),
        video,
        audio,
        t_video_BT1=video.timesteps,
        t_audio_BT1=audio.timesteps,
        guidance=rescaled,
        negative=negative,
    )
    unc_v, _ = _x0(
        model,
        _negative(video, negative.video_BSC),
        _negative(audio, negative.audio_BSC),
        BatchedPerturbationConfig.empty(1),
    )
    pred = cond_v + 3.0 * (cond_v - unc_v)
    want = pred * (0.7 * cond_v.std() / pred.std() + 0.3)
    torch.testing.assert_close(got_v, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_a, cond_a)  # audio guidance off: untouched


@torch.no_grad()
def test_stg_skips_self_attention_of_chosen_blocks_only(model):
    """SKIP_VIDEO_SELF_ATTN on block 1 == block 1's attn1 returning its value projection (by hand)."""
    video, audio, _ = _inputs()
    ptb_v, ptb_a = _x0(
        model, video, audio, _perturb(Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, [1]))
    )
    attn = model.transformer_blocks[1].attn1
    original = attn.attention_function
    attn.attention_function = lambda q, k, v, heads, mask=None: v  # attention output := values
    try:
        hand_v, hand_a = _x0(model, video, audio, BatchedPerturbationConfig.empty(1))
    finally:
        attn.attention_function = original
    torch.testing.assert_close(ptb_v, hand_v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ptb_a, hand_a, rtol=1e-5, atol=1e-5)


def test_stg_blocks_are_checked_against_the_model():
    with pytest.raises(
        ValueError, match=r"--stg-blocks: STG blocks \[29\] do not exist; the model has blocks 0..1"
    ):
        GuidanceParams(stg_scale=1.0, stg_blocks=(29,)).check(2, "--stg-blocks")
    with pytest.raises(ValueError, match="needs at least one block"):
        GuidanceParams(stg_scale=1.0).check(2, "--stg-blocks")
    GuidanceParams(stg_scale=0.0, stg_blocks=(29,)).check(2, "--stg-blocks")  # STG off: blocks unused
