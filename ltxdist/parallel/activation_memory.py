"""Activation memory of one LTX transformer block, per activation-checkpointing mode, without a GPU.

The block is ltx-core's own code run on the META device (shapes and dtypes, no memory, milliseconds)
on a one-block copy of the model being trained (same widths, LoRA targets and rank, dtype), while
autograd's saved-tensor hooks record what backward would keep. Two ops run as they do on CUDA rather
than as their meta (CPU-like) decompositions: attention through aten's cuDNN SDPA op (the H200's
default backend: it saves q, k, v, output, log-sum-exp, not a T x T matrix), and RMSNorm as CUDA's fused
kernel (it saves its input and one fp32 rstd per row, not fp32 copies of the whole input).

Per block, in bytes:
  saved_off        everything one block keeps for backward when it is not checkpointed
  saved_attention  selective checkpointing that keeps the attention outputs (and log-sum-exp) and
                   recomputes the rest: the block's own inputs plus those outputs
  saved_full       the whole block recomputed: only its per-block inputs (the video / audio hidden
                   states; context, RoPE tables and timestep embeddings are shared by all blocks)
Outside the blocks:
  outside          what the rest of the model keeps (preprocessing, output head) plus the tensors every
                   block shares (counted once)
  transient        extra live memory while one block runs backward: its recomputed activations (at most
                   saved_off) plus gradient buffers of a few hidden-state sizes

Peak of a step = resident (weights, adapters, AdamW moments) + outside + the sum of the blocks' saved
bytes + transient: the allocated peak. Checked against the 2026-12-04 H200 run (22B, one GPU): standard
960x544x49 r32 predicted 76.8 GiB with no checkpointing (measured 78.0), 40.0 fully checkpointed
(measured 40.2); IC-LoRA 768x448x121 r128 fully checkpointed 51.1 (measured 49.7) - tests/parallel/
test_activation_checkpointing.py. A budget also leaves ALLOCATOR_OVERHEAD for the caching allocator's
rounding and fragmentation. `benchmarks/fullsize_bench.py` prints the prediction next to every peak.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ALLOCATOR_OVERHEAD = 1.05  # reserved / allocated: caching-allocator rounding and fragmentation
GRADIENT_BUFFERS = 4  # hidden-state-sized gradient tensors alive during one block's backward
_GIB = 2**30

SDPA_OPS = (
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_attention_math",
)


@dataclass(frozen=True)
class BlockMemory:
    saved_off: int
    saved_attention: int
    saved_full: int
    outside: int
    transient: int

    def saved(self, mode: str) -> int:
        return {"off": self.saved_off, "attention": self.saved_attention, "full": self.saved_full}[mode]


def one_block_template(model: torch.nn.Module) -> torch.nn.Module:
    """A meta-device copy of `model` with only its first transformer block (no memory is allocated,
    whatever device the model lives on). Build it before parallel wrappers change the blocks."""
    from ltx_core.model.transformer.attention import Attention, AttentionFunction

    blocks = model.transformer_blocks
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = torch.nn.Parameter(meta, t.requires_grad) if isinstance(t, torch.nn.Parameter) else meta
    for module in model.modules():
        if isinstance(module, Attention):  # mask / sequence-parallel wrappers (process groups) stay behind
            memo[id(module.attention_function)] = AttentionFunction.PYTORCH
    try:
        model.transformer_blocks = torch.nn.ModuleList([blocks[0]])
        template = copy.deepcopy(model, memo)
    finally:
        model.transformer_blocks = blocks
    template.__dict__.pop("forward", None)
    for block in template.transformer_blocks:
        block.__dict__.pop("forward", None)  # an activation-checkpointing wrapper of the original
    return template


def _cudnn_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """ltx-core's attention function contract on aten's cuDNN SDPA op (what it saves is what we count)."""
    b, _, inner = q.shape
    d = inner // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.ndim == 3:
        mask = mask.unsqueeze(1)
    out = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, mask, True)[0]
    return out.transpose(1, 2).reshape(b, -1, inner)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside a block argument (dataclasses, tuples, tensors)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif is_dataclass(obj):
        for f in fields(obj):
            yield from _tensors(getattr(obj, f.name))


def _key(t: torch.Tensor) -> int:
    return id(t._base if t._base is not None else t)


def _nbytes(t: torch.Tensor) -> int:
    base = t._base if t._base is not None else t
    return base.numel() * base.element_size()


class _FusedRMSNorm(torch.autograd.Function):
    """What CUDA's `_fused_rms_norm` keeps for backward (input, fp32 rstd per row); forward math only."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.empty((*x.shape[:-1], 1), device=x.device, dtype=torch.float32)
        ctx.save_for_backward(x, rstd, weight)
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, grad):  # never run: the trace only records what forward saves
        raise NotImplementedError


class _CudaLikeOps(torch.overrides.TorchFunctionMode):
    """RMSNorm as CUDA runs it (see the module docstring); everything else unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.nn.functional.rms_norm, torch.rms_norm):
            weight = args[2] if len(args) > 2 else kwargs.get("weight")
            eps = args[3] if len(args) > 3 else kwargs.get("eps")
            return _FusedRMSNorm.apply(args[0], weight, eps)
        return func(*args, **kwargs)


class _SdpaOutputs(TorchDispatchMode):
    """Sums the bytes of SDPA outputs (what attention-selective checkpointing keeps)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.active = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.active and func._schema.name in SDPA_OPS:
            self.bytes += sum(_nbytes(t) for t in _tensors(out[:2]))
        return out


@contextmanager
def _recording(template: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Hooks that attribute every saved tensor to 'block' or 'outside' while the template runs."""
    params = {id(p) for p in template.parameters()}
    block = template.transformer_blocks[0]
    state: dict[str, Any] = {"in_block": False, "block": {}, "outside": {}, "shared": set(), "inputs": {}}

    def pre(module, args, kwargs):
        state["in_block"] = True
        for stream in (*args, *kwargs.values()):
            for t in _tensors(stream):
                state["shared"].add(_key(t))
            x = getattr(stream, "x", None)
            if isinstance(x, torch.Tensor):  # the hidden state: new in every block, not shared
                state["shared"].discard(_key(x))
                state["inputs"][_key(x)] = _nbytes(x)

    def post(module, args, kwargs, output):
        state["in_block"] = False

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in params and _key(t) not in params:
            where = "block" if state["in_block"] and _key(t) not in state["shared"] else "outside"
            state[where][_key(t)] = _nbytes(t)
        return t

    handles = [
        block.register_forward_pre_hook(pre, with_kwargs=True),
        block.register_forward_hook(post, with_kwargs=True),
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield state
    finally:
        for h in handles:
            h.remove()


def _meta(obj: Any) -> Any:
    """A copy of a model input (Modality) with every tensor on the meta device."""
    if obj is None or not is_dataclass(obj):
        return obj
    values = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        values[f.name] = torch.empty_like(v, device="meta") if isinstance(v, torch.Tensor) else v
    return type(obj)(**values)


@torch.no_grad()
def _prepare(template: torch.nn.Module) -> None:
    from ltx_core.model.transformer.attention import Attention

    template.train()
    for module in template.modules():
        if isinstance(module, Attention):
            module.attention_function = _cudnn_sdpa
            if hasattr(module, "kernel_backend"):
                module.kernel_backend = "torch"  # the Triton kernels cannot run on meta; same saved set


def trace_block_memory(template: torch.nn.Module, video: Any, audio: Any, perturbations: Any) -> BlockMemory:
    """Run the one-block template forward on meta copies of (video, audio) and measure what is saved."""
    _prepare(template)
    sdpa = _SdpaOutputs()
    block = template.transformer_blocks[0]
    hooks = [
        block.register_forward_pre_hook(lambda *a: setattr(sdpa, "active", True)),
        block.register_forward_hook(lambda *a: setattr(sdpa, "active", False)),
    ]
    try:
        with _recording(template) as state, _CudaLikeOps(), sdpa, torch.enable_grad():
            vx, ax = template(_meta(video), _meta(audio), perturbations)
            hidden = max((t.numel() * t.element_size() for t in (vx, ax) if t is not None), default=0)
    finally:
        for h in hooks:
            h.remove()
    saved_off = sum(state["block"].values())
    saved_full = sum(state["inputs"].values())
    # Gradient buffers are hidden-state sized: the widest stream's hidden state, in the activation dtype.
    widest = max(state["inputs"].values(), default=hidden)
    return BlockMemory(
        saved_off=saved_off,
        saved_attention=saved_full + sdpa.bytes,
        saved_full=saved_full,
        outside=sum(state["outside"].values()),
        transient=saved_off + GRADIENT_BUFFERS * widest,
    )


def resident_bytes(model: torch.nn.Module, optimizer_bytes_per_param: int = 8) -> int:
    """Bytes this process holds for the model outside activations: its share of every parameter (FSDP2
    shards and ZeRO-3 partitions counted locally) plus AdamW's two fp32 moments per trainable element.

    Gradients are left out: LoRA gradients fill up while backward frees the saved activations, so
    predicted_peak_bytes weighs them against the saved activations (`gradient_bytes`).
    """
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else getattr(p, "ds_tensor", p)
        total += local.numel() * local.element_size()
        if p.requires_grad:
            total += local.numel() * optimizer_bytes_per_param
    return total


def gradient_bytes(model: torch.nn.Module) -> int:
    """Bytes of this process's share of the trainable parameters' gradients (the LoRA adapters)."""
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            local = p.to_local() if hasattr(p, "to_local") else getattr(p, "ds_tensor", p)
            total += local.numel() * local.element_size()
    return total


def predicted_peak_bytes(
    memory: BlockMemory, counts: dict[str, int], resident: int, gradients: int = 0
) -> int:
    """Peak allocated bytes of a step with `counts` blocks in each mode ({'off': n, 'attention': n,
    'full': n}): what `torch.cuda.max_memory_allocated` reports. A budget must also leave room for
    the caching allocator (ALLOCATOR_OVERHEAD).

    Backward frees the blocks' saved activations while it fills the `gradients` bytes of the adapters'
    gradients: the peak is at its start (everything saved) or its end (every gradient), whichever holds
    more. In every measured case the saved activations do."""
    saved = sum(n * memory.saved(mode) for mode, n in counts.items())
    return resident + memory.outside + max(saved, gradients) + memory.transient


def to_gib(n_bytes: float) -> float:
    return n_bytes / _GIB
