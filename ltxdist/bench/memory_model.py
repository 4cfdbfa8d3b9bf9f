"""Analytic peak GPU memory of one LoRA training step, per base precision and block-swap setting.

Nothing here is measured on a GPU. Weights and adapters are counted exactly from the model built on the
meta device (the same build, LoRA injection and 8-bit plan as training). Activations are counted
exactly too, from the tensors autograd saves while one transformer block (and the layers around the
blocks) runs forward on the meta device at the real token counts, with attention replaced by a stand-in
that saves what flash / cuDNN attention saves (q, k, v, out and the row log-sum-exp) instead of the
T x S matrices the meta device's math path would save. What the model cannot see, and adds as stated
margins: the CUDA context and allocator fragmentation (`OVERHEAD_GIB`), and backward temporaries
(`BACKWARD_FACTOR` x one block's activations).

Peak with activation checkpointing = resident base weights + blocks in flight (block swap) + adapters
(weights, grads, AdamW moments) + saved block inputs (L x hidden states) + one block's activations
(its recompute) x (1 + BACKWARD_FACTOR) + the layers outside the blocks + the largest up-cast weight
(8-bit base) + overhead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

GIB = 2**30
OVERHEAD_GIB = 1.0  # CUDA context (outside the allocator) + fragmentation
BACKWARD_FACTOR = 1.0  # gradients of one block's activations, alive while its backward runs
# Offloaded blocks on the device at once: the one running, the one prefetched, and the one whose backward
# autograd is finishing when the next recompute starts.
BLOCKS_IN_FLIGHT = 3


@dataclass(frozen=True)
class Workload:
    bucket: str  # WxHxF
    fps: float = 24.0
    text_tokens: int = 1024


@dataclass(frozen=True)
class ModelCounts:
    """Bytes of one configuration of the model (exact, from the meta build)."""

    block_base_bytes: list[int]  # frozen weights (+ 8-bit scales) per block
    outer_base_bytes: int  # frozen weights outside the blocks
    adapter_params: int
    largest_upcast_bytes: int  # the largest 8-bit weight read back to bf16 for one matmul (0 for bf16)


def _meta_model(preset: str, *, num_layers: int | None, rank: int, targets: tuple[str, ...], precision: str):
    from ltxdist.lora import LoRASpec, inject_lora
    from ltxdist.models import build_meta_transformer
    from ltxdist.models.presets import transformer_config
    from ltxdist.quant.modules import LayerFormat, default_quantized_layers, quantize_meta_linears

    config = transformer_config(preset)
    if num_layers is not None:
        config["transformer"] = {**config["transformer"], "num_layers": num_layers}
    model = build_meta_transformer(config).to(torch.bfloat16)
    inject_lora(model, LoRASpec(rank=rank, alpha=rank, targets=targets, dtype=torch.float32))
    if precision != "bf16":
        layers = default_quantized_layers(model)
        quantize_meta_linears(model, {n: LayerFormat(precision, per_row=True) for n in layers})
    return model, config


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def model_counts(preset: str, *, rank: int, targets: tuple[str, ...], precision: str) -> ModelCounts:
    model, _ = _meta_model(preset, num_layers=None, rank=rank, targets=targets, precision=precision)
    adapters = sum(p.numel() for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B")))
    per_block = []
    for block in model.transformer_blocks:
        frozen = [p for n, p in block.named_parameters() if not n.endswith((".lora_A", ".lora_B"))]
        per_block.append(sum(map(_tensor_bytes, frozen)) + sum(map(_tensor_bytes, block.buffers())))
    outer = sum(
        _tensor_bytes(p) for n, p in model.named_parameters() if not n.startswith("transformer_blocks.")
    )
    upcast = 0
    if precision != "bf16":
        upcast = max(
            p.numel() * 2 for p in model.parameters() if p.dtype in (torch.int8, torch.float8_e4m3fn)
        )
    return ModelCounts(per_block, outer, adapters, upcast)


class _FlashStandIn(torch.autograd.Function):
    """Saves what flash / cuDNN attention saves: q, k, v, out and a float32 log-sum-exp per row."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[0], heads, q.shape[1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None


def _meta_inputs(workload: Workload, config: dict[str, Any]):
    from ltxdist.data.collate import collate_samples
    from ltxdist.data.sample import CachedSample
    from ltxdist.data.synthetic import audio_latent_frames, latent_shape, parse_bucket
    from ltxdist.models.presets import text_context_dims
    from ltxdist.strategies import StandardStrategy
    from ltxdist.strategies.rng import sample_generators

    dv, da = text_context_dims(config)
    frames = parse_bucket(workload.bucket)[2]
    tensors = {
        "video_latents": torch.zeros(*latent_shape(workload.bucket), dtype=torch.bfloat16),
        "video_context": torch.zeros(workload.text_tokens, dv, dtype=torch.bfloat16),
        "audio_context": torch.zeros(workload.text_tokens, da, dtype=torch.bfloat16),
        "context_mask": torch.ones(workload.text_tokens, dtype=torch.bool),
        "audio_latents": torch.zeros(8, audio_latent_frames(frames, workload.fps), 16, dtype=torch.bfloat16),
    }
    meta = {"id": "m", "bucket": workload.bucket, "fps": workload.fps, "caption": ""}
    batch = collate_samples([CachedSample(tensors, meta)])
    out = StandardStrategy(first_frame_conditioning_p=0.0).prepare(
        batch, dtype=torch.bfloat16, device=torch.device("cpu"), generators=sample_generators(0, ["m"], [0])
    )

    def to_meta(modality: Any) -> Any:
        fields = dataclasses.fields(modality)
        moved = {
            f.name: getattr(modality, f.name).to("meta")
            for f in fields
            if isinstance(getattr(modality, f.name), torch.Tensor)
        }
        return dataclasses.replace(modality, **moved)

    return to_meta(out.video), to_meta(out.audio)


def saved_activation_bytes(preset: str, workload: Workload, *, num_layers: int, rank: int) -> int:
    """Bytes of the tensors autograd saves for backward in one forward (no checkpointing) of the model cut
    to `num_layers` blocks, frozen weights excluded (they are counted as weights)."""
    from ltx_core.model.transformer.attention import Attention

    from ltxdist._ltx_core import BatchedPerturbationConfig

    model, config = _meta_model(preset, num_layers=num_layers, rank=rank, targets=("attn",), precision="bf16")
    for module in model.modules():
        if isinstance(module, Attention):
            module.attention_function = lambda q, k, v, heads, mask=None: _FlashStandIn.apply(q, k, v, heads)
    weight_storages = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in weight_storages:
            saved[storage._cdata] = storage.nbytes()  # a tensor saved twice (or as views) counts once
        return t

    video, audio = _meta_inputs(workload, config)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(video, audio, BatchedPerturbationConfig.empty(1))
    return sum(saved.values())


@dataclass(frozen=True)
class ActivationCounts:
    per_block: int  # one block's saved activations (what its recompute holds)
    outside_blocks: int  # patchify, AdaLN, text projection, output layers
    block_input: int  # hidden states entering one block (what checkpointing keeps per block)
    video_tokens: int
    audio_tokens: int


def activation_counts(preset: str, workload: Workload, *, rank: int) -> ActivationCounts:
    from ltxdist.data.synthetic import audio_latent_frames, latent_shape, parse_bucket
    from ltxdist.models.presets import transformer_config

    one = saved_activation_bytes(preset, workload, num_layers=1, rank=rank)
    two = saved_activation_bytes(preset, workload, num_layers=2, rank=rank)
    _, f, h, w = latent_shape(workload.bucket)
    video_tokens = f * h * w
    audio_tokens = audio_latent_frames(parse_bucket(workload.bucket)[2], workload.fps)
    t = transformer_config(preset)["transformer"]
    width_v = t["num_attention_heads"] * t["attention_head_dim"]
    width_a = t["audio_num_attention_heads"] * t["audio_attention_head_dim"]
    block_input = 2 * (video_tokens * width_v + audio_tokens * width_a)  # bf16 hidden states
    return ActivationCounts(two - one, 2 * one - two, block_input, video_tokens, audio_tokens)


def peak_bytes(
    counts: ModelCounts,
    acts: ActivationCounts,
    *,
    offload_blocks: int,
    activation_checkpointing: bool = True,
    optimizer_bytes_per_param: int = 8,
) -> dict[str, float]:
    """Peak GiB by component (adapters fp32: weight 4 + grad 4 + AdamW moments 8 by default)."""
    from ltxdist.parallel.offload import offloaded_block_indices

    n = len(counts.block_base_bytes)
    offloaded = set(offloaded_block_indices(n, offload_blocks))
    resident = sum(b for i, b in enumerate(counts.block_base_bytes) if i not in offloaded)
    in_flight = sorted((counts.block_base_bytes[i] for i in offloaded), reverse=True)[:BLOCKS_IN_FLIGHT]
    if activation_checkpointing:
        activations = n * acts.block_input + (1 + BACKWARD_FACTOR) * acts.per_block
    else:
        activations = n * acts.per_block + BACKWARD_FACTOR * acts.per_block
    parts = {
        "base_resident": resident + counts.outer_base_bytes,
        "base_in_flight": sum(in_flight),
        "adapters_and_optimizer": counts.adapter_params * (8 + optimizer_bytes_per_param),
        "activations": activations + acts.outside_blocks,
        "upcast_weight": counts.largest_upcast_bytes,
    }
    out = {k: v / GIB for k, v in parts.items()}
    out["overhead"] = OVERHEAD_GIB
    out["total"] = sum(out.values())
    out["host_pinned"] = sum(counts.block_base_bytes[i] for i in offloaded) / GIB
    return out


def offload_needed(
    counts: ModelCounts, acts: ActivationCounts, cap_gib: float, *, optimizer_bytes_per_param: int = 8
) -> int | None:
    """The fewest offloaded blocks whose estimated peak fits under `cap_gib` (None: none fits)."""
    for count in range(len(counts.block_base_bytes) + 1):
        peak = peak_bytes(
            counts, acts, offload_blocks=count, optimizer_bytes_per_param=optimizer_bytes_per_param
        )
        if peak["total"] <= cap_gib:
            return count
    return None
