"""Peak memory of LoRA training on the LTX-2.3 22B architecture per base precision and block swap (issue 16).

    python benchmarks/low_vram_bench.py                 # analytic model, CPU, ~2 min: the committed results
    python benchmarks/low_vram_bench.py --gpu --buckets 960x544x49 --ranks 32 --caps 0 24 32
                                                        # measured on one GPU (H100/H200: ~8 min)
    python benchmarks/low_vram_bench.py --gpu --preset tiny --device cpu --steps 1 --warmup 0 \\
        --buckets 64x64x9 --text-tokens 8               # CPU check of the GPU mode's code path

Analytic (ltxdist/bench/memory_model.py): weights and adapters counted exactly from the model on the
meta device, activations from the project's activation model (ltxdist/parallel/activation_memory.py,
within 3% of the H200 peaks of 2026-12-04) at 960x544x49 and 768x448x121 (rank 32 and 128 on every
attention, activation checkpointing on), plus the stated margins (caching allocator, CUDA context); per
precision (bf16 / fp8 / int8) and number of swapped blocks, and the fewest swapped blocks that fit a
24 GiB and a 32 GiB card. Writes benchmarks/results/low_vram_model_<hw>_<date>.*.

GPU: the full-size architecture with random weights (no checkpoint is read), built the way training
builds it (meta device, LoRA on every attention, 8-bit plan, host-resident swapped blocks, activation
checkpointing), variants bf16 / fp8 / fp8 + block swap (and fp8 matmuls on Hopper), each under a 24 GiB
and a 32 GiB cap (`torch.cuda.set_per_process_memory_fraction`): peak allocated memory, median step
time (compute_loss + backward + AdamW), or OOM. Writes benchmarks/results/low_vram_<hw>_<date>.*.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from typing import Any

import torch

from ltxdist.bench.memory_model import (
    GIB,
    Workload,
    activation_counts,
    model_counts,
    offload_needed,
    peak_bytes,
)
from ltxdist.bench.report import summarize, write_results

MODEL_COLUMNS = [
    "bucket",
    "rank",
    "precision",
    "offload_blocks",
    "base_resident",
    "base_in_flight",
    "adapters_and_optimizer",
    "activations_or_grads",
    "allocated",
    "total",
    "host_pinned",
]
GPU_COLUMNS = ["bucket", "rank", "variant", "cap_gib", "status", "step_ms", "p25_p75_ms", "peak_alloc_gib"]


def analytic(args: argparse.Namespace) -> None:
    rows, fits = [], []
    for bucket in args.buckets:
        for rank in args.ranks:
            acts = activation_counts(args.preset, Workload(bucket, text_tokens=args.text_tokens), rank=rank)
            for precision in ("bf16", "fp8", "int8"):
                counts = model_counts(args.preset, rank=rank, targets=("attn",), precision=precision)
                n = len(counts.block_base_bytes)
                for offload in sorted({0, n // 3, n // 2, n}):
                    peak = peak_bytes(counts, acts, offload_blocks=offload)
                    rows.append(
                        {
                            "bucket": bucket,
                            "rank": rank,
                            "precision": precision,
                            "offload_blocks": offload,
                            **{k: round(v, 2) for k, v in peak.items()},
                        }
                    )
                fits.append(
                    {
                        "bucket": bucket,
                        "rank": rank,
                        "precision": precision,
                        "video_tokens": acts.video_tokens,
                        "audio_tokens": acts.audio_tokens,
                        "block_activations_gib": round(acts.block.saved_off / GIB, 3),
                        "offload_for_24gib": offload_needed(counts, acts, 24.0),
                        "offload_for_32gib": offload_needed(counts, acts, 32.0),
                    }
                )
    write_results(
        "low_vram_model",
        rows,
        MODEL_COLUMNS,
        config=vars(args),
        notes=(
            "Analytic peak GPU memory (GiB) of one LoRA step with activation checkpointing, computed on the "
            "CPU from the meta-device model (ltxdist/bench/memory_model.py, activations from "
            "ltxdist/parallel/activation_memory.py): not measured on a GPU. LoRA on every attention "
            "(lora.targets=attn), fp32 adapters with AdamW. offload_blocks = model.offload_blocks (block "
            "swap; host_pinned = host memory it needs). allocated = the sum of the parts (what "
            "max_memory_allocated reports); total = allocated x 1.05 (caching allocator) + 0.5 GiB CUDA "
            "context: what a card needs. Second table: fewest swapped blocks whose total fits each card "
            "(None: none fits)."
        ),
        out_dir=args.out_dir,
        tables={
            "Blocks to swap per card": (
                fits,
                [
                    "bucket",
                    "rank",
                    "precision",
                    "video_tokens",
                    "audio_tokens",
                    "block_activations_gib",
                    "offload_for_24gib",
                    "offload_for_32gib",
                ],
            )
        },
    )


# -- GPU mode -----------------------------------------------------------------------------------------
@torch.no_grad()
def _random_weights_(model: torch.nn.Module, device: torch.device, seed: int) -> None:
    """Random frozen weights at init scales, drawn on `device` (8-bit layers quantized from a bf16 draw;
    host-resident ones copied to their host tensor)."""
    from ltxdist.quant.formats import is_quantized_dtype, precision_of_dtype, quantize_weight

    gen = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                continue  # LoRA adapters: reset below
            if p.ndim == 2 and name == "weight":
                w = torch.randn(p.shape, generator=gen, device=device) / math.sqrt(p.shape[1])
                if is_quantized_dtype(p.dtype):
                    qdata, scale = quantize_weight(w, precision_of_dtype(p.dtype))
                    p.copy_(qdata)
                    module.weight_scale.copy_(scale)
                    continue
            elif "scale_shift_table" in name:
                w = torch.randn(p.shape, generator=gen, device=device) / math.sqrt(p.shape[-1])
            elif name == "weight":
                w = torch.ones(p.shape, device=device)
            else:
                w = torch.randn(p.shape, generator=gen, device=device) * 0.02
            p.copy_(w)


def _build(args: argparse.Namespace, device: torch.device, rank: int, variant: dict[str, Any]):
    from ltxdist.lora import LoRASpec, inject_lora
    from ltxdist.lora.inject import reset_lora
    from ltxdist.models import build_meta_transformer
    from ltxdist.models.presets import transformer_config
    from ltxdist.parallel.offload import (
        install_block_offload,
        offloaded_parameter_names,
        to_empty_with_host_blocks,
    )
    from ltxdist.quant.modules import LayerFormat, default_quantized_layers, quantize_meta_linears

    model = build_meta_transformer(transformer_config(args.preset)).to(torch.bfloat16)
    inject_lora(model, LoRASpec(rank=rank, alpha=rank, targets=("attn",), dtype=torch.float32))
    if variant["precision"] != "bf16":
        formats = {
            n: LayerFormat(variant["precision"], per_row=True) for n in default_quantized_layers(model)
        }
        quantize_meta_linears(model, formats, fp8_matmul=variant.get("fp8_matmul", False))
    model.set_gradient_checkpointing(True)
    offload = variant.get("offload", 0)
    to_empty_with_host_blocks(model, device, offloaded_parameter_names(model, offload) if offload else set())
    _random_weights_(model, device, seed=0)
    reset_lora(model, 0)
    offloader = install_block_offload(model, offload, device)
    return model, offloader


def _step_fn(args: argparse.Namespace, model: torch.nn.Module, rank: int, bucket: str, device: torch.device):
    from ltxdist.config.store import compose_train_config, register_configs
    from ltxdist.data.collate import collate_samples
    from ltxdist.data.sample import CachedSample
    from ltxdist.data.synthetic import audio_latent_frames, latent_shape, parse_bucket
    from ltxdist.models.presets import text_context_dims, transformer_config
    from ltxdist.training.module import LTXLoRAModule
    from ltxdist.training.optim import build_optimizer

    register_configs()
    cfg = compose_train_config(
        ["strategy.first_frame_conditioning_p=0.0", "model.dtype=bfloat16", f"lora.rank={rank}"]
    )
    module = LTXLoRAModule(cfg)
    module.transformer = model
    model.train()
    dv, da = text_context_dims(transformer_config(args.preset))
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "video_latents": torch.randn(*latent_shape(bucket), generator=gen).bfloat16(),
        "video_context": torch.randn(args.text_tokens, dv, generator=gen).bfloat16(),
        "audio_context": torch.randn(args.text_tokens, da, generator=gen).bfloat16(),
        "context_mask": torch.ones(args.text_tokens, dtype=torch.bool),
        "audio_latents": torch.randn(8, audio_latent_frames(parse_bucket(bucket)[2], 24.0), 16).bfloat16(),
    }
    batch = collate_samples(
        [CachedSample(tensors, {"id": "b", "bucket": bucket, "fps": 24.0, "caption": ""})]
    )
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    params = module.lora_parameters()
    opt = build_optimizer(params, cfg.optim)

    def step() -> None:
        loss, _ = module.compute_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def gpu(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    rows = []
    variants = [
        {"name": "bf16", "precision": "bf16"},
        {"name": "fp8", "precision": "fp8"},
        {"name": f"fp8+offload{args.offload}", "precision": "fp8", "offload": args.offload},
    ]
    if device.type == "cpu" or torch.cuda.get_device_capability(device)[0] >= 9:
        variants.append({"name": "fp8_matmul", "precision": "fp8", "fp8_matmul": True})
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    for bucket in args.buckets:
        for rank in args.ranks:
            for variant in variants:
                for cap in args.caps:
                    row: dict[str, Any] = {
                        "bucket": bucket,
                        "rank": rank,
                        "variant": variant["name"],
                        "cap_gib": cap,
                    }
                    model = offloader = None
                    try:
                        if total is not None:
                            fraction = 1.0 if cap <= 0 else min(1.0, cap * GIB / total)  # 0: no cap
                            torch.cuda.set_per_process_memory_fraction(fraction, device)
                            torch.cuda.reset_peak_memory_stats(device)
                        model, offloader = _build(args, device, rank, variant)
                        step = _step_fn(args, model, rank, bucket, device)
                        for _ in range(args.warmup):
                            step()
                        times = []
                        for _ in range(args.steps):
                            start = time.perf_counter()
                            step()
                            times.append(time.perf_counter() - start)
                        s = summarize(times)
                        row.update(
                            status="ok",
                            step_ms=round(1000 * s["median_s"], 1),
                            p25_p75_ms=f"{1000 * s['p25_s']:.0f}-{1000 * s['p75_s']:.0f}",
                        )
                    except torch.OutOfMemoryError:
                        row.update(status="OOM")
                    finally:
                        if device.type == "cuda":
                            row["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
                        del model, offloader
                        gc.collect()
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    rows.append(row)
                    print(row, flush=True)
            # Written after every bucket and rank: a device call that runs out of time keeps what it measured.
            write_results(
                "low_vram",
                rows,
                GPU_COLUMNS,
                config=vars(args),
                notes=(
                    "LTX-2.3 22B architecture, random weights, one sample, LoRA on every attention, "
                    "activation checkpointing; memory cap emulated with torch.cuda.set_per_process_memory_"
                    "fraction (the CUDA context is outside it). step = compute_loss + backward + AdamW step."
                ),
                out_dir=args.out_dir,
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="measure on a device instead of the analytic model")
    p.add_argument("--preset", default="ltx23_22b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--buckets", nargs="+", default=["960x544x49", "768x448x121"])
    p.add_argument("--ranks", type=int, nargs="+", default=[32, 128])
    p.add_argument("--text-tokens", type=int, default=1024)
    p.add_argument("--caps", type=float, nargs="+", default=[24.0, 32.0], help="GPU mode: memory caps (GiB)")
    p.add_argument(
        "--offload", type=int, default=16, help="GPU mode: swapped blocks of the fp8+offload variant"
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out-dir", type=lambda s: __import__("pathlib").Path(s), default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    gpu(args) if args.gpu else analytic(args)


if __name__ == "__main__":
    main()
