"""The FLOP count behind MFU / HFU: a hand count on the tiny model, and the FLOPs torch itself counts
while running a real forward + backward (with and without activation recompute)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ltxdist._ltx_core import BatchedPerturbationConfig, LTXModelConfigurator, Modality
from ltxdist.lora import LoRASpec, inject_lora
from ltxdist.models.init import init_transformer_weights
from ltxdist.models.presets import transformer_config
from ltxdist.parallel.activation_checkpointing import CheckpointingPolicy, apply_activation_checkpointing
from ltxdist.strategies.positions import audio_positions, video_positions
from ltxdist.tracking.flops import (
    FlopModel,
    StepFlops,
    peak_flops_per_device,
    recompute_shares,
    tokens_of_forward,
)
from ltxdist.tracking.metrics import utilization

TV, TA, S = 12, 9, 16  # video tokens (2 x 2 x 3 latent grid), audio tokens, text tokens
RANK = 4


def _model(targets=("attn",)) -> torch.nn.Module:
    model = LTXModelConfigurator.from_config(transformer_config("tiny"))
    init_transformer_weights(model, torch.Generator().manual_seed(0))
    inject_lora(model, LoRASpec(rank=RANK, alpha=RANK, targets=targets))
    return model


def _inputs(requires_grad: bool) -> tuple[Modality, Modality]:
    g = torch.Generator().manual_seed(1)
    lat, alat = torch.randn(1, 128, 2, 2, 3, generator=g), torch.randn(1, 8, TA, 16, generator=g)
    v_tok = lat.flatten(2).transpose(1, 2).contiguous().requires_grad_(requires_grad)
    a_tok = alat.permute(0, 2, 1, 3).flatten(2).contiguous().requires_grad_(requires_grad)
    sigma = torch.tensor([0.5])
    video = Modality(
        latent=v_tok,
        sigma=sigma,
        timesteps=torch.full((1, 1), 0.5),
        positions=video_positions(lat, torch.tensor([24.0]), torch.float32),
        context=torch.randn(1, S, 64, generator=g).requires_grad_(requires_grad),
    )
    audio = Modality(
        latent=a_tok,
        sigma=sigma,
        timesteps=torch.full((1, 1), 0.5),
        positions=audio_positions(alat),
        context=torch.randn(1, S, 32, generator=g).requires_grad_(requires_grad),
    )
    return video, audio


def _hand_count() -> tuple[float, float, float]:
    """Tiny preset by hand: video width 64 (4 heads x 16), audio width 32 (4 x 8), FFN 4x, gate
    logits -> 4 heads, cross-modal attention inner width 32 (the audio width), 2 blocks, LoRA rank 4 on
    q/k/v/out of all six attentions. Returns (forward F, model FLOPs, blocks' forward)."""
    dv, da, h, r = 64, 32, 4, RANK
    lin = lambda n, i, o: 2 * n * i * o  # noqa: E731
    lora = lambda n, i, o: 2 * n * r * (i + o)  # noqa: E731
    # (tokens, in, out, has LoRA) of every Linear of one block
    block = [
        *[(TV, dv, dv, True)] * 3, (TV, dv, h, False), (TV, dv, dv, True),  # attn1 q k v gate out
        # attn2: queries on video, keys/values on the text
        (TV, dv, dv, True), (S, dv, dv, True), (S, dv, dv, True), (TV, dv, h, False), (TV, dv, dv, True),
        (TV, dv, 4 * dv, False), (TV, 4 * dv, dv, False),  # ff
        *[(TA, da, da, True)] * 3, (TA, da, h, False), (TA, da, da, True),  # audio_attn1
        (TA, da, da, True), (S, da, da, True), (S, da, da, True), (TA, da, h, False), (TA, da, da, True),
        (TA, da, 4 * da, False), (TA, 4 * da, da, False),  # audio_ff
        # audio_to_video_attn: queries on video, keys/values on audio, inner width 32
        (TV, dv, da, True), (TA, da, da, True), (TA, da, da, True), (TV, dv, h, False), (TV, da, dv, True),
        # video_to_audio_attn: queries on audio, keys/values on video
        (TA, da, da, True), (TV, dv, da, True), (TV, dv, da, True), (TA, da, h, False), (TA, da, da, True),
    ]  # fmt: skip
    cores = 4 * (TV * TV * dv + TV * S * dv + TA * TA * da + TA * S * da + TV * TA * da + TA * TV * da)
    base_f = sum(lin(n, i, o) for n, i, o, _ in block)
    lora_f = sum(lora(n, i, o) for n, i, o, has in block if has)
    blocks_forward = 2 * (base_f + lora_f + cores)
    # outside the blocks: patchify (no backward: its input is data) and proj_out, both streams
    patchify = lin(TV, 128, dv) + lin(TA, 128, da)
    proj_out = lin(TV, dv, 128) + lin(TA, da, 128)
    forward = blocks_forward + patchify + proj_out
    # backward: frozen base 1x (input gradient only), LoRA 2x, attention core 2x
    model = forward + 2 * (base_f + 2 * lora_f + 2 * cores) + proj_out
    return forward, model, blocks_forward


def test_flop_model_matches_hand_count():
    video, audio = _inputs(requires_grad=False)
    batch, tokens = tokens_of_forward(video, audio)
    assert (batch, tokens) == (1, {"v": TV, "vt": S, "a": TA, "at": S})
    fm = FlopModel.from_model(_model())
    forward, model, blocks_forward = _hand_count()
    got = fm.step(batch=1, tokens=tokens)
    assert got.forward == forward and got.model == model and got.hardware == model
    recompute = fm.step(batch=1, tokens=tokens, activation_checkpointing=True)
    assert recompute.model == model and recompute.hardware == model + blocks_forward
    assert fm.step(batch=3, tokens=tokens).model == 3 * model
    # full fine-tuning's "3 x forward" would be a different (wrong) count here
    assert got.model != 3 * got.forward
    # video only: no audio stream, no cross-modal attention
    video_only = fm.step(batch=1, tokens={"v": TV, "vt": S})
    assert 0 < video_only.model < got.model


def _checkpointed_model(mode: str) -> torch.nn.Module:
    """The tiny model in training mode with parallel.activation_checkpointing=`mode` applied (every_k:
    every 2nd block, i.e. block 0 of the tiny model's 2)."""
    model = _model()
    model.train()
    apply_activation_checkpointing(model, CheckpointingPolicy(mode, every=2))
    return model


def _planned_and_full_steps(model: torch.nn.Module, tokens: dict[str, int]) -> tuple[StepFlops, StepFlops]:
    """(the step as the applied plan recomputes it, the step with every block recomputed)."""
    fm = FlopModel.from_model(model)
    step = fm.step(batch=1, tokens=tokens, recompute=recompute_shares(model))
    return step, fm.step(batch=1, tokens=tokens, activation_checkpointing=True)


@pytest.mark.parametrize(
    "mode, shares",
    [("off", {}), ("full", {"full": 1.0}), ("attention", {"attention": 1.0}), ("every_k", {"full": 0.5})],
)
def test_recompute_shares_follow_the_applied_checkpointing_plan(mode, shares):
    """parallel.activation_checkpointing modes other than full / off recompute only some blocks, or all
    of a block but its attention cores: HFU counts the plan as applied to the model (recompute_shares),
    not model.gradient_checkpointing's all-or-none."""
    assert recompute_shares(_checkpointed_model(mode)) == shares


@pytest.mark.parametrize("mode", ["attention", "every_k"])
def test_a_partial_plan_counts_some_recompute_but_less_than_full(mode):
    """attention: every block's forward but its attention cores; every_k: half the blocks."""
    model = _checkpointed_model(mode)
    video, audio = _inputs(requires_grad=True)
    step, full = _planned_and_full_steps(model, tokens_of_forward(video, audio)[1])
    assert step.model < step.hardware < full.hardware


def test_every_k_hardware_flops_match_what_torch_counts_in_a_real_step():
    """every_k's count against torch's in a real forward + backward (off and full: the real-step test
    below, with the same shares)."""
    model = _checkpointed_model("every_k")
    video, audio = _inputs(requires_grad=True)
    step, _ = _planned_and_full_steps(model, tokens_of_forward(video, audio)[1])
    assert _torch_counted_step_flops(model, video, audio) == step.hardware


def _torch_counted_step_flops(model: torch.nn.Module, video, audio) -> float:
    """FLOPs of one forward + backward as torch's counter sees them (math SDPA: the attention matmuls
    are visible), less what the convention leaves out."""
    # LoRALinear's frozen GEMM adds into its output in place (aten.addmm_, lora/linear_ops.py), which
    # torch's counter does not know: count it as the addmm it is.
    in_place = {torch.ops.aten.addmm_: _addmm_flop}
    counting = FlopCounterMode(display=False, depth=None, custom_mapping=in_place)
    with sdpa_kernel(SDPBackend.MATH), counting as counter:
        vx, ax = model(video, audio, BatchedPerturbationConfig.empty(1))
        (vx.square().mean() + ax.square().mean()).backward()
    return counter.get_total_flops() - _adaln_and_patchify_backward(counter)


def _adaln_and_patchify_backward(counter: FlopCounterMode) -> float:
    """FLOPs torch counts that the convention leaves out: AdaLN timestep MLPs (per sample) and the
    patchify input gradients (taken here only because the test's inputs require grad)."""
    counts = counter.get_flop_counts()
    adaln = sum(sum(c.values()) for name, c in counts.items() if name.count(".") == 1 and "adaln" in name)
    return adaln + 2 * TV * 128 * 64 + 2 * TA * 128 * 32


def _addmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's own addmm count (2 M K N), for the in-place aten.addmm_ it does not register."""
    (m, k), (_, n) = a_shape, b_shape
    return 2 * m * k * n


@pytest.mark.parametrize("checkpointing", [False, True])
def test_flop_model_matches_what_torch_counts_in_a_real_step(checkpointing):
    """Inputs require grad so autograd computes every input gradient the convention counts; the math
    SDPA backend exposes the attention matmuls to torch's counter."""
    model = _model()
    model.train()
    model.set_gradient_checkpointing(checkpointing)
    video, audio = _inputs(requires_grad=True)
    measured = _torch_counted_step_flops(model, video, audio)
    step = FlopModel.from_model(model).step(batch=1, tokens=tokens_of_forward(video, audio)[1],
                                            activation_checkpointing=checkpointing)  # fmt: skip
    assert measured == step.hardware
    if not checkpointing:
        assert measured == step.model
    else:
        assert measured > step.model  # the recompute really ran


def test_mfu_and_hfu_formulas():
    _, model, blocks_forward = _hand_count()
    peak, devices, seconds = 989.4e12, 8, 0.5
    # 8 GPUs, each doing one tiny sample, 0.5 s per step
    mfu = utilization(8 * model, seconds, peak, devices)
    assert mfu == pytest.approx(model / 0.5 / 989.4e12)
    hfu = utilization(8 * (model + blocks_forward), seconds, peak, devices)
    assert hfu > mfu and hfu / mfu == pytest.approx((model + blocks_forward) / model)
    assert peak_flops_per_device(torch.device("cpu")) is None  # unknown peak: MFU not reported
    assert peak_flops_per_device(torch.device("cpu"), override_tflops=100.0) == 100e12
