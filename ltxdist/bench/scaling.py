"""A communication/compute model of LoRA training on one 8xH100 node and on several nodes.

For each layout (DDP, FSDP2 full shard, HSDP, DeepSpeed ZeRO-2 / ZeRO-3) it counts the bytes a GPU sends
per optimizer step, divides by the link bandwidth, and compares with the step's compute time; what the
layout cannot overlap with compute is exposed and costs scaling efficiency. Parameter counts come from
the real LTX-2.3 architecture (built on the meta device, LoRA injected), FLOPs from
ltxdist.tracking.flops, so the model moves with the code.

    python -m ltxdist.bench.scaling > benchmarks/SCALING.md
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from ltxdist.lora import LoRASpec, inject_lora, lora_parameters
from ltxdist.models import build_meta_transformer
from ltxdist.models.presets import transformer_config
from ltxdist.tracking.flops import FlopModel

# Link bandwidths a GPU sees (GB/s, one direction, achievable by NCCL collectives, not datasheet peaks).
NVLINK_GBPS = 360.0  # H100 SXM NVLink 4 (450 GB/s peak per direction); NCCL bus bandwidth in practice
IB_GBPS = 45.0  # one 400 Gb/s NDR InfiniBand NIC per GPU (50 GB/s peak)
H100_BF16_TFLOPS = 989.4
ASSUMED_MFU = 0.45  # the step-time target of the benchmark issue
GRAD_BYTES = 4  # LoRA gradients reduced in fp32
BASE_BYTES = 2  # frozen base in bf16


@dataclass(frozen=True)
class Workload:
    name: str
    tokens: dict[str, int]  # per sample, roles v, a, vt, at (see tracking/flops.py)
    batch_per_gpu: int = 1
    activation_checkpointing: bool = True


# 960x544x49: 7 x 17 x 30 = 3,570 video tokens, ~2 s of audio; 768x448x121 IC: 2 x 5,376 video tokens.
WORKLOADS = (
    Workload("standard 960x544x49", {"v": 3570, "a": 51, "vt": 1024, "at": 1024}),
    Workload("IC-LoRA 768x448x121 (+reference)", {"v": 10752, "a": 126, "vt": 1024, "at": 1024}),
)


@dataclass(frozen=True)
class ModelCounts:
    base_params: int
    lora_params: int
    flops: FlopModel


def count_model(
    preset: str = "ltx23_22b", rank: int = 32, targets: tuple[str, ...] = ("attn",)
) -> ModelCounts:
    model = build_meta_transformer(transformer_config(preset)).to(torch.bfloat16)
    inject_lora(model, LoRASpec(rank=rank, alpha=rank, targets=targets))
    lora = sum(p.numel() for p in lora_parameters(model))
    base = sum(p.numel() for p in model.parameters()) - lora
    return ModelCounts(base_params=base, lora_params=lora, flops=FlopModel.from_model(model))


def ring_bytes(payload: float, n: int) -> float:
    """Bytes each rank sends in a ring all-gather or reduce-scatter of `payload` total bytes."""
    return payload * (n - 1) / n if n > 1 else 0.0


def layout_traffic(layout: str, counts: ModelCounts, gpus_per_node: int, nodes: int) -> tuple[float, float]:
    """(intra-node bytes, inter-node bytes) one GPU sends per optimizer step."""
    n = gpus_per_node * nodes
    grads = counts.lora_params * GRAD_BYTES
    params = counts.base_params * BASE_BYTES
    inter_share = (nodes - 1) / nodes if nodes > 1 else 0.0
    if layout in ("ddp", "zero2"):
        # all-reduce (= reduce-scatter + all-gather) of the LoRA gradients; ZeRO-2 reduce-scatters the
        # gradients and all-gathers the updated LoRA params: the same volume. The frozen base never moves.
        total = 2 * ring_bytes(grads, n)
        return total * (1 - inter_share), total * inter_share
    if layout in ("fsdp2", "zero3"):
        # frozen params all-gathered in forward and again in backward (resharded after forward), LoRA
        # gradients reduce-scattered; every collective spans all GPUs, so rings cross the nodes.
        total = 2 * ring_bytes(params, n) + ring_bytes(grads, n)
        return total * (1 - inter_share), total * inter_share
    if layout == "hsdp":
        # shard within a node, replicate across nodes: params gathered over NVLink only; the gradient
        # shard of each GPU is all-reduced with its peers on the other nodes.
        intra = 2 * ring_bytes(params, gpus_per_node) + ring_bytes(grads, gpus_per_node)
        inter = 2 * ring_bytes(grads / gpus_per_node, nodes)
        return intra, inter
    raise ValueError(f"unknown layout {layout!r}")


def memory_gib(layout: str, counts: ModelCounts, gpus_per_node: int, nodes: int) -> float:
    """Weights + LoRA gradients + AdamW state per GPU (activations excluded)."""
    n = gpus_per_node * nodes
    params_shard = {"ddp": 1, "zero2": 1, "fsdp2": n, "zero3": n, "hsdp": gpus_per_node}[layout]
    state_shard = {"ddp": 1, "zero2": n, "fsdp2": n, "zero3": n, "hsdp": gpus_per_node}[layout]
    lora = counts.lora_params
    weights = counts.base_params * BASE_BYTES / params_shard + lora * 4 / params_shard
    grads_and_adam = lora * (GRAD_BYTES + 8) / state_shard  # fp32 grads + two fp32 Adam moments
    return (weights + grads_and_adam) / 2**30


def efficiency(layout: str, counts: ModelCounts, work: Workload, gpus_per_node: int, nodes: int) -> dict:
    flops = counts.flops.step(
        batch=work.batch_per_gpu, tokens=work.tokens, activation_checkpointing=work.activation_checkpointing
    )
    t_compute = flops.hardware / (H100_BF16_TFLOPS * 1e12 * ASSUMED_MFU)
    intra, inter = layout_traffic(layout, counts, gpus_per_node, nodes)
    # NCCL runs the intra- and inter-node parts of a hierarchical collective concurrently per GPU.
    t_comm = max(intra / (NVLINK_GBPS * 1e9), inter / (IB_GBPS * 1e9))
    # Gradient reduction overlaps the backward (2/3 of the step); parameter gathers are prefetched during
    # both forward and backward (the whole step).
    overlap = t_compute if layout in ("fsdp2", "zero3", "hsdp") else t_compute * 2 / 3
    exposed = max(0.0, t_comm - overlap)
    return {
        "layout": layout,
        "nodes": nodes,
        "gpus": gpus_per_node * nodes,
        "workload": work.name,
        "compute_s": t_compute,
        "comm_s": t_comm,
        "exposed_s": exposed,
        "efficiency": t_compute / (t_compute + exposed),
        "intra_GB": intra / 1e9,
        "inter_GB": inter / 1e9,
        "memory_GiB": memory_gib(layout, counts, gpus_per_node, nodes),
    }


def report(rank: int) -> str:
    counts = count_model(rank=rank)
    rows = []
    for work in WORKLOADS:
        for nodes in (1, 4):
            for layout in ("ddp", "zero2", "fsdp2", "zero3", "hsdp"):
                if layout == "hsdp" and nodes == 1:
                    continue
                rows.append(efficiency(layout, counts, work, 8, nodes))
    head = (
        "| workload | layout | GPUs | compute s | comm s | exposed s | weak-scaling eff. | intra GB | "
        "inter GB | weights+optim GiB/GPU |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['layout']} | {r['gpus']} | {r['compute_s']:.2f} | {r['comm_s']:.3f} | "
            f"{r['exposed_s']:.3f} | {100 * r['efficiency']:.1f}% | {r['intra_GB']:.2f} | "
            f"{r['inter_GB']:.2f} | {r['memory_GiB']:.1f} |"
        )
    return (
        f"LoRA rank {rank} on every attention projection: {counts.lora_params / 1e6:.1f}M adapter params, "
        f"{counts.base_params / 1e9:.2f}B frozen params.\n\n" + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args(argv)
    for rank in args.ranks:
        print(report(rank))


if __name__ == "__main__":
    main()
