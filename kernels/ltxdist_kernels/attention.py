"""Kernel dispatch for ltx-core's `Attention`: fused LoRA projections and fused q/k norm + RoPE.

`patch_attention_modules(model, backend)` turns every ltx-core `Attention` in `model` into a
`KernelAttention` (a subclass, swapped in place through `__class__`): no parameter, buffer or name
changes, so checkpoints, LoRA export and FSDP wrapping see the same module tree. Its forward is
ltx-core's forward step for step, with two substitutions on the triton backend:
  * to_q / to_k / to_v / to_out.0 that are `LoRALinear` run through `fused_lora_linear` (plain
    `nn.Linear` layers stay on cuBLAS: there is nothing to fuse);
  * q_norm + RoPE (and k_norm + RoPE) run as one `qk_norm_rope` kernel each (SPLIT rope, or no pe).
The attention itself still goes through `self.attention_function(q, k, v, heads, mask)`, the seam
sequence-parallel code hooks. Backends: "triton" (always the fused kernels), "torch" (ltx-core's own ops,
LoRALinear's own forward) or "auto": on CUDA, per call shape, the path `dispatch.DISPATCHER` says was
measured fastest on this GPU kind (the torch path wherever nothing was measured); torch on anything else.

Shape legend: B batch, T query tokens, S context tokens, H heads, D head dim, C = H * D.
"""

from __future__ import annotations

from typing import Literal

import torch
from ltx_core.model.transformer.attention import Attention
from ltx_core.model.transformer.rope import LTXRopeType, apply_rotary_emb

from ltxdist.lora.layers import LoRALinear
from ltxdist.quant.formats import is_quantized_dtype
from ltxdist_kernels.dispatch import DISPATCHER, CallShape
from ltxdist_kernels.fused_lora_linear import draw_dropout_seed, fused_lora_linear
from ltxdist_kernels.qk_norm_rope import qk_norm_rope

Backend = Literal["triton", "torch", "auto"]
RopeTables = tuple[torch.Tensor, torch.Tensor]  # ltx-core's (cos, sin)
BACKENDS: tuple[str, ...] = ("triton", "torch", "auto")


def resolve_backend(backend: str, device: torch.device) -> str:
    """'triton', 'torch', or 'auto' (per-call dispatch, CUDA only) for inputs on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"kernels backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto" and device.type != "cuda":
        return "torch"  # the Triton kernels need CUDA: auto is the torch path here
    if backend == "auto" and torch.compiler.is_compiling():
        # Inside torch.compile the torch path is what inductor fuses itself (compiled q/k norm + RoPE ran
        # within 13% of the fused kernel on H200), and the dispatch table is not traceable by dynamo.
        return "torch"
    return backend


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def lora_linear_forward(module: torch.nn.Linear, x: torch.Tensor, backend: str) -> torch.Tensor:
    """module(x), through the fused kernel when the module is a LoRALinear and the backend is triton
    (or auto and this call shape was measured faster on the fused kernel).

    Dropout follows LoRALinear: active only in training mode; its seed comes from torch's CPU generator.
    """
    if backend == "torch" or not isinstance(module, LoRALinear) or is_quantized_dtype(module.weight.dtype):
        # an 8-bit base weight (model.base_precision) takes LoRALinear's own path: the fused kernel
        # reads the weight directly, bypassing the frozen_matmul_ seam that dequantizes it
        return module(x)
    if backend == "auto":
        K = x.shape[-1]
        shape = CallShape(
            "lora_linear", x.numel() // K, K, module.out_features, module.rank, dtype=_dtype_name(x.dtype)
        )
        if DISPATCHER.choose(shape, x.device) != "triton":
            return module(x)
    dropout_p = module.dropout_p if module.training else 0.0
    seed = draw_dropout_seed() if dropout_p > 0 else 0
    return fused_lora_linear(
        x, module.weight, module.bias, module.lora_A, module.lora_B, module.scaling, dropout_p, seed
    )


def norm_rope(
    norm: torch.nn.RMSNorm,
    x_BTC: torch.Tensor,
    pe: RopeTables | None,
    rope_type: LTXRopeType,
    backend: str,
    heads: int = 0,
) -> torch.Tensor:
    """RMSNorm then RoPE, fused on the triton backend when the rope layout is SPLIT (or there is none);
    on auto, fused only where this call shape was measured faster."""
    fusable = pe is None or rope_type == LTXRopeType.SPLIT
    if backend == "auto" and fusable:
        C = x_BTC.shape[-1]
        op = "qk_norm" if pe is None else "qk_norm_rope"
        shape = CallShape(op, x_BTC.numel() // C, C, C, heads=heads, dtype=_dtype_name(x_BTC.dtype))
        backend = DISPATCHER.choose(shape, x_BTC.device)
    if backend == "triton" and fusable:
        cos_BHTd, sin_BHTd = (None, None) if pe is None else pe
        return qk_norm_rope(x_BTC, norm.weight, norm.eps, cos_BHTd, sin_BHTd)
    # torch backend, or INTERLEAVED rope (no fused kernel for that layout): ltx-core's own ops.
    out = norm(x_BTC)
    return out if pe is None else apply_rotary_emb(out, pe, rope_type)


class KernelAttention(Attention):
    """ltx-core `Attention` whose forward dispatches to the fused kernels (see module docstring)."""

    kernel_backend: str = "auto"

    def forward(  # same signature and semantics as ltx-core Attention.forward
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        pe: RopeTables | None = None,
        k_pe: RopeTables | None = None,
        perturbation_mask: torch.Tensor | None = None,
        all_perturbed: bool = False,
    ) -> torch.Tensor:
        backend = resolve_backend(self.kernel_backend, x.device)
        context = x if context is None else context
        v_BSC = lora_linear_forward(self.to_v, context, backend)
        if all_perturbed:
            out_BTC = v_BSC
        else:
            q_BTC = lora_linear_forward(self.to_q, x, backend)
            k_BSC = lora_linear_forward(self.to_k, context, backend)
            q_BTC = norm_rope(self.q_norm, q_BTC, pe, self.rope_type, backend, self.heads)
            # As ltx-core: RoPE only when `pe` is given, then k_pe (if any) for the keys.
            k_pe = None if pe is None else (pe if k_pe is None else k_pe)
            k_BSC = norm_rope(self.k_norm, k_BSC, k_pe, self.rope_type, backend, self.heads)
            out_BTC = self.attention_function(q_BTC, k_BSC, v_BSC, self.heads, mask)
            if perturbation_mask is not None:
                out_BTC = out_BTC * perturbation_mask + v_BSC * (1 - perturbation_mask)
        if self.to_gate_logits is not None:
            # Per-head gate 2 * sigmoid(logits): zero logits give the identity.
            gates_BTH = 2.0 * torch.sigmoid(lora_linear_forward(self.to_gate_logits, x, backend))
            B, T, _ = out_BTC.shape
            out_BTHD = out_BTC.view(B, T, self.heads, self.dim_head) * gates_BTH.unsqueeze(-1)
            out_BTC = out_BTHD.view(B, T, self.heads * self.dim_head)
        out_proj, *rest = self.to_out
        out_BTC = lora_linear_forward(out_proj, out_BTC, backend)
        for module in rest:  # ltx-core appends an Identity (a dropout slot)
            out_BTC = module(out_BTC)
        return out_BTC


def patch_attention_modules(model: torch.nn.Module, backend: Backend = "auto") -> int:
    """Make every ltx-core Attention in `model` (itself included) a KernelAttention using `backend`.

    Idempotent (re-patching only changes the backend); returns how many modules it covers. Patch
    before wrapping the model (FSDP, torch.compile) so the wrappers see the final forward.
    """
    resolve_backend(backend, torch.device("cpu"))  # validate the name early
    count = 0
    for module in model.modules():
        if isinstance(module, Attention):
            if type(module) is Attention:
                module.__class__ = KernelAttention
            elif not isinstance(module, KernelAttention):
                raise TypeError(f"unexpected Attention subclass {type(module).__name__}; not patched")
            module.kernel_backend = backend
            count += 1
    return count


def unpatch_attention_modules(model: torch.nn.Module) -> int:
    """Undo `patch_attention_modules`: back to ltx-core's own Attention.forward."""
    count = 0
    for module in model.modules():
        if isinstance(module, KernelAttention):
            module.__class__ = Attention
            module.__dict__.pop("kernel_backend", None)
            count += 1
    return count
