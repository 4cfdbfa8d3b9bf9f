"""Sampling conditions the model the way training did: ID-LoRA reference voice layout, positions and
attention masks equal to the training strategy's (and applied during sampling); clean first frame;
IC reference appended and dropped again."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import ltxdist.sampling.pipeline as pipeline
from ltxdist._ltx_core import BatchedPerturbationConfig
from ltxdist.data.collate import collate_samples
from ltxdist.data.sample import CachedSample
from ltxdist.sampling import ConditioningLatents, IdReferenceOptions, SampleRequest, VideoSpec
from ltxdist.sampling.conditioning import initial_states
from ltxdist.sampling.guidance import AudioReference, Guidance, X0Predictor, guided_x0, without_reference
from ltxdist.strategies import AudioRefOnlyICStrategy
from ltxdist.strategies.attention_masks import MaskableAttention, find_maskable, set_attention_masks
from ltxdist.strategies.rng import sample_generators

CPU = torch.device("cpu")
SPEC = VideoSpec(64, 64, 9, 24.0)  # latent grid 2 x 2 x 2; 9 audio latent frames
OPTIONS = IdReferenceOptions(
    negative_positions=True, mask_video_to_ref_audio=True, mask_ref_audio_to_text=True
)


def _training_batch(ref_CTM: torch.Tensor) -> dict:
    g = torch.Generator().manual_seed(0)
    sample = CachedSample(
        tensors={
            "video_latents": torch.randn(128, 2, 2, 2, generator=g),
            "audio_latents": torch.randn(8, 9, 16, generator=g),
            "reference_audio_latents": ref_CTM,
            "video_context": torch.randn(4, 64, generator=g),
            "audio_context": torch.randn(4, 32, generator=g),
            "context_mask": torch.ones(4, dtype=torch.bool),
        },
        meta={"id": "s0", "bucket": "64x64x9", "fps": 24.0, "caption": "c"},
    )
    return collate_samples([sample])


def test_id_reference_voice_matches_training_layout_positions_and_masks():
    ref = torch.randn(8, 5, 16, generator=torch.Generator().manual_seed(1))
    states = initial_states(
        SPEC,
        ConditioningLatents(reference_audio_CTM=ref, id_options=OPTIONS),
        with_audio=True,
        generator=torch.Generator().manual_seed(0),
        device=CPU,
        dtype=torch.float32,
    )
    strategy = AudioRefOnlyICStrategy(
        first_frame_conditioning_p=0.0,
        use_negative_ref_positions=True,
        mask_video_to_ref_audio=True,
        mask_ref_audio_to_text=True,
    )
    batch = _training_batch(ref)
    train = strategy.prepare(
        batch, dtype=torch.float32, device=CPU, generators=sample_generators(0, batch["ids"], batch["epochs"])
    )
    audio = states.audio
    assert states.audio_ref_tokens == 5 and audio.latent.shape == train.audio.latent.shape == (1, 14, 128)
    # [reference | target]: the reference tokens are the clean reference, never noised, never denoised
    torch.testing.assert_close(audio.latent[:, :5], train.audio.latent[:, :5])
    assert (audio.denoise_mask[:, :5] == 0).all() and (audio.denoise_mask[:, 5:] == 1).all()
    # positions: identical to training's, the reference at negative times before the target
    torch.testing.assert_close(audio.positions, train.audio.positions, rtol=0, atol=0)
    assert (audio.positions[0, 0, :5, 1] < 0).all()
    # the same attention masks as training
    assert states.key_keep.keys() == train.key_keep.keys() == {"audio_to_video_attn"}
    assert states.query_keep.keys() == train.query_keep.keys() == {"audio_attn2"}
    for ours, theirs in ((states.key_keep, train.key_keep), (states.query_keep, train.query_keep)):
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), k


def test_sampling_installs_the_id_masks_and_clears_them(sampler, monkeypatch):
    calls: list[tuple[dict, dict]] = []
    seen_in_forward: list[bool] = []
    real = pipeline.set_attention_masks

    def recording(model, key_keep=None, query_keep=None):
        calls.append((dict(key_keep or {}), dict(query_keep or {})))
        real(model, key_keep, query_keep)

    def check_masks(module, args):
        fn = module.transformer_blocks[0].audio_attn2.attention_function
        seen_in_forward.append(isinstance(fn, MaskableAttention) and fn.query_keep_BT is not None)

    monkeypatch.setattr(pipeline, "set_attention_masks", recording)
    hook = sampler.transformer.register_forward_pre_hook(check_masks)
    try:
        request = SampleRequest(
            prompt="a voice", video=SPEC, steps=2, guidance=Guidance(), id_options=OPTIONS
        )
        cond = ConditioningLatents(reference_audio_CTM=torch.randn(8, 5, 16), id_options=OPTIONS)
        video, audio = sampler.denoise(request, cond, progress=False)
    finally:
        hook.remove()
    assert audio.shape == (1, 8, 9, 16) and video.shape == (1, 128, 2, 2, 2)  # reference dropped
    assert [sorted(k) for k, _ in calls] == [["audio_to_video_attn"], []]
    assert [sorted(q) for _, q in calls] == [["audio_attn2"], []]
    assert seen_in_forward == [True, True]  # 2 steps, no guidance: one forward each, masks in place
    fn = sampler.transformer.transformer_blocks[0].audio_attn2.attention_function
    assert fn.query_keep_BT is None and fn.key_keep_BS is None  # cleared for whoever runs next


def test_first_frame_stays_clean_and_ic_reference_is_used_then_dropped(sampler):
    g = torch.Generator().manual_seed(5)
    request = SampleRequest(prompt="a red ball", video=SPEC, steps=2, guidance=Guidance(), with_audio=False)
    image = torch.randn(128, 1, 2, 2, generator=g)
    video, audio = sampler.denoise(request, ConditioningLatents(first_frame_CFHW=image), progress=False)
    assert audio is None
    torch.testing.assert_close(video[0, :, :1], image)  # the conditioning frame is exactly the image
    plain, _ = sampler.denoise(request, ConditioningLatents(), progress=False)
    ref = torch.randn(128, 2, 1, 1, generator=g)  # half-resolution reference
    ic, _ = sampler.denoise(
        request, ConditioningLatents(reference_video_CFHW=ref, reference_downscale_factor=2), progress=False
    )
    assert ic.shape == plain.shape == (1, 128, 2, 2, 2)
    assert (ic - plain).abs().max() > 1e-3  # the target attended to the reference
    with pytest.raises(ValueError, match="--reference-downscale 1"):
        sampler.denoise(request, ConditioningLatents(reference_video_CFHW=ref, reference_downscale_factor=1))
    with pytest.raises(ValueError, match="--frames must be 8n\\+1"):
        sampler.denoise(replace(request, video=VideoSpec(64, 64, 10)), ConditioningLatents())


# -- identity guidance (ID-LoRA's inference) --------------------------------------------------------


class _Recording(X0Predictor):
    """Records every model pass: its inputs, whether the ID masks were set, and its x0 outputs."""

    def __init__(self, model):
        super().__init__(model)
        self.calls: list[dict] = []

    def __call__(self, video, audio, perturbations, t_video, t_audio):
        fn = find_maskable(self.model.transformer_blocks[0].audio_to_video_attn.attention_function)
        out = super().__call__(video, audio, perturbations, t_video, t_audio)
        self.calls.append(
            {
                "video": video,
                "audio": audio,
                "perturbed": any(c.perturbations for c in perturbations.perturbations),
                "masked": fn is not None and fn.key_keep_BS is not None,
                "out": out,
            }
        )
        return out


def _id_run(sampler, identity: float) -> tuple[_Recording, tuple[torch.Tensor, torch.Tensor]]:
    request = SampleRequest(
        prompt="a voice",
        video=SPEC,
        seed=5,
        steps=2,
        guidance=Guidance(identity_scale=identity),  # CFG, STG, modality off: cond (+ identity) only
        id_options=OPTIONS,
    )
    ref = torch.randn(8, 5, 16, generator=torch.Generator().manual_seed(2))
    cond = ConditioningLatents(reference_audio_CTM=ref, id_options=OPTIONS)
    recording, saved = _Recording(sampler.transformer), sampler.predict
    sampler.predict = recording
    try:
        return recording, sampler.denoise(request, cond, progress=False)
    finally:
        sampler.predict = saved


def test_identity_pass_uses_the_same_noise_and_differs_only_by_the_missing_reference(sampler):
    with_id, (_, audio_id) = _id_run(sampler, identity=3.0)
    without, (_, audio_plain) = _id_run(sampler, identity=0.0)
    assert len(without.calls) == 2 and len(with_id.calls) == 4  # one extra pass per step
    # The extra pass draws no noise: the conditional passes start from the very same latents.
    first_plain, first_id = without.calls[0], with_id.calls[0]
    assert torch.equal(first_plain["video"].latent, first_id["video"].latent)
    assert torch.equal(first_plain["audio"].latent, first_id["audio"].latent)
    for cond, noref in (with_id.calls[0:2], with_id.calls[2:4]):
        # same video input, same target audio tokens (latents, positions, timesteps), same prompt...
        for field in ("latent", "positions", "timesteps", "context", "sigma"):
            assert torch.equal(getattr(noref["video"], field), getattr(cond["video"], field)), field
        assert torch.equal(noref["audio"].latent, cond["audio"].latent[:, 5:])
        assert torch.equal(noref["audio"].positions, cond["audio"].positions[:, :, 5:])
        assert torch.equal(noref["audio"].timesteps, cond["audio"].timesteps[:, 5:])
        assert torch.equal(noref["audio"].context, cond["audio"].context)
        assert cond["audio"].latent.shape[1] == noref["audio"].latent.shape[1] + 5  # ...minus the reference
        # no perturbation in either; the reference's masks apply to the full sequence only
        assert not cond["perturbed"] and not noref["perturbed"]
        assert cond["masked"] and not noref["masked"]
    assert (audio_id - audio_plain).abs().max() > 1e-4  # identity guidance changes the audio


@torch.no_grad()
def test_identity_guidance_adds_scale_times_cond_minus_no_reference_on_target_audio(sampler):
    recording, _ = _id_run(sampler, identity=0.0)
    step0 = recording.calls[0]
    video, audio = step0["video"], step0["audio"]
    states = initial_states(
        SPEC,
        ConditioningLatents(reference_audio_CTM=torch.zeros(8, 5, 16), id_options=OPTIONS),
        with_audio=True,
        generator=torch.Generator().manual_seed(0),
        device=CPU,
        dtype=torch.float32,
    )
    model = sampler.transformer
    set_attention_masks(model, states.key_keep, states.query_keep)
    try:
        cond_v, cond_a = step0["out"]
        reference = AudioReference(5, states.key_keep, states.query_keep)
        predict = X0Predictor(model)
        got_v, got_a = guided_x0(
            predict,
            video,
            audio,
            t_video_BT1=video.timesteps,
            t_audio_BT1=audio.timesteps,
            guidance=Guidance(identity_scale=2.5),
            negative=None,
            reference=reference,
        )
        assert predict.forward_passes == 2
    finally:
        set_attention_masks(model)
    # By hand: the same model on the target audio alone, no masks (there is no reference to mask).
    target = without_reference(audio, 5)
    _, ax = model(video, target, BatchedPerturbationConfig.empty(1))
    noref_a = target.latent - ax * target.timesteps
    torch.testing.assert_close(got_v, cond_v)  # video untouched by identity guidance
    torch.testing.assert_close(got_a[:, :5], cond_a[:, :5])  # reference tokens untouched
    want = cond_a[:, 5:] + 2.5 * (cond_a[:, 5:] - noref_a)
    torch.testing.assert_close(got_a[:, 5:], want, rtol=1e-5, atol=1e-5)
    # a CFG-style (scale - 1) combination is not ID-LoRA's and must not pass
    wrong = cond_a[:, 5:] + 1.5 * (cond_a[:, 5:] - noref_a)
    assert not torch.allclose(got_a[:, 5:], wrong, rtol=1e-5, atol=1e-5)
