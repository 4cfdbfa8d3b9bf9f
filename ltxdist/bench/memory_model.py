"""Analytic peak GPU memory of one LoRA training step, per base precision and block-swap setting.

Nothing here is measured on a GPU. Weights and adapters are counted exactly from the model built on the
meta device (the same build, LoRA injection and 8-bit plan as training). Activations come from
`ltxdist.parallel.activation_memory`, the one activation model of the project (the training budget
planner's; it predicted the H200 peaks of 2026-12-04 within 3%): one block traced on the meta device at
the real token counts, per checkpointing mode, plus the layers outside the blocks and what one block's
backward holds.

Peak = resident base weights + blocks in flight (block swap) + adapters and AdamW moments + the larger
of the blocks' saved activations and the adapters' gradients (backward frees one as it fills the other)
+ outside + backward transient + the largest up-cast weight (8-bit base): the allocated peak. A card
needs that x ALLOCATOR_OVERHEAD (caching allocator) + CUDA_CONTEXT_GIB (outside the allocator, so not
limited by `torch.cuda.set_per_process_memory_fraction`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ltxdist.parallel.activation_memory import (
    ALLOCATOR_OVERHEAD,
    BlockMemory,
    predicted_peak_bytes,
    trace_block_memory,
)

GIB = 2**30
# CUDA context and cuBLAS / cuDNN workspaces, outside the allocator (torch 2.x with lazy module loading).
CUDA_CONTEXT_GIB = 0.5


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


def _meta_inputs(workload: Workload, config: dict[str, Any]):
    """The model's (video, audio) inputs for one sample of `workload`, as the standard strategy prepares
    them, on the meta device."""
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
        moved = {
            f.name: getattr(modality, f.name).to("meta")
            for f in dataclasses.fields(modality)
            if isinstance(getattr(modality, f.name), torch.Tensor)
        }
        return dataclasses.replace(modality, **moved)

    return to_meta(out.video), to_meta(out.audio)


@dataclass(frozen=True)
class ActivationCounts:
    block: BlockMemory  # one block per checkpointing mode, the layers outside the blocks, backward transient
    video_tokens: int
    audio_tokens: int


def activation_counts(
    preset: str, workload: Workload, *, rank: int, targets: tuple[str, ...] = ("attn",)
) -> ActivationCounts:
    """Activations of one step at `workload`, traced by ltxdist.parallel.activation_memory (the model the
    training budget planner uses, checked against the H200 peaks) on a one-block bf16 copy of the model.
    The base precision does not change them: 8-bit layers save the same bf16 inputs for backward."""
    from ltxdist._ltx_core import BatchedPerturbationConfig
    from ltxdist.data.synthetic import audio_latent_frames, latent_shape, parse_bucket

    model, config = _meta_model(preset, num_layers=1, rank=rank, targets=targets, precision="bf16")
    video, audio = _meta_inputs(workload, config)
    block = trace_block_memory(model, video, audio, BatchedPerturbationConfig.empty(1))
    _, f, h, w = latent_shape(workload.bucket)
    audio_tokens = audio_latent_frames(parse_bucket(workload.bucket)[2], workload.fps)
    return ActivationCounts(block, f * h * w, audio_tokens)


def peak_bytes(
    counts: ModelCounts,
    acts: ActivationCounts,
    *,
    offload_blocks: int,
    checkpointing: str = "full",
    optimizer_bytes_per_param: int = 8,
) -> dict[str, float]:
    """Peak GiB by component; `allocated` is what `torch.cuda.max_memory_allocated` would report (the sum
    of the parts), `total` what the card needs: allocated x ALLOCATOR_OVERHEAD + the CUDA context.
    Adapters are fp32 with AdamW (4 bytes + `optimizer_bytes_per_param`); their gradients (4 bytes) replace
    the saved activations during backward. `checkpointing`: the mode of every block but the offloaded
    ones, which training always recomputes fully (Planner.require_recompute); `off` with offloaded blocks
    is refused there too (config/schema.py)."""
    from ltxdist.parallel.offload import BLOCKS_IN_FLIGHT, offloaded_block_indices

    if offload_blocks > 0 and checkpointing == "off":
        raise ValueError(
            "offloaded blocks must be recomputed in backward: no peak for checkpointing='off' with "
            f"offload_blocks={offload_blocks} (training refuses that configuration)"
        )
    n = len(counts.block_base_bytes)
    offloaded = set(offloaded_block_indices(n, offload_blocks))
    resident = sum(b for i, b in enumerate(counts.block_base_bytes) if i not in offloaded)
    in_flight = sorted((counts.block_base_bytes[i] for i in offloaded), reverse=True)[:BLOCKS_IN_FLIGHT]
    # Activations or the adapters' fp32 gradients, whichever backward holds more of (predicted_peak_bytes
    # with nothing resident), plus the layers outside the blocks and one block's backward.
    modes = {checkpointing: n - len(offloaded)}
    modes["full"] = modes.get("full", 0) + len(offloaded)
    activations = predicted_peak_bytes(acts.block, modes, 0, counts.adapter_params * 4)
    parts = {
        "base_resident": resident + counts.outer_base_bytes,
        "base_in_flight": sum(in_flight),
        "adapters_and_optimizer": counts.adapter_params * (4 + optimizer_bytes_per_param),
        "activations_or_grads": activations,
        "upcast_weight": counts.largest_upcast_bytes,
    }
    out = {k: v / GIB for k, v in parts.items()}
    out["allocated"] = sum(parts.values()) / GIB
    out["total"] = out["allocated"] * ALLOCATOR_OVERHEAD + CUDA_CONTEXT_GIB
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
