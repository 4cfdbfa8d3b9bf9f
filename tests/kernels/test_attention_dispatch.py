"""KernelAttention (both backends) vs ltx-core's own Attention.forward, outputs and gradients.

Small random module: heads 4, dim_head 16, split RoPE, gated, LoRA on to_q/to_k/to_v/to_out.0.
Legend: B batch, T query tokens, S context tokens, C = heads * dim_head.
"""

from __future__ import annotations

import copy

import pytest
import torch
from kernel_test_utils import DEVICE, max_rel_err, requires_cuda, seeded
from ltx_core.model.transformer.attention import Attention, AttentionFunction
from ltx_core.model.transformer.rope import LTXRopeType, precompute_freqs_cis

import ltxdist_kernels.attention as kattn
from ltxdist._ltx_core import LTXModelConfigurator, Modality
from ltxdist.lora.inject import LoRASpec, inject_lora, lora_parameters
from ltxdist.lora.layers import LoRALinear
from ltxdist.models.init import init_transformer_weights
from ltxdist.models.presets import text_context_dims, transformer_config
from ltxdist_kernels.attention import (
    KernelAttention,
    patch_attention_modules,
    resolve_backend,
    unpatch_attention_modules,
)

H, D, C = 4, 16, 64
QUERY_DIM, CONTEXT_DIM = 40, 24
B, T, S = 2, 7, 5
FP32_TOL = 2e-5


SELF_CASES = ("self_masked", "self_perturbed", "all_perturbed")
CASES = (*SELF_CASES, "cross_k_pe", "k_pe_without_pe", "text_cross")


def _attention(gen: torch.Generator, case: str, rope_type: LTXRopeType = LTXRopeType.SPLIT) -> Attention:
    context_dim = QUERY_DIM if case in SELF_CASES else CONTEXT_DIM
    attn = Attention(
        query_dim=QUERY_DIM, context_dim=context_dim, heads=H, dim_head=D, rope_type=rope_type,
        attention_function=AttentionFunction.PYTORCH, apply_gated_attention=True,
    ).double()  # fmt: skip
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    for p in attn.parameters():
        p.requires_grad_(False)
    for name in ("to_q", "to_k", "to_v"):
        setattr(attn, name, LoRALinear(getattr(attn, name), 4, 8.0, 0.0, torch.float64))
    attn.to_out[0] = LoRALinear(attn.to_out[0], 4, 8.0, 0.0, torch.float64)
    with torch.no_grad():
        for m in attn.modules():
            if isinstance(m, LoRALinear):
                m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=gen, dtype=torch.float64) * 0.3)
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen, dtype=torch.float64) * 0.3)
    return attn


def _pe(gen: torch.Generator, tokens: int, rope_type: LTXRopeType = LTXRopeType.SPLIT):
    positions = torch.rand(B, 1, tokens, 2, generator=gen, dtype=torch.float64) * 20
    return precompute_freqs_cis(
        positions, dim=C, out_dtype=torch.float64, max_pos=[20], use_middle_indices_grid=True,
        num_attention_heads=H, rope_type=rope_type,
    )  # fmt: skip


def _case(gen: torch.Generator, case: str, rope_type: LTXRopeType = LTXRopeType.SPLIT) -> dict:
    """Attention inputs mirroring the calls BasicAVTransformerBlock makes."""
    x = torch.randn(B, T, QUERY_DIM, generator=gen, dtype=torch.float64)
    if case == "self_masked":  # attn1 with an additive (B, 1, T, T) self-attention bias
        mask = torch.randn(B, 1, T, T, generator=gen, dtype=torch.float64)
        return {"x": x, "pe": _pe(gen, T, rope_type), "mask": mask}
    if case == "self_perturbed":  # attn1 with a per-sample perturbation blend
        pm = torch.tensor([1.0, 0.0], dtype=torch.float64).reshape(B, 1, 1)
        return {"x": x, "pe": _pe(gen, T, rope_type), "perturbation_mask": pm}
    if case == "all_perturbed":  # attn1 skipped: value projection only
        return {"x": x, "pe": _pe(gen, T, rope_type), "all_perturbed": True}
    context = torch.randn(B, S, CONTEXT_DIM, generator=gen, dtype=torch.float64)
    if case == "cross_k_pe":  # audio<->video attention: separate RoPE tables for q and k
        return {"x": x, "context": context, "pe": _pe(gen, T, rope_type), "k_pe": _pe(gen, S, rope_type)}
    if case == "k_pe_without_pe":  # ltx-core rotates nothing without pe, whatever k_pe says
        return {"x": x, "context": context, "k_pe": _pe(gen, S, rope_type)}
    if case == "text_cross":  # attn2: no RoPE, (B, 1, 1, S) context mask
        mask = torch.where(torch.rand(B, 1, 1, S, generator=gen) < 0.3, -1e4, 0.0).double()
        return {"x": x, "context": context, "mask": mask}
    raise ValueError(case)


def _run(module: torch.nn.Module, inputs: dict, dtype: torch.dtype):
    """Output and grads w.r.t. x, context and every LoRA parameter, in `dtype` on DEVICE."""
    module = copy.deepcopy(module).to(DEVICE, dtype)
    kwargs = {}
    leaves = []
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(DEVICE, dtype)
            if name in ("x", "context"):
                value.requires_grad_()
                leaves.append(value)
        elif isinstance(value, tuple):
            value = tuple(v.to(DEVICE, dtype) for v in value)
        kwargs[name] = value
    params = [p for p in module.parameters() if p.requires_grad]
    out = module(**kwargs)
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves + params, dy.to(DEVICE, dtype), allow_unused=True)
    return out, grads


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", CASES)
def test_matches_ltx_core_attention(backend: str, case: str) -> None:
    gen = seeded("attn", case)
    attn = _attention(gen, case)
    inputs = _case(gen, case)
    out_ref, grads_ref = _run(attn, inputs, torch.float64)  # ltx-core's own forward
    patched = copy.deepcopy(attn)
    assert patch_attention_modules(patched, backend) == 1
    out, grads = _run(patched, inputs, torch.float32)
    assert out.shape == out_ref.shape == (B, T, QUERY_DIM)
    assert max_rel_err(out, out_ref) < FP32_TOL
    assert len(grads) == len(grads_ref) >= 9  # x (, context), 4 x (lora_A, lora_B)
    for got, want in zip(grads, grads_ref, strict=True):
        if want is None:  # all_perturbed: q/k adapters are not used at all
            assert got is None
        else:
            assert max_rel_err(got, want) < FP32_TOL


def test_triton_backend_dispatches_to_the_fused_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"lora": 0, "qk": 0, "attention": []}

    def count(key, fn):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(kattn, "fused_lora_linear", count("lora", kattn.fused_lora_linear))
    monkeypatch.setattr(kattn, "qk_norm_rope", count("qk", kattn.qk_norm_rope))
    gen = seeded("dispatch")
    attn = _attention(gen, "cross_k_pe")
    patch_attention_modules(attn, "triton")

    def recording_attention(q, k, v, heads, mask=None):
        calls["attention"].append((q.shape, k.shape, v.shape, heads, mask))
        return AttentionFunction.PYTORCH(q, k, v, heads, mask)

    attn.attention_function = recording_attention  # the seam sequence-parallel code hooks
    _run(attn, _case(gen, "cross_k_pe"), torch.float32)
    assert calls["lora"] == 4  # to_q, to_k, to_v, to_out.0 (to_gate_logits is a plain Linear)
    assert calls["qk"] == 2
    assert calls["attention"] == [((B, T, C), (B, S, C), (B, S, C), H, None)]


def test_interleaved_rope_falls_back_to_ltx_core_ops() -> None:
    gen = seeded("interleaved")
    attn = _attention(gen, "cross_k_pe", LTXRopeType.INTERLEAVED)
    inputs = _case(gen, "cross_k_pe", LTXRopeType.INTERLEAVED)
    out_ref, grads_ref = _run(attn, inputs, torch.float64)
    patch_attention_modules(attn, "triton")
    out, grads = _run(attn, inputs, torch.float32)
    assert max_rel_err(out, out_ref) < FP32_TOL
    for got, want in zip(grads, grads_ref, strict=True):
        assert max_rel_err(got, want) < FP32_TOL


def test_patch_keeps_parameter_names_and_unpatch_restores() -> None:
    gen = seeded("names")
    attn = _attention(gen, "cross_k_pe")
    before = {k: v.clone() for k, v in attn.state_dict().items()}
    container = torch.nn.ModuleDict({"a": attn, "b": torch.nn.Linear(3, 3)})
    assert patch_attention_modules(container, "torch") == 1
    assert type(attn) is KernelAttention and attn.kernel_backend == "torch"
    assert patch_attention_modules(container, "triton") == 1  # idempotent, switches backend
    assert attn.kernel_backend == "triton"
    after = attn.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert unpatch_attention_modules(container) == 1
    assert type(attn) is Attention and "kernel_backend" not in attn.__dict__
    with pytest.raises(ValueError, match="backend"):
        patch_attention_modules(container, "cuda")


def test_auto_backend_resolution() -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "auto"  # per-call dispatch table
    assert resolve_backend("torch", torch.device("cuda", 0)) == "torch"
    assert resolve_backend("triton", torch.device("cpu")) == "triton"


def _tiny_model_inputs(gen: torch.Generator, dtype: torch.dtype) -> tuple[Modality, Modality]:
    config = transformer_config("tiny")
    video_ctx, audio_ctx = text_context_dims(config)
    Tv, Ta, Sctx = 12, 6, 4
    t = torch.rand(B, generator=gen, dtype=torch.float64)
    video = Modality(
        latent=torch.randn(B, Tv, 128, generator=gen, dtype=torch.float64),
        sigma=t,
        timesteps=t[:, None].expand(B, Tv).clone(),
        positions=torch.rand(B, 3, Tv, 2, generator=gen, dtype=torch.float64) * 8,
        context=torch.randn(B, Sctx, video_ctx, generator=gen, dtype=torch.float64),
    )
    audio = Modality(
        latent=torch.randn(B, Ta, 128, generator=gen, dtype=torch.float64),
        sigma=t,
        timesteps=t[:, None].expand(B, Ta).clone(),
        positions=torch.rand(B, 1, Ta, 2, generator=gen, dtype=torch.float64) * 8,
        context=torch.randn(B, Sctx, audio_ctx, generator=gen, dtype=torch.float64),
    )

    def cast(m: Modality) -> Modality:
        fields = {k: (v.to(DEVICE, dtype) if isinstance(v, torch.Tensor) else v) for k, v in vars(m).items()}
        return Modality(**fields)

    return cast(video), cast(audio)


def test_tiny_ltx_model_forward_and_lora_grads_match_with_triton_kernels() -> None:
    """The whole (tiny) LTX-2.3 AV transformer, real preprocessing (RoPE tables, cross pe, AdaLN)."""
    from ltxdist._ltx_core import BatchedPerturbationConfig

    gen = seeded("tiny-model")
    model = LTXModelConfigurator.from_config(transformer_config("tiny", num_layers=1))
    init_transformer_weights(model, gen)
    inject_lora(model, LoRASpec(rank=3, alpha=6.0, targets=("attn",)))
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))

    def run(backend: str | None, dtype: torch.dtype):
        m = copy.deepcopy(model).to(DEVICE, dtype)
        if backend is not None:
            assert patch_attention_modules(m, backend) == 6
        video, audio = _tiny_model_inputs(seeded("tiny-inputs"), dtype)
        vx, ax = m(video, audio, BatchedPerturbationConfig.empty(B))
        loss = vx.square().mean() + ax.square().mean()
        return [vx, ax, *torch.autograd.grad(loss, lora_parameters(m))]

    want = run(None, torch.float64)
    eager = run(None, torch.float32)  # ltx-core's own fp32 error sets the bar
    got = run("triton", torch.float32)
    assert len(got) == len(want) == 2 + 2 * 4 * 6
    for g, e, w in zip(got, eager, want, strict=True):
        assert max_rel_err(g, w) <= 2 * max_rel_err(e, w) + 1e-5


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("case", ["self_masked", "cross_k_pe", "text_cross"])
def test_bf16_triton_within_ltx_core_bf16_error(case: str) -> None:
    gen = seeded("attn-bf16", case)
    attn = _attention(gen, case)
    inputs = _case(gen, case)
    out_ref, grads_ref = _run(attn, inputs, torch.float64)
    out_eager, grads_eager = _run(attn, inputs, torch.bfloat16)
    patched = copy.deepcopy(attn)
    patch_attention_modules(patched, "triton")
    out, grads = _run(patched, inputs, torch.bfloat16)
    for got, base, want in zip((out, *grads), (out_eager, *grads_eager), (out_ref, *grads_ref), strict=True):
        assert max_rel_err(got, want) <= 2 * max_rel_err(base, want) + 5e-3
