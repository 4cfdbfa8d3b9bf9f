"""Sequence-parallel benchmark (issue 10): time and peak memory of one training step per rank against the
number of tokens, without and with Ulysses sequence parallelism (P = 2, 4, 8), on the full-size LTX-2.3
architecture with random weights; and from that, the largest clip each layout fits per GPU.

One GPU stands for ONE rank of a sequence-parallel group of P: the two exchanges of
ltxdist/parallel/sequence_parallel.py (all-to-all, gather) are replaced by shape-preserving local copies,
so the rank computes exactly the shapes a real group's rank computes (1/P of the tokens for everything
per token, whole sequences with H/P heads in attention) and holds the same activations. Not measured:
the exchange time itself (modelled in benchmarks/SCALING.md) and the values (an emulated rank's outputs
are not meaningful; the numerics are checked by tests/parallel/test_sequence_parallel.py on 2 real
processes).

Memory per rank of an 8-GPU node = measured activation peak (peak allocated minus the weights this
single process holds) + the frozen base's FSDP2 share (weights / 8) + the adapters and their AdamW state.

  python benchmarks/sequence_parallel_bench.py                       # GPU: 22B, up to 1080p x 121 (+ IC)
  python benchmarks/sequence_parallel_bench.py --preset tiny --device cpu --clips 64x64x9 --steps 1
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch

from ltxdist._ltx_core import BatchedPerturbationConfig, Modality
from ltxdist.bench.report import summarize, write_results
from ltxdist.data.synthetic import parse_bucket
from ltxdist.lora import LoRASpec, inject_lora, lora_parameters
from ltxdist.models import build_meta_transformer
from ltxdist.models.presets import transformer_config
from ltxdist.parallel import sequence_parallel as sp_mod
from ltxdist.parallel.sequence_parallel import (
    SequenceParallelGroup,
    install_sequence_parallel,
    sequence_parallel_forward,
)
from ltxdist.strategies.attention_masks import set_attention_masks
from ltxdist.strategies.base import StrategyOutput
from ltxdist.strategies.positions import audio_positions, video_positions
from ltxdist_kernels.attention import patch_attention_modules

AUDIO_LATENTS_PER_SECOND = 25
TEXT_TOKENS = 1024  # Gemma prompts are padded to 1024 tokens
_GIB = 2**30


def emulate_one_rank() -> None:
    """Replace the exchanges with local copies of the same shapes (see the module docstring)."""
    sp_mod._all_to_all_dim0 = lambda x, group: x.contiguous().clone()
    sp_mod.gather_tokens = lambda x, sp, tokens: x.repeat(1, sp.size, 1)[:, :tokens]


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    model = build_meta_transformer(transformer_config(args.preset)).to(dtype)
    inject_lora(
        model, LoRASpec(rank=args.rank, alpha=args.rank, targets=tuple(args.targets), dtype=torch.float32)
    )
    if args.kernels != "torch" and device.type == "cuda":
        patch_attention_modules(model, backend="triton")
    model = model.to_empty(device=device)
    with torch.no_grad():  # random weights on the device (generating 19B values on the host takes minutes)
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
            elif "scale_shift_table" in name:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]))
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
    model.set_gradient_checkpointing(args.checkpointing)
    return model.train()


def clip_inputs(
    model: torch.nn.Module, clip: str, ic: bool, device: torch.device, dtype: torch.dtype
) -> StrategyOutput:
    """Model inputs of one clip (batch 1): video tokens (doubled by an IC reference), its audio, text."""
    w, h, f = parse_bucket(clip)
    lat = torch.zeros(1, 128, 1 + (f - 1) // 8, h // 32, w // 32, device=device)
    fps = torch.tensor([24.0])
    positions = video_positions(lat, fps, dtype)
    if ic:  # the reference at full resolution on its own grid: the sequence doubles
        positions = torch.cat([positions.float(), video_positions(lat, fps, torch.float32)], dim=2)
    t_video = positions.shape[2]
    t_audio = max(1, round(f / 24 * AUDIO_LATENTS_PER_SECOND))
    a_pos = audio_positions(torch.zeros(1, 8, t_audio, 16, device=device))
    cross_v = model.transformer_blocks[0].attn2.to_k.in_features
    cross_a = model.transformer_blocks[0].audio_attn2.to_k.in_features
    sigma = torch.full((1,), 0.5, device=device)

    def modality(tokens: int, pos: torch.Tensor, context_dim: int) -> Modality:
        return Modality(
            latent=torch.randn(1, tokens, 128, device=device, dtype=dtype),
            sigma=sigma,
            timesteps=sigma.view(1, 1),
            positions=pos.to(device),
            context=torch.randn(1, TEXT_TOKENS, context_dim, device=device, dtype=dtype),
        )

    return StrategyOutput(
        video=modality(t_video, positions, cross_v),
        audio=modality(t_audio, a_pos, cross_a),
        video_targets=None,
        audio_targets=None,
    )


def step_fn(
    model: torch.nn.Module, out: StrategyOutput, sp: SequenceParallelGroup, size: int, device: torch.device
):
    pert = BatchedPerturbationConfig.empty(1)

    def step() -> None:
        sp.size = size
        if size == 1:
            sp.active = False
            set_attention_masks(model)  # clear the padding masks an emulated group left behind
            vx, ax = model(out.video, out.audio, pert)
        else:
            vx, ax = sequence_parallel_forward(model, out, sp, pert)
        (vx.float().pow(2).mean() + ax.float().pow(2).mean()).backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # timing: wait for the step's kernels

    return step


def measure(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    emulate_one_rank()
    model = build_model(args, device, dtype)
    # One emulated rank (rank 0) whose group size changes per measurement.
    sp = SequenceParallelGroup(group=None, size=max(args.sp_sizes), rank=0)
    install_sequence_parallel(model, sp)
    adapters = lora_parameters(model)
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    adapter_bytes = sum(p.numel() for p in adapters) * 4 * 4  # fp32 weights + grads + 2 AdamW moments
    held_bytes = base_bytes + sum(p.numel() * p.element_size() for p in adapters)
    rows: list[dict[str, Any]] = []
    too_big: set[int] = set()
    for clip in args.clips:
        for size in args.sp_sizes:
            out = clip_inputs(model, clip, args.ic, device, dtype)
            tokens = out.video.latent.shape[1] + out.audio.latent.shape[1]
            row: dict[str, Any] = {
                "clip": clip + (" +IC ref" if args.ic else ""),
                "sp": size,
                "tokens": tokens,
            }
            row["tokens_per_rank"] = math.ceil(out.video.latent.shape[1] / size) + math.ceil(
                out.audio.latent.shape[1] / size
            )
            if size in too_big:  # a smaller clip already ran out of memory at this P
                rows.append({**row, "status": "OOM (smaller clip did)"})
                continue
            step = step_fn(model, out, sp, size, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                for _ in range(args.warmup):
                    step()
                times = []
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t0)
            except torch.cuda.OutOfMemoryError:
                too_big.add(size)
                rows.append({**row, "status": "OOM"})
                del out, step
                torch.cuda.empty_cache()
                continue
            stats = summarize(times)
            row.update(
                status="ok", step_s=stats["median_s"], step_p25_s=stats["p25_s"], step_p75_s=stats["p75_s"]
            )
            row["tokens_per_s_per_rank"] = tokens / size / stats["median_s"]
            if device.type == "cuda":
                activations = torch.cuda.max_memory_allocated(device) - held_bytes
                row["activation_peak_gib"] = activations / _GIB
                row["rank_memory_gib_fsdp8"] = (
                    activations + base_bytes / args.fsdp_world + adapter_bytes
                ) / _GIB
                row["fits_budget"] = row["rank_memory_gib_fsdp8"] <= args.budget_gib
            rows.append(row)
            print(row, flush=True)
    largest = []
    for size in args.sp_sizes:
        fitting = [r for r in rows if r["sp"] == size and r.get("fits_budget")]
        best = max(fitting, key=lambda r: r["tokens"], default=None)
        largest.append(
            {
                "sp": size,
                "largest_clip_that_fits": best["clip"] if best else "none measured",
                "tokens": best["tokens"] if best else 0,
            }
        )
    return rows, largest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ltx23_22b", help="transformer preset (ltx23_22b, tiny, ...)")
    p.add_argument(
        "--clips", default="960x544x49;768x448x121;1280x704x121;1920x1088x121", help="';'-separated WxHxF"
    )
    p.add_argument(
        "--ic", action="store_true", help="add an IC reference of the clip's size (doubles the video tokens)"
    )
    p.add_argument("--sp-sizes", default="1,2,4,8", help="sequence-parallel group sizes to emulate")
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--targets", nargs="+", default=["attn"])
    p.add_argument("--kernels", choices=("triton", "torch"), default="triton")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None, help="default: bf16 on GPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--fsdp-world", type=int, default=8, help="GPUs the frozen base is sharded over")
    p.add_argument("--budget-gib", type=float, default=80.0, help="memory per GPU (H100: 80)")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    args.clips = [c for c in args.clips.split(";") if c]
    args.sp_sizes = [int(s) for s in args.sp_sizes.split(",")]
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows, largest = measure(args)
    config = {k: v for k, v in vars(args).items() if k != "out_dir"}
    columns = ["clip", "sp", "tokens", "tokens_per_rank", "status", "step_s", "tokens_per_s_per_rank"]
    if args.device.startswith("cuda"):
        columns += ["activation_peak_gib", "rank_memory_gib_fsdp8", "fits_budget"]
    write_results(
        "sequence_parallel",
        rows,
        columns,
        config,
        notes=(
            "One process emulates one rank of a sequence-parallel group (exchanges replaced by local copies "
            "of the same shapes: compute and activations are a real rank's, communication time is not "
            f"included). rank_memory_gib_fsdp8 = activations + base/{args.fsdp_world} + adapters with AdamW."
        ),
        out_dir=args.out_dir,
        tables={
            "Largest clip per GPU within the budget": (largest, ["sp", "largest_clip_that_fits", "tokens"])
        },
    )


if __name__ == "__main__":
    main()
