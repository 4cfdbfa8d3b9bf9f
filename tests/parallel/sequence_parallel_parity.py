"""Run by test_sequence_parallel.py under torchrun (2 CPU processes, gloo, fp32).

For each case (strategy x options), on the same two samples: the plain forward of the tiny model on
whole sequences (what one process computes) against the sequence-parallel forward of the same model
(each rank holding half of the tokens): predictions, loss (through LTXLoRAModule.compute_loss) and LoRA
gradients (summed over the group). Also the errors against a WRONG reference (another batch), which
must be large, and of the un-reduced per-rank gradients, which must not match on their own.

argv: a JSON file {"checkpoint": ..., "cases": [{"name", "data", "overrides"}], "out": ...}.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from ltxdist._ltx_core import BatchedPerturbationConfig
from ltxdist.config.store import compose_train_config, register_configs
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.parallel.sequence_parallel import (
    gather_tokens,
    sequence_parallel_forward,
    shard_attention_masks,
    token_shard,
)
from ltxdist.strategies.attention_masks import set_attention_masks
from ltxdist.strategies.rng import sample_generators
from ltxdist.training.module import LTXLoRAModule


def build(checkpoint: str, data: str, overrides: list[str]) -> LTXLoRAModule:
    cfg = compose_train_config(
        [
            f"model.checkpoint={checkpoint}",
            f"data.path={data}",
            "model.dtype=float32",
            "lora.rank=4",
            "lora.targets=[attn_ff]",
            "parallel=ddp",
            "parallel.devices=2",
            "parallel.accelerator=cpu",
            "parallel.sequence_parallel=2",
            *overrides,
        ]
    )
    module = LTXLoRAModule(cfg)
    module.configure_model()
    g = torch.Generator().manual_seed(0)  # same adapters on both ranks; B != 0 so every adapter matters
    with torch.no_grad():
        for p in module.lora_parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    module.train()
    return module


def batches(data: str) -> tuple[dict[str, Any], dict[str, Any]]:
    stream = CachedLatentStream(data, StreamPlan(batch_size=2, seed=0))
    first, second = itertools.islice(stream.iter_batches(), 2)
    return first, second


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def grads(module: LTXLoRAModule) -> list[torch.Tensor]:
    out = [
        torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in module.lora_parameters()
    ]
    module.zero_grad(set_to_none=True)
    return out


def grad_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return max(rel_err(a, b) for a, b in zip(got, want, strict=True) if b.abs().max() > 0)


def predictions(
    module: LTXLoRAModule, batch: dict[str, Any], sequence_parallel: bool
) -> tuple[list[torch.Tensor], dict[str, int]]:
    gens = sample_generators(module.cfg.run.seed, batch["ids"], batch["epochs"])
    out = module.strategy_impl.prepare(batch, dtype=torch.float32, device=module.device, generators=gens)
    b = next(m for m in (out.video, out.audio) if m is not None).latent.shape[0]
    pert = BatchedPerturbationConfig.empty(b)
    with torch.no_grad():
        if sequence_parallel:
            vx, ax = sequence_parallel_forward(module.transformer, out, module.sequence_parallel, pert)
        else:
            set_attention_masks(module.transformer, out.key_keep, out.query_keep)
            vx, ax = module.transformer(out.video, out.audio, pert)
    tokens = {
        name: m.latent.shape[1] for name, m in (("video", out.video), ("audio", out.audio)) if m is not None
    }
    return [t for t in (vx, ax) if t is not None], tokens


def run_case(checkpoint: str, case: dict[str, Any]) -> dict[str, Any]:
    module = build(checkpoint, case["data"], case["overrides"])
    sp = module.sequence_parallel
    assert sp is not None and sp.size == 2
    batch, other = batches(case["data"])

    # Reference: one process's computation (exchanging off, whole sequences on this rank).
    sp.active = False
    want_pred, tokens = predictions(module, batch, sequence_parallel=False)
    module.sequence_parallel = None  # compute_loss takes the plain path
    loss_ref, _ = module.compute_loss(batch)
    loss_ref.backward()
    want = grads(module)
    loss_other, _ = module.compute_loss(other)
    loss_other.backward()
    wrong = grads(module)
    module.sequence_parallel = sp

    got_pred, _ = predictions(module, batch, sequence_parallel=True)
    loss_sp, _ = module.compute_loss(batch)
    loss_sp.backward()  # the checkpointed recompute (if any) exchanges tokens again, in the backward
    sp.active = False
    local = grads(module)
    summed = [g.clone() for g in local]
    for g in summed:
        dist.all_reduce(g, group=sp.group)
    return {
        "tokens": tokens,
        "pred_err": max(rel_err(a, b) for a, b in zip(got_pred, want_pred, strict=True)),
        "loss_err": abs(loss_sp.item() - loss_ref.item()) / abs(loss_ref.item()),
        "grad_err": grad_err(summed, want),
        "wrong_reference_grad_err": grad_err(summed, wrong),
        "unreduced_grad_err": grad_err(local, want),
        "grad_norm": float(torch.linalg.vector_norm(torch.stack([g.norm() for g in want]))),
    }


def run_kernel_attention_case(checkpoint: str, case: dict[str, Any]) -> dict[str, Any]:
    """One video self-attention of the tiny model through the Triton kernels (fused LoRA projections,
    fused q/k norm + split RoPE; the interpreter on CPU is slow, hence one module, not the model): the
    sequence-parallel call on each rank's tokens against the whole-sequence call."""
    module = build(checkpoint, case["data"], case["overrides"])
    sp = module.sequence_parallel
    model = module.transformer
    attn = model.transformer_blocks[0].attn1
    assert type(attn).__name__ == "KernelAttention" and attn.kernel_backend == "triton"
    batch, _ = batches(case["data"])
    gens = sample_generators(module.cfg.run.seed, batch["ids"], batch["epochs"])
    out = module.strategy_impl.prepare(batch, dtype=torch.float32, device=module.device, generators=gens)
    args = model.video_args_preprocessor.prepare(out.video, out.audio)
    pe = args.positional_embeddings  # (cos, sin), (B, H, T, d)
    g = torch.Generator().manual_seed(1)
    x_BTC = torch.randn(args.x.shape, generator=g)
    w_BTC = torch.randn(args.x.shape, generator=g)
    T = x_BTC.shape[1]
    params = [p for n, p in attn.named_parameters() if "lora_" in n]

    def loss_and_grads(output_BTC: torch.Tensor, x_leaf: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
        loss = (output_BTC * w_BTC).sum()
        loss.backward()
        out_grads = [p.grad.detach().clone() for p in params]
        for p in params:
            p.grad = None
        return loss.item(), out_grads

    sp.active = False
    set_attention_masks(model)
    x_ref = x_BTC.clone().requires_grad_(True)
    y_ref = attn(x_ref, pe=pe)
    loss_ref, want = loss_and_grads(y_ref, x_ref)

    shard = token_shard(T, sp)
    keys, _ = shard_attention_masks({}, {}, {"video": shard}, x_BTC.shape[0], x_BTC.device)
    set_attention_masks(model, keys)
    padded = torch.nn.functional.pad(x_BTC, (0, 0, 0, shard.padding))
    x_local = padded[:, shard.start : shard.stop].clone().requires_grad_(True)
    pe_local = tuple(
        torch.cat([t, t[:, :, -1:].expand(-1, -1, shard.padding, -1)], dim=2)[:, :, shard.start : shard.stop]
        for t in pe
    )
    sp.active = True
    y_local = attn(x_local, pe=pe_local)
    sp.active = False
    y_full = gather_tokens(y_local, sp, T)
    loss_sp, local = loss_and_grads(y_full, x_local)
    summed = [t.clone() for t in local]
    for t in summed:
        dist.all_reduce(t, group=sp.group)
    x_grad_err = rel_err(
        x_local.grad[:, : max(0, min(shard.stop, T) - shard.start)], x_ref.grad[:, shard.start : shard.stop]
    )
    return {
        "tokens": {"video": T},
        "pred_err": rel_err(y_full.detach(), y_ref.detach()),
        "loss_err": abs(loss_sp - loss_ref) / abs(loss_ref),
        "grad_err": max(grad_err(summed, want), x_grad_err),
        "wrong_reference_grad_err": grad_err(summed, [torch.flip(t, dims=[0]) for t in want]),
        "unreduced_grad_err": grad_err(local, want),
        "grad_norm": float(torch.linalg.vector_norm(torch.stack([t.norm() for t in want]))),
    }


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    dist.init_process_group("gloo")
    register_configs()
    torch.manual_seed(0)
    report: dict[str, Any] = {}
    for case in spec["cases"]:
        start = time.perf_counter()
        runner = run_kernel_attention_case if case.get("kind") == "kernel_attention" else run_case
        result = runner(spec["checkpoint"], case)
        result["seconds"] = time.perf_counter() - start
        # the worst error over both ranks
        for key in ("pred_err", "loss_err", "grad_err"):
            t = torch.tensor(result[key], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            result[key] = float(t)
        report[case["name"]] = result
    if dist.get_rank() == 0:
        with open(spec["out"], "w") as f:
            json.dump(report, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
