"""Full-size LTX-2.3 LoRA training step on one GPU: ltxdist vs the PEFT baseline (issue 8).

    python benchmarks/fullsize_bench.py              # the whole matrix on one H100/H200 (~25 min)
    python benchmarks/fullsize_bench.py --trimmed    # the subset that fits one ~8 min device call
    python benchmarks/fullsize_bench.py --preset tiny --device cpu --steps 1 --warmup 1 \\
        --standard-bucket 64x64x9 --ic-bucket 64x64x9 --text-tokens 8 --kernels-on-backend torch
                                                     # CPU check of this script (tests/kernels)

Model: the LTX-2.3 22B architecture (`ltx23_22b` preset) built on the meta device and filled with
random weights on the device. No checkpoint is ever read: speed does not depend on the values, and 44 GB
of random bytes from disk would only time the disk.

Matrix: workload {standard: 960x544x49 (3,570 video tokens) + joint audio; ic_lora: 768x448x121 target
+ a same-size reference (2 x 5,376 = 10,752 video tokens)} x LoRA rank {32, 128} on every attention
projection x trainer {ltxdist with kernels on (`model.kernels=triton`), auto (`auto`: per call shape the
path measured fastest, the default) and off (`torch`: ltx-core's own attention, LoRALinear's own
forward), PEFT baseline} x activation checkpointing {off, on (= full), attention (attention outputs
kept, the rest recomputed), every2 (every other block), budget (`parallel.memory_budget_gib`, from
--memory-budget-gib)}. Text context: 1,024 tokens.

ltxdist step: `LTXLoRAModule.compute_loss` (strategy, transformer, masked loss) + backward + grad-norm
clip + the optimizer `build_optimizer` makes from the optim config: the body of ltxdist's Lightning
training step without Lightning's loop (whose per-step overhead the CPU step benchmark measures).
PEFT step: `baseline_trainer.baseline_step` (ltx-core latent tools, PEFT adapters in float32 as
`get_peft_model` keeps them, plain loop body, torch AdamW defaults).

Timing: wall clock per step with the device synchronised at both ends; warm-up steps are untimed
(Triton compiles and autotunes there); median and p25/p75 of the timed steps. tokens/s: transformer
tokens per step (video incl. reference, and audio) / median step. MFU / HFU: model / hardware FLOPs of
the step (ltxdist.tracking.flops, same rank, so the same numerator for both trainers) per second over
the device's dense bf16 peak (HFU counts each mode's recompute). Peak memory:
`torch.cuda.max_memory_allocated` from the first warm-up step on, next to the activation memory model's
prediction (ltxdist/parallel/activation_memory.py; ltxdist rows). A variant that runs out of memory is
reported as OOM. Writes
benchmarks/results/fullsize_<hardware>_<date>.{json,md}. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from baseline_trainer import baseline_step, inject_peft, strip_peft  # benchmarks/ is on sys.path

from ltxdist.bench.report import summarize, write_results
from ltxdist.config.store import compose_train_config, register_configs
from ltxdist.data.collate import collate_samples
from ltxdist.data.sample import CachedSample
from ltxdist.data.synthetic import audio_latent_frames, latent_shape, parse_bucket
from ltxdist.lora import LoRASpec, inject_lora
from ltxdist.lora.inject import lora_modules
from ltxdist.lora.targets import resolve_target_modules
from ltxdist.models import build_meta_transformer
from ltxdist.models.presets import text_context_dims, transformer_config
from ltxdist.parallel.activation_checkpointing import (
    CheckpointingPolicy,
    apply_activation_checkpointing,
    block_recompute_flops,
    remove_activation_checkpointing,
)
from ltxdist.parallel.activation_memory import (
    one_block_template,
    predicted_peak_bytes,
    resident_bytes,
    to_gib,
    trace_block_memory,
)
from ltxdist.tracking.flops import FlopModel, peak_flops_per_device
from ltxdist.training.module import LTXLoRAModule
from ltxdist.training.optim import build_optimizer
from ltxdist_kernels.attention import patch_attention_modules, unpatch_attention_modules

COLUMNS = [
    "workload",
    "rank",
    "trainer",
    "ac",
    "status",
    "step_ms",
    "p25_p75_ms",
    "tokens_per_s",
    "mfu",
    "hfu",
    "peak_alloc_gib",
    "predicted_peak_gib",
]
FPS = 24.0


@dataclass(frozen=True)
class Workload:
    name: str
    strategy: str
    bucket: str
    reference: bool  # a same-size IC-LoRA reference video
    audio: bool  # joint audio


# -- model and data -----------------------------------------------------------------------------------
@torch.no_grad()
def random_weights_(model: torch.nn.Module, seed: int) -> None:
    """Fill every parameter in place on its device, at the scales of ltxdist.models.init (which draws on
    the CPU: minutes for 19B parameters)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if "scale_shift_table" in leaf:
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]), generator=gen)
        elif leaf == "weight" and p.ndim == 2:
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]), generator=gen)
        elif leaf == "weight":
            p.fill_(1.0)
        elif leaf == "bias":
            p.normal_(0.0, 0.02, generator=gen)
        else:
            raise ValueError(f"no random-init rule for {name} {tuple(p.shape)}")


def build_model(preset: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    model = build_meta_transformer(transformer_config(preset)).to(dtype)
    model.to_empty(device=device)
    random_weights_(model, seed=0)
    return model


def make_batch(work: Workload, config: dict, text_tokens: int, device: torch.device) -> dict[str, Any]:
    """One collated sample of the workload's shapes (random latents, all-ones text mask), on `device`."""
    gen = torch.Generator().manual_seed(1)
    dv, da = text_context_dims(config)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(torch.bfloat16)

    tensors = {
        "video_latents": randn(*latent_shape(work.bucket)),
        "video_context": randn(text_tokens, dv),
        "audio_context": randn(text_tokens, da),
        "context_mask": torch.ones(text_tokens, dtype=torch.bool),
    }
    meta: dict[str, Any] = {"id": f"{work.name}-0", "bucket": work.bucket, "fps": FPS, "caption": ""}
    if work.audio:
        tensors["audio_latents"] = randn(8, audio_latent_frames(parse_bucket(work.bucket)[2], FPS), 16)
    if work.reference:
        tensors["reference_video_latents"] = randn(*latent_shape(work.bucket))
        meta["reference_downscale_factor"] = 1
    batch = collate_samples([CachedSample(tensors, meta)])
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def step_tokens(batch: dict[str, Any]) -> dict[str, int]:
    """Tokens per sample of each role the transformer sees (see ltxdist.tracking.flops)."""
    _, _, f, h, w = batch["video_latents"].shape
    video = f * h * w
    if "reference_video_latents" in batch:
        _, _, fr, hr, wr = batch["reference_video_latents"].shape
        video += fr * hr * wr
    tokens = {"v": video, "vt": int(batch["video_context"].shape[1])}
    if "audio_latents" in batch:
        tokens.update(a=int(batch["audio_latents"].shape[2]), at=int(batch["audio_context"].shape[1]))
    return tokens


def strip_ltxdist_lora(model: torch.nn.Module) -> None:
    """Put plain Linear layers (the same base weight and bias, adapter dropped) back in place."""
    for name, module in lora_modules(model).items():
        has_bias = module.bias is not None
        linear = torch.nn.Linear(module.in_features, module.out_features, bias=has_bias, device="meta")
        linear.weight, linear.bias = module.weight, module.bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, linear)


# -- timing -------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    out: dict[str, Any] = summarize(times)
    if device.type == "cuda":
        out["peak_alloc_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def run_variant(
    step: Callable[[], Any], device: torch.device, args: argparse.Namespace, row: dict[str, Any]
) -> dict[str, Any]:
    try:
        timing = time_steps(step, device, args.warmup, args.steps)
    except torch.cuda.OutOfMemoryError:
        row["status"] = "OOM"
        return row
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row.update(
        status="ok",
        step_ms=timing["median_s"] * 1e3,
        p25_p75_ms=f"{timing['p25_s'] * 1e3:.1f}-{timing['p75_s'] * 1e3:.1f}",
        peak_alloc_gib=timing.get("peak_alloc_gib", ""),
        median_s=timing["median_s"],
    )
    return row


AC_MODES = ("off", "on", "attention", "every2", "budget")


def ac_policy(ac: str, args: argparse.Namespace) -> CheckpointingPolicy:
    """The benchmark's AC names as parallel.activation_checkpointing policies ('on' is full)."""
    if ac == "every2":
        return CheckpointingPolicy("every_k", every=2)
    if ac == "budget":
        return CheckpointingPolicy("budget", budget_gib=args.memory_budget_gib)
    return CheckpointingPolicy({"on": "full"}.get(ac, ac))


def block_counts(ac: str, blocks: int, model: torch.nn.Module) -> dict[str, int]:
    """Blocks per checkpointing mode of the variant that just ran (budget: what its planner chose)."""
    if ac == "budget":
        planner = model.__dict__.get("ltxdist_ac_planner")
        return dict(planner.last_counts) if planner is not None and planner.last_counts else {}
    if ac == "every2":
        return {"full": (blocks + 1) // 2, "off": blocks // 2}
    return {{"on": "full"}.get(ac, ac): blocks}


def add_rates(
    row: dict[str, Any],
    flops: FlopModel,
    tokens: dict[str, int],
    peak: float | None,
    recompute: dict[str, float] | None = None,
    counts: dict[str, int] | None = None,
) -> None:
    """tokens/s, MFU and HFU; HFU adds the forward FLOPs each block's checkpointing mode repeats."""
    if row["status"] != "ok":
        return
    t = row.pop("median_s")
    counted = flops.step(batch=1, tokens=tokens, activation_checkpointing=row["ac"] == "on")
    hardware = counted.hardware
    if recompute is not None and counts and row["ac"] != "on":
        hardware = counted.model + sum(n * recompute[mode] for mode, n in counts.items())
    row["tokens_per_s"] = (tokens["v"] + tokens.get("a", 0)) / t
    row["model_tflop_per_step"] = counted.model / 1e12
    row["mfu"] = counted.model / t / peak if peak else ""
    row["hfu"] = hardware / t / peak if peak else ""


# -- the two trainers ---------------------------------------------------------------------------------
def ltxdist_module(work: Workload, rank: int, dtype: str, model: torch.nn.Module) -> LTXLoRAModule:
    cfg = compose_train_config(
        [
            f"strategy={work.strategy}",
            f"strategy.with_audio={str(work.audio).lower()}",
            "strategy.first_frame_conditioning_p=0.0",  # as the baseline: every token noised
            f"model.dtype={dtype}",
            f"lora.rank={rank}",
            f"lora.alpha={rank}",
        ]
    )
    module = LTXLoRAModule(cfg)
    module.transformer = model
    return module


def make_ltxdist_step(module: LTXLoRAModule, batch: dict[str, Any]) -> Callable[[], None]:
    params = module.lora_parameters()
    opt = build_optimizer(params, module.cfg.optim)
    clip = module.cfg.trainer.gradient_clip_val

    def step() -> None:
        loss, _ = module.compute_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def make_peft_step(
    model: torch.nn.Module, batch: dict[str, Any], rank: int, targets: list[str], args: argparse.Namespace
) -> Callable[[], None]:
    adapter_dtype = None if args.peft_adapter_dtype == "base" else torch.float32
    params = inject_peft(model, rank, targets, adapter_dtype)
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    def step() -> None:
        baseline_step(model, params, opt, batch, gen, device=device, dtype=dtype, fps=FPS)

    return step


def bench_workload(
    work: Workload, model: torch.nn.Module, args: argparse.Namespace, device: torch.device
) -> list[dict[str, Any]]:
    config = transformer_config(args.preset)
    batch = make_batch(work, config, args.text_tokens, device)
    tokens = step_tokens(batch)
    peak = peak_flops_per_device(device)
    targets = resolve_target_modules(model, ["attn"])
    rows = []

    inputs: dict[str, Any] = {}  # the transformer's (video, audio, perturbations) of this workload

    def capture(module: torch.nn.Module, args_: tuple) -> None:
        inputs.setdefault("args", args_)

    def measure(
        step: Callable[[], None],
        trainer: str,
        rank: int,
        ac: str,
        flops: FlopModel,
        memory: dict | None = None,
    ) -> None:
        apply_activation_checkpointing(model, ac_policy(ac, args))
        hook = model.register_forward_pre_hook(capture)
        row = run_variant(
            step, device, args, {"workload": work.name, "rank": rank, "trainer": trainer, "ac": ac}
        )
        hook.remove()
        counts = block_counts(ac, len(model.transformer_blocks), model)
        recompute = None
        if memory is not None and "args" in inputs:
            video, audio, _ = inputs["args"]
            recompute = block_recompute_flops(memory["template"], video, audio)
            if counts:
                if "block" not in memory:
                    memory["block"] = trace_block_memory(memory["template"], *inputs["args"])
                predicted = predicted_peak_bytes(memory["block"], counts, memory["resident"])
                row["predicted_peak_gib"] = to_gib(predicted)
        row["ac_blocks"] = counts
        add_rates(row, flops, tokens, peak, recompute, counts)
        rows.append(row)
        print(row, flush=True)

    for rank in args.ranks:
        # ltxdist: its LoRA, its module's loss path, its optimizer; kernels and AC switched in place.
        inject_lora(model, LoRASpec(rank=rank, alpha=rank, targets=("attn",)))
        flops = FlopModel.from_model(model)  # the same count serves the PEFT rows: same rank, same targets
        memory = {"template": one_block_template(model), "resident": resident_bytes(model)}
        module = ltxdist_module(work, rank, args.dtype, model).to(device)
        module.train()
        step = make_ltxdist_step(module, batch)
        for kernels in args.kernels:
            unpatch_attention_modules(model)
            if kernels == "on":
                patch_attention_modules(model, args.kernels_on_backend)
            elif kernels == "auto":
                patch_attention_modules(model, "auto")
            for ac in args.ac:
                if args.selected(work.name, rank, f"ltxdist-k{kernels}", ac):
                    measure(step, f"ltxdist kernels {kernels}", rank, ac, flops, memory)
        unpatch_attention_modules(model)
        remove_activation_checkpointing(model)
        del module, step
        strip_ltxdist_lora(model)
        # The PEFT baseline on the same base weights and target modules.
        if "peft" in args.trainers and any(args.selected(work.name, rank, "peft", ac) for ac in args.ac):
            step = make_peft_step(model, batch, rank, targets, args)
            for ac in args.ac:
                if args.selected(work.name, rank, "peft", ac):
                    measure(step, "peft", rank, ac, flops)
            del step
            strip_peft(model)
        remove_activation_checkpointing(model)
    return rows


def ratio_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PEFT step time / ltxdist step time at the same workload, rank and activation checkpointing."""
    ok = {(r["workload"], r["rank"], r["trainer"], r["ac"]): r for r in rows if r["status"] == "ok"}
    out = []
    for (work, rank, trainer, ac), r in ok.items():
        base = ok.get((work, rank, "peft", ac))
        if trainer == "peft" or base is None:
            continue
        out.append(
            {
                "workload": work,
                "rank": rank,
                "ac": ac,
                "ltxdist": trainer,
                "speedup_vs_peft": base["step_ms"] / r["step_ms"],
                "peak_gib_ltxdist": r["peak_alloc_gib"],
                "peak_gib_peft": base["peak_alloc_gib"],
            }
        )
    return out


# -- command line -------------------------------------------------------------------------------------
# The trimmed run: one device call of ~4 minutes (benchmarks/gpu_check.sh). Each entry: workload, rank,
# trainer, activation checkpointing. Kernels auto (the default) against torch and PEFT at each workload's
# usual checkpointing, plus the selective / budget modes on auto. (The 2026-12-04 run used kernels on/off
# with AC off/on: its results file lists them.)
TRIMMED = {
    ("standard", 32, "ltxdist-kauto", "off"),
    ("standard", 32, "ltxdist-koff", "off"),
    ("standard", 32, "peft", "off"),
    ("standard", 32, "ltxdist-kauto", "attention"),
    ("standard", 32, "ltxdist-kauto", "budget"),
    ("ic_lora", 128, "ltxdist-kauto", "on"),
    ("ic_lora", 128, "ltxdist-koff", "on"),
    ("ic_lora", 128, "peft", "on"),
    ("ic_lora", 128, "ltxdist-kauto", "attention"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ltx23_22b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--workloads", nargs="+", default=["standard", "ic_lora"], choices=["standard", "ic_lora"])
    p.add_argument("--standard-bucket", default="960x544x49")
    p.add_argument("--ic-bucket", default="768x448x121")
    p.add_argument("--text-tokens", type=int, default=1024)
    p.add_argument("--ranks", type=int, nargs="+", default=[32, 128])
    p.add_argument("--kernels", nargs="+", default=["auto", "on", "off"], choices=["auto", "on", "off"])
    p.add_argument(
        "--kernels-on-backend",
        default="triton",
        choices=["triton", "torch"],
        help="backend of the kernels-on variant (torch: runs the patched module on CPU, for tests)",
    )
    p.add_argument("--ac", nargs="+", default=["off", "on"], choices=list(AC_MODES))
    p.add_argument("--memory-budget-gib", type=float, default=80.0, help="for --ac budget (H100: 80)")
    p.add_argument("--trainers", nargs="+", default=["ltxdist", "peft"], choices=["ltxdist", "peft"])
    p.add_argument("--peft-adapter-dtype", default="float32", choices=["float32", "base"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--trimmed", action="store_true", help="the subset of TRIMMED, warm-up 2, 5 steps")
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results")
    args = p.parse_args(argv)
    if args.trimmed:
        args.warmup, args.steps = 2, 5
    if torch.device(args.device).type != "cuda" and args.preset == "ltx23_22b":
        p.error("the 22B preset needs a CUDA device; use --preset tiny (or small) on CPU")

    def selected(workload: str, rank: int, trainer: str, ac: str) -> bool:
        if trainer.startswith("ltxdist") and "ltxdist" not in args.trainers:
            return False
        return not args.trimmed or (workload, rank, trainer, ac) in TRIMMED

    args.selected = selected
    if args.trimmed:
        args.ranks = sorted({r for _, r, _, _ in TRIMMED})
        args.kernels = sorted({t.removeprefix("ltxdist-k") for _, _, t, _ in TRIMMED if t != "peft"})
        args.ac = [a for a in AC_MODES if any(a == ac for _, _, _, ac in TRIMMED)]
    return args


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    args = parse_args(argv)
    device = torch.device(args.device)
    register_configs()
    torch.manual_seed(0)
    started = time.time()
    model = build_model(args.preset, device, getattr(torch, args.dtype))
    model.train()
    build_s = time.time() - started
    workloads = {
        "standard": Workload("standard", "standard", args.standard_bucket, reference=False, audio=True),
        "ic_lora": Workload("ic_lora", "video_to_video", args.ic_bucket, reference=True, audio=False),
    }
    notes = (
        f"{args.preset} with random weights ({args.dtype}), built and filled on {device} in {build_s:.0f} s; "
        f"batch 1, {args.text_tokens} text tokens, LoRA on every attention projection (alpha = rank); "
        f"median of {args.steps} steps after {args.warmup} warm-up steps. Method: docstring of "
        "benchmarks/fullsize_bench.py. Targets: MFU >= 45% (IC-LoRA) / 35% (standard); ltxdist >= 1.8x / "
        "1.5x the PEFT baseline's throughput; <= 80 GiB (issues 8, 21)."
    )
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "selected"}
    ratio_columns = ["workload", "rank", "ac", "ltxdist", "speedup_vs_peft", "peak_gib_ltxdist"]
    ratio_columns.append("peak_gib_peft")
    rows: list[dict[str, Any]] = []
    paths: tuple[Path, Path] | None = None
    for name in args.workloads:
        rows += bench_workload(workloads[name], model, args, device)
        # Written after every workload: a device call that runs out of time keeps what it measured.
        paths = write_results(
            "fullsize",
            rows,
            COLUMNS,
            config,
            notes=notes,
            out_dir=args.out_dir,
            tables={
                "ltxdist vs PEFT (step time ratio, > 1: ltxdist faster)": (ratio_rows(rows), ratio_columns)
            },
        )
    assert paths is not None, "no workload selected"
    return paths


if __name__ == "__main__":
    main()
