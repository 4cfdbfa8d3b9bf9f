import math

import pytest
import torch
from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier
from ltx_core.tools import AudioLatentTools, VideoLatentTools
from ltx_core.types import AudioLatentShape, VideoLatentShape

from ltxdist.data.collate import collate_samples
from ltxdist.data.sample import CachedSample
from ltxdist.strategies import SigmaSampler, StandardStrategy
from ltxdist.strategies.rng import sample_generators


def _sample(i, frames=3, audio_t=9, fps=24.0):
    return CachedSample(
        tensors={
            "video_latents": torch.randn(128, frames, 2, 3),
            "audio_latents": torch.randn(8, audio_t, 16),
            "video_context": torch.randn(5, 64),
            "audio_context": torch.randn(5, 32),
            "context_mask": torch.ones(5, dtype=torch.bool),
        },
        meta={"id": f"s{i}", "bucket": "96x64x17", "fps": fps, "caption": "c"},
    )


def _prepare(batch, p=0.0, seed=0, dtype=torch.float32, **kw):
    gens = sample_generators(seed, batch["ids"], batch["epochs"])
    return StandardStrategy(first_frame_conditioning_p=p, **kw).prepare(
        batch, dtype=dtype, device=torch.device("cpu"), generators=gens
    )


def test_positions_match_ltx_core_inference_tools():
    batch = collate_samples([_sample(0, fps=25.0), _sample(1, fps=25.0)])
    out = _prepare(batch, dtype=torch.bfloat16)
    tools = VideoLatentTools(VideoLatentPatchifier(1), VideoLatentShape(2, 128, 3, 2, 3), fps=25.0)
    ref = tools.create_initial_state(torch.device("cpu"), torch.bfloat16).positions
    assert out.video.positions.dtype == torch.bfloat16
    assert torch.equal(out.video.positions, ref)
    a_tools = AudioLatentTools(AudioPatchifier(1), AudioLatentShape(2, 8, 9, 16))
    assert torch.equal(
        out.audio.positions, a_tools.create_initial_state(torch.device("cpu"), torch.float32).positions
    )
    # the causal fix: latent frame 0 covers pixel frame [0, 1), frame 1 covers [1, 9) -> seconds at 25 fps
    t_bounds = out.video.positions[0, 0].float()
    assert t_bounds[0].tolist() == [0.0, pytest.approx(1 / 25, rel=1e-2)]
    assert t_bounds[6].tolist() == [pytest.approx(1 / 25, rel=1e-2), pytest.approx(9 / 25, rel=1e-2)]


def test_velocity_target_and_noised_input():
    batch = collate_samples([_sample(0), _sample(1)])
    out = _prepare(batch)
    x0 = batch["video_latents"].flatten(2).transpose(1, 2)  # b c (f h w) -> b (f h w) c
    noise = out.video_targets.target_BTC + x0
    s = out.video.sigma.view(-1, 1, 1)
    torch.testing.assert_close(out.video.latent, (1 - s) * x0 + s * noise)
    assert out.video.timesteps.shape == (2, 1)  # no conditioning -> compact (B, 1) timesteps
    torch.testing.assert_close(out.audio.sigma, out.video.sigma)  # shared by default


def test_first_frame_conditioning_is_clean_timestep_zero_and_out_of_the_loss():
    batch = collate_samples([_sample(0), _sample(1)])
    out = _prepare(batch, p=1.0)
    x0 = batch["video_latents"].flatten(2).transpose(1, 2)
    first = 2 * 3  # tokens of latent frame 0 (h*w)
    assert out.video.timesteps.shape == (2, 18)
    assert (out.video.timesteps[:, :first] == 0).all()
    torch.testing.assert_close(out.video.timesteps[:, first:], out.video.sigma.view(2, 1).expand(2, 12))
    torch.testing.assert_close(out.video.latent[:, :first], x0[:, :first])
    assert (out.video_targets.loss_mask_BT[:, :first] == 0).all()
    assert (out.video_targets.loss_mask_BT[:, first:] == 1).all()


def test_a_single_latent_frame_is_never_conditioned_away():
    """With one latent frame every token is "frame 0": conditioning it would leave nothing to train while
    the sample still counts in the batch mean. Multi-frame samples in the same run stay conditioned."""
    batch = collate_samples([_sample(0, frames=1), _sample(1, frames=1)])
    one = _prepare(batch, p=1.0)
    assert (one.video_targets.loss_mask_BT == 1).all()
    x0 = batch["video_latents"].flatten(2).transpose(1, 2)
    assert not torch.isclose(one.video.latent, x0).all(dim=-1).any()  # no token kept clean
    # The coin is still drawn: sigma and noise are the ones the same samples get with p=0.
    unconditioned = _prepare(batch, p=0.0)
    torch.testing.assert_close(one.video.latent, unconditioned.video.latent)
    three = _prepare(collate_samples([_sample(0), _sample(1)]), p=1.0)
    assert (three.video_targets.loss_mask_BT[:, :6] == 0).all()  # frame 0 of a 3-frame clip: conditioned


def test_conditioning_is_decided_per_sample():
    batch = collate_samples([_sample(i) for i in range(16)])
    out = _prepare(batch, p=0.5, seed=1)
    conditioned = out.video.timesteps[:, 0] == 0
    assert 0 < int(conditioned.sum()) < 16


def test_padded_audio_frames_are_masked_out_of_the_loss():
    batch = collate_samples([_sample(0, audio_t=9), _sample(1, audio_t=6)])
    assert batch["audio_latents"].shape == (2, 8, 9, 16)
    out = _prepare(batch)
    assert out.audio_targets.loss_mask_BT.tolist() == [[1.0] * 9, [1.0] * 6 + [0.0] * 3]


def test_independent_audio_sigma():
    batch = collate_samples([_sample(i) for i in range(4)])
    out = _prepare(batch, audio_sigma="independent")
    assert not torch.equal(out.audio.sigma, out.video.sigma)


def test_independent_audio_sigma_follows_each_samples_own_audio_length():
    """The shift comes from the sample's real audio length: batched with a longer clip (padding), a
    sample draws the sigma it draws alone."""
    short, long = _sample(0, audio_t=9), _sample(1, audio_t=126)
    together = _prepare(collate_samples([short, long]), audio_sigma="independent")
    alone = [_prepare(collate_samples([s]), audio_sigma="independent") for s in (short, long)]
    torch.testing.assert_close(together.audio.sigma, torch.cat([a.audio.sigma for a in alone]))
    sampler = SigmaSampler()
    g = sample_generators(0, ["s0"], [0])[0]
    at_padded_length = sampler.sample_one(126, g)
    assert abs(at_padded_length - float(alone[0].audio.sigma[0])) > 1e-4  # the length matters here


def test_draws_depend_on_the_sample_not_the_batch_layout():
    s = [_sample(i) for i in range(4)]
    together = _prepare(collate_samples(s))
    apart = [_prepare(collate_samples(s[i : i + 1])) for i in range(4)]
    torch.testing.assert_close(together.video.sigma, torch.cat([a.video.sigma for a in apart]))
    torch.testing.assert_close(together.video.latent, torch.cat([a.video.latent for a in apart]))


def _reference_sigma_cdf(x, mu, std=1.0, floor=1e-3):
    """P(sigma <= x) for the stretched logit-normal reflected at `floor` (no uniform share), computed
    independently from the normal CDF."""
    lo = 1 / (1 + math.exp(-(mu - 2.5758293035489004 * std)))
    hi = 1 / (1 + math.exp(-(mu + 3.090232306167813 * std)))

    def cdf_unstretched(y):  # P(sigmoid(z) <= y)
        if y <= 0:
            return 0.0
        if y >= 1:
            return 1.0
        return 0.5 * (1 + math.erf((math.log(y / (1 - y)) - mu) / (std * math.sqrt(2))))

    # stretched s = (u - lo) / (hi - lo), reflected at the floor (2 floor - s below it), capped at 1:
    # sigma <= x  <=>  2 floor - x <= s <= x
    if x >= 1:
        return 1.0
    u_hi = lo + x * (hi - lo)
    u_lo = lo + (2 * floor - x) * (hi - lo)
    return cdf_unstretched(u_hi) - cdf_unstretched(u_lo)


@pytest.mark.parametrize("tokens", [1024, 4096, 8192])
def test_sigma_sampler_matches_the_shifted_logit_normal(tokens):
    sampler = SigmaSampler(uniform_p=0.0)
    mu = 0.95 + (2.05 - 0.95) * (tokens - 1024) / 3072
    assert sampler.mu(tokens) == pytest.approx(mu)
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    sig = sampler.sample(tokens, gens)
    assert float(sig.min()) >= 0 and float(sig.max()) <= 1
    for x in (0.2, 0.5, 0.8, 0.95):
        empirical = float((sig <= x).float().mean())
        assert empirical == pytest.approx(_reference_sigma_cdf(x, mu), abs=0.03), x
    # the check has teeth: the unshifted mu would not match
    assert abs(float((sig <= 0.5).float().mean()) - _reference_sigma_cdf(0.5, 0.0)) > 0.05


def test_sigma_never_falls_below_the_floor():
    """ltx-trainer and ID-LoRA reflect the stretched tail at 1e-3; reflecting at 0 put about 1 draw in
    10^4 below it. 100,000 draws at the smallest shift (most mass near 0) hold several near the floor."""
    g = torch.Generator().manual_seed(0)
    sig = SigmaSampler(uniform_p=0.0).sample(1, [g] * 100_000)
    assert float(sig.min()) >= 1e-3
    assert int((sig < 2e-3).sum()) > 0  # the tail is there and was reflected, not cut off
    assert float(sig.max()) <= 1.0


def test_sigma_uniform_share():
    gens = [torch.Generator().manual_seed(i) for i in range(3000)]
    sig = SigmaSampler(uniform_p=1.0).sample(4096, gens)
    assert float((sig < 0.25).float().mean()) == pytest.approx(0.25, abs=0.03)


def test_padded_audio_keys_are_masked_in_audio_self_and_cross_modal_attention(tiny_ckpt):
    from ltxdist._ltx_core import BatchedPerturbationConfig, Modality
    from ltxdist.models import load_transformer
    from ltxdist.strategies.attention_masks import set_attention_masks

    model = load_transformer(tiny_ckpt, dtype=torch.float32).model
    batch = collate_samples([_sample(0, audio_t=9), _sample(1, audio_t=6)])  # sample 1: 3 padded frames
    out = _prepare(batch)
    assert set(out.key_keep) == {"audio_attn1", "audio_to_video_attn"}

    def run(audio_latent, key_keep):
        set_attention_masks(model, key_keep)
        audio = Modality(**{**out.audio.__dict__, "latent": audio_latent})
        with torch.no_grad():
            return model(out.video, audio, BatchedPerturbationConfig.empty(2))

    try:
        vx, ax = run(out.audio.latent, out.key_keep)
        perturbed = out.audio.latent.clone()
        perturbed[1, 6:] += 5.0  # only sample 1's padding frames
        vx2, ax2 = run(perturbed, out.key_keep)
        torch.testing.assert_close(ax2[1, :6], ax[1, :6], rtol=1e-5, atol=1e-5)  # real audio unmoved
        torch.testing.assert_close(vx2[1], vx[1], rtol=1e-5, atol=1e-5)  # video unmoved
        # each mask has teeth: without it the padding reaches the real tokens
        _, ax3 = run(perturbed, {"audio_to_video_attn": out.key_keep["audio_to_video_attn"]})
        assert (ax3[1, :6] - ax[1, :6]).abs().max() > 1e-3
        vx4, _ = run(perturbed, {"audio_attn1": out.key_keep["audio_attn1"]})
        assert (vx4[1] - vx[1]).abs().max() > 1e-3
    finally:
        set_attention_masks(model)
