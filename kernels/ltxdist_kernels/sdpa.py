"""Which SDPA backend each LTX attention call reaches, and ltx-core's attention without per-call objects.

On an H200 (torch 2.11, cuDNN >= 9.15) the backends run one 10,752-token self-attention (32 x 128, forward
+ backward) at: cuDNN 545 TFLOP/s (12.2 ms), flash 317, memory-efficient 147, math 38
(benchmarks/results/probe_1xh200_2026-12-04.log). torch picks the first backend whose conditions the call
meets, in the order cuDNN, flash, efficient, math (cuDNN first on sm90/sm100 with cuDNN > 9.15). What
decides it, per torch's sdp_utils.cpp (main as of 2026-12; the conditions `predict_backend` encodes for
dense CUDA inputs; a torch release may differ in detail, `actual_backend` is the ground truth):
  cuDNN      fp16/bf16; head dim <= 128 (256 on sm90 with a new cuDNN) and a multiple of 8; last dim
             contiguous; at least 2 keys; an attn_mask only if broadcastable as (B|1, H|1, Tq|1, Tk|1) and
             not requiring grad; not in deterministic mode; dropout a multiple of 1/16
  flash      fp16/bf16; head dim <= 256, q/k/v head dims equal; NO attn_mask at all
  efficient  fp16/bf16/fp32; head dim a multiple of 8 (bf16); any broadcastable mask
  math       anything
So an additive mask costs flash, never cuDNN, as long as it keeps its broadcast shape: the cheap forms
ltxdist uses are (B, 1, 1, S) key biases (never a dense (B, H, T, S) tensor) and query masks applied to
the output rows. `predict_backend` is what CPU tests can check; on CUDA `actual_backend` asks torch
itself (`torch._fused_sdp_choice`) and the kernel benchmark records both per call type.

`sdpa_attention` is ltx-core's PytorchAttention arithmetic as a plain function: ltx-core's
`AttentionFunction.PYTORCH` instantiates a typing.Protocol class on every call, which rewrites that
class's __dict__ on first use; torch.compile guards on it, so every compiled block recompiled once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKEND_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable", -1: "error"}


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """ltx-core's attention contract: (B, T, H*D) q and (B, S, H*D) k, v -> (B, T, H*D); `mask` additive
    (or bool), broadcastable to (B, H, T, S), with 2-D / 3-D masks lifted as ltx-core does."""
    b, _, inner = q.shape
    d = inner // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, inner)


def use_plain_sdpa(model: torch.nn.Module) -> int:
    """Replace ltx-core's `AttentionFunction.PYTORCH` / `DEFAULT` (without xformers) by `sdpa_attention`
    at the innermost end of every attention function chain (mask and sequence-parallel wrappers keep
    wrapping it); returns how many were replaced. Same arithmetic, no per-call object."""
    from ltx_core.model.transformer import attention as ltx_attention

    plain = {ltx_attention.AttentionFunction.PYTORCH}
    if ltx_attention.memory_efficient_attention is None:
        plain.add(ltx_attention.AttentionFunction.DEFAULT)
    replaced = 0
    for module in model.modules():
        if not isinstance(module, ltx_attention.Attention):
            continue
        holder, attr = module, "attention_function"
        while hasattr(getattr(holder, attr), "inner"):
            holder, attr = getattr(holder, attr), "inner"
        if getattr(holder, attr) in plain:
            setattr(holder, attr, sdpa_attention)
            replaced += 1
    return replaced


# -- backend selection ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SdpaCall:
    """Shapes of one SDPA call as torch sees them: q (B, H, Tq, D), k/v (B, H, Tk, D)."""

    batch: int
    heads: int
    q_tokens: int
    k_tokens: int
    head_dim: int
    dtype: torch.dtype = torch.bfloat16
    mask_shape: tuple[int, ...] | None = None  # 4-D after ltx-core's lifting; None: no mask
    mask_requires_grad: bool = False
    last_dim_contiguous: bool = True


@dataclass(frozen=True)
class Device:
    """What the selection depends on besides the call: compute capability and cuDNN version."""

    capability: tuple[int, int] = (9, 0)  # H100 / H200
    cudnn_version: int = 91700  # > 9.15: torch puts cuDNN first on sm90 (the 2026-12-04 H200 did)
    deterministic: bool = False


def _mask_broadcastable(call: SdpaCall) -> bool:
    shape = call.mask_shape
    if shape is None:
        return True
    if len(shape) != 4:
        return len(shape) == 2 and shape[-2] in (1, call.q_tokens) and shape[-1] in (1, call.k_tokens)
    b, h, tq, tk = shape
    return (
        b in (1, call.batch)
        and h in (1, call.heads)
        and tq in (1, call.q_tokens)
        and tk in (1, call.k_tokens)
    )


def _cudnn_ok(call: SdpaCall, dev: Device) -> tuple[bool, str]:
    sm90_or_100 = dev.capability in ((9, 0),) or dev.capability[0] == 10
    limit = 256 if sm90_or_100 and dev.cudnn_version > 92200 else 128
    checks = [
        (dev.capability >= (8, 0), "cuDNN SDPA needs sm80+"),
        (call.dtype in (torch.float16, torch.bfloat16), f"dtype {call.dtype} (fp16/bf16 only)"),
        (not dev.deterministic, "deterministic algorithms requested"),
        (_mask_broadcastable(call) and not call.mask_requires_grad, "mask not broadcastable or needs grad"),
        (call.head_dim <= limit and call.head_dim % 8 == 0, f"head dim {call.head_dim}"),
        (call.k_tokens != 1, "a single key"),
        (call.last_dim_contiguous, "head dim not contiguous"),
    ]
    return _first_failure(checks)


def _flash_ok(call: SdpaCall, dev: Device) -> tuple[bool, str]:
    checks = [
        ((8, 0) <= dev.capability <= (12, 1), "flash needs sm80..sm121"),
        (call.mask_shape is None, "an attn_mask (flash takes none)"),
        (call.dtype in (torch.float16, torch.bfloat16), f"dtype {call.dtype}"),
        (call.head_dim <= 256, f"head dim {call.head_dim}"),
        (call.last_dim_contiguous, "head dim not contiguous"),
    ]
    return _first_failure(checks)


def _efficient_ok(call: SdpaCall, dev: Device) -> tuple[bool, str]:
    align = 8 if call.dtype in (torch.float16, torch.bfloat16) else 4
    checks = [
        (call.head_dim % align == 0, f"head dim {call.head_dim} not a multiple of {align}"),
        (_mask_broadcastable(call), "mask not broadcastable"),
        (call.last_dim_contiguous, "head dim not contiguous"),
    ]
    return _first_failure(checks)


def _first_failure(checks: list[tuple[bool, str]]) -> tuple[bool, str]:
    for ok, reason in checks:
        if not ok:
            return False, reason
    return True, ""


def predict_backend(call: SdpaCall, dev: Device | None = None) -> tuple[str, list[str]]:
    """(backend, why the faster ones were skipped) by torch's CUDA rules (see the module docstring)."""
    dev = dev or Device()
    prefer_cudnn = dev.cudnn_version > 91500 and dev.capability[0] in (9, 10)
    order = ["cudnn", "flash", "efficient"] if prefer_cudnn else ["flash", "efficient", "cudnn"]
    rules = {"cudnn": _cudnn_ok, "flash": _flash_ok, "efficient": _efficient_ok}
    skipped = []
    for name in order:
        ok, reason = rules[name](call, dev)
        if ok:
            return name, skipped
        skipped.append(f"{name}: {reason}")
    return "math", skipped


def actual_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> str:
    """The backend torch's own dispatcher picks for these (B, H, T, D) tensors (CUDA: the real answer)."""
    return BACKEND_NAMES.get(int(torch._fused_sdp_choice(q, k, v, mask)), "unknown")


def ltx_attention_calls(
    video_tokens: int,
    audio_tokens: int,
    text_tokens: int = 1024,
    *,
    batch: int = 1,
    video_heads: tuple[int, int] = (32, 128),
    audio_heads: tuple[int, int] = (32, 64),
    sequence_parallel: int = 1,
) -> dict[str, SdpaCall]:
    """Every attention call type of an LTX-2.3 block, with the mask form ltxdist gives it.

    Masks: key masks as (B, 1, 1, S) additive biases (strategies/attention_masks.py), the text mask only
    when captions are padded (strategies/base.py text_mask: None for all-ones masks), query masks applied
    to output rows (no SDPA mask). Cross-modal attention uses the audio stream's heads (ltx-core).
    """
    (hv, dv), (ha, da) = video_heads, audio_heads
    p = sequence_parallel
    tv = -(-video_tokens // p) * p  # sequence-parallel padding to a multiple of P
    calls = {
        "video self (attn1)": SdpaCall(batch, hv, video_tokens, video_tokens, dv),
        "video self, IC padded references (key mask)": SdpaCall(
            batch, hv, video_tokens, video_tokens, dv, mask_shape=(batch, 1, 1, video_tokens)
        ),
        "video text cross (attn2)": SdpaCall(batch, hv, video_tokens, text_tokens, dv),
        "video text cross, padded captions": SdpaCall(
            batch, hv, video_tokens, text_tokens, dv, mask_shape=(batch, 1, 1, text_tokens)
        ),
        "ltx-core dense self-attention mask (unused by ltxdist)": SdpaCall(
            batch, hv, video_tokens, video_tokens, dv, mask_shape=(batch, 1, video_tokens, video_tokens)
        ),
        f"sequence parallel video self (P={p}, padding key mask)": SdpaCall(
            batch, hv // p, tv, tv, dv, mask_shape=(batch, 1, 1, tv) if tv != video_tokens else None
        ),
    }
    if audio_tokens:
        calls.update(
            {
                "audio self (audio_attn1)": SdpaCall(batch, ha, audio_tokens, audio_tokens, da),
                "audio self, ID-LoRA padded audio (key mask)": SdpaCall(
                    batch, ha, audio_tokens, audio_tokens, da, mask_shape=(batch, 1, 1, audio_tokens)
                ),
                "audio text cross (audio_attn2)": SdpaCall(batch, ha, audio_tokens, text_tokens, da),
                "audio-to-video (a2v)": SdpaCall(batch, ha, video_tokens, audio_tokens, da),
                "audio-to-video, ID-LoRA reference masked (key mask)": SdpaCall(
                    batch, ha, video_tokens, audio_tokens, da, mask_shape=(batch, 1, 1, audio_tokens)
                ),
                "video-to-audio (v2a)": SdpaCall(batch, ha, audio_tokens, video_tokens, da),
            }
        )
    return calls
