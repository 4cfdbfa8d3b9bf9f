"""Per-block torch.compile of the LTX-2.3 transformer: compile time, graphs, recompiles, step time (issue 21).

    python benchmarks/compile_bench.py                          # GPU: 2 full-size blocks, 10,752 tokens
    python benchmarks/compile_bench.py --preset tiny --device cpu --tokens 12 16 --dtype float32 \\
        --backend eager                                         # CPU: dynamo only (graphs, recompiles)

A few blocks of the chosen preset with LoRA r128 on every attention (random weights), a training step
(forward + backward to the adapters) per call. Variants:
  eager            no compile
  compiled         `ltxdist.parallel.compile.apply_compile` (ltxdist's attention function + per-block
                   Module.compile)
  compiled-ltx-fn  per-block compile keeping ltx-core's own AttentionFunction (shows its recompile)
Per variant: seconds of the first step (compilation included), steady step time (median), graphs
compiled after step 1, after step 2 (same shape, new tensors) and after the steps at the other token
counts, graph breaks. `--backend eager` stops after dynamo (no inductor code generation): what CPU time
allows. Writes benchmarks/results/compile_<hardware>_<date>.{json,md}. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters

from ltxdist._ltx_core import BatchedPerturbationConfig, LTXModelConfigurator, Modality
from ltxdist.bench.report import write_results
from ltxdist.lora import LoRASpec, inject_lora, lora_parameters
from ltxdist.models.init import init_transformer_weights
from ltxdist.models.presets import text_context_dims, transformer_config
from ltxdist.parallel.compile import apply_compile

COLUMNS = [
    "variant",
    "backend",
    "first_step_s",
    "step_ms",
    "graphs_after_step1",
    "graphs_after_step2",
    "graphs_total",
    "graph_breaks",
    "status",
]


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    config = transformer_config(args.preset, num_layers=args.blocks)
    with torch.device("meta"):
        model = LTXModelConfigurator.from_config(config)
    model.to_empty(device="cpu")
    if args.preset == "tiny":
        init_transformer_weights(model, torch.Generator().manual_seed(0))
    else:  # values do not change compile or step time: a fast fill (a CPU init of 22B takes minutes)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02)
    inject_lora(model, LoRASpec(rank=args.rank, alpha=args.rank, targets=("attn",)))
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0.0, 0.02)
    return model.to(device, dtype).train()


def inputs(config: dict, tokens: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(tokens)
    dv, da = text_context_dims(config)

    def modality(t: int, axes: int, ctx: int) -> Modality:
        sigma = torch.rand(1, generator=gen)
        return Modality(
            latent=torch.randn(1, t, 128, generator=gen).to(device, dtype),
            sigma=sigma.to(device),
            timesteps=sigma[:, None].to(device),
            positions=(torch.rand(1, axes, t, 2, generator=gen) * 16).to(device),
            context=torch.randn(1, args.text_tokens, ctx, generator=gen).to(device, dtype),
        )

    return modality(tokens, 3, dv), modality(args.audio_tokens, 1, da)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(
    name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    import torch._dynamo

    torch._dynamo.reset()
    counters.clear()
    model = build(args, device, dtype)
    graphs: list[int] = []
    if name != "eager":
        from torch._dynamo.backends.registry import lookup_backend

        inner = lookup_backend(args.backend)

        def counting(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
            graphs.append(len(gm.graph.nodes))
            return inner(gm, example_inputs)

        if name == "compiled":
            apply_compile(model, backend=counting)
        else:  # ltx-core's own attention function left in place
            for block in model.transformer_blocks:
                block.compile(backend=counting)
    config = transformer_config(args.preset, num_layers=args.blocks)
    perturbations = BatchedPerturbationConfig.empty(1)

    def step(tokens: int) -> float:
        video, audio = inputs(config, tokens, args, device, dtype)
        sync(device)
        start = time.perf_counter()
        vx, ax = model(video, audio, perturbations)
        (vx.float().square().mean() + ax.float().square().mean()).backward()
        sync(device)
        return time.perf_counter() - start

    row: dict[str, Any] = {"variant": name, "backend": args.backend if name != "eager" else "-"}
    first = args.tokens[0]
    row["first_step_s"] = step(first)
    row["graphs_after_step1"] = len(graphs)
    step(first)
    row["graphs_after_step2"] = len(graphs)
    times = [step(first) for _ in range(args.steps)]
    row["step_ms"] = statistics.median(times) * 1e3
    for other in args.tokens[1:]:
        step(other)
        step(other)
    row["graphs_total"] = len(graphs)
    row["graph_breaks"] = sum(counters["graph_break"].values())
    row["status"] = "ok"
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ltx23_22b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--tokens", type=int, nargs="+", default=[10752, 5376], help="first: the timed shape")
    p.add_argument("--audio-tokens", type=int, default=126)
    p.add_argument("--text-tokens", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--backend", default="inductor", help="torch.compile backend (eager: dynamo only)")
    # compiled-ltx-fn first: its recompile shows only in a process where ltx-core never ran attention before
    p.add_argument("--variants", nargs="+", default=["compiled-ltx-fn", "compiled", "eager"])
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results")
    args = p.parse_args(argv)
    if torch.device(args.device).type != "cuda" and args.preset == "ltx23_22b":
        p.error("the 22B preset needs CUDA; use --preset tiny on CPU")
    return args


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    rows = []
    for name in args.variants:
        try:
            rows.append(run_variant(name, args, device, dtype))
        except Exception as exc:  # a failed compile is a result, not a crash of the whole benchmark
            rows.append({"variant": name, "status": f"{type(exc).__name__}: {exc}"[:200]})
        print(rows[-1], flush=True)
    notes = (
        f"{args.blocks} blocks of {args.preset} ({args.dtype}) with LoRA r{args.rank} on every attention; "
        f"one training step per call at {args.tokens[0]} video tokens (+{args.audio_tokens} audio, "
        f"{args.text_tokens} text), then {args.tokens[1:]} (another bucket). Method: docstring of "
        "benchmarks/compile_bench.py."
    )
    if args.backend == "eager":
        notes += " Backend eager: dynamo only, no code generation; compiled step times are not a payoff."
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return write_results("compile", rows, COLUMNS, config, notes=notes, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
