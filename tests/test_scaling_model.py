"""The scaling model's inputs checked against the code and a real 2-process DDP run."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from e2e_utils import free_port

from ltxdist.bench.scaling import GRAD_BYTES, count_model, layout_traffic


def test_lora_parameter_count_matches_a_hand_count():
    counts = count_model(preset="tiny", rank=4, targets=("attn",))

    # tiny: video width 64, audio width 32, text dims 64/32; per block q/k/v/out of 6 attentions.
    def lora(i, o):
        return 4 * (i + o)

    video_self = 4 * lora(64, 64)
    video_text = lora(64, 64) + 2 * lora(64, 64) + lora(64, 64)
    audio_self = 4 * lora(32, 32)
    audio_text = 4 * lora(32, 32)
    a2v = lora(64, 32) + 2 * lora(32, 32) + lora(32, 64)  # q from video, k/v from audio, out to video
    v2a = lora(32, 32) + 2 * lora(64, 32) + lora(32, 32)
    per_block = video_self + video_text + audio_self + audio_text + a2v + v2a
    assert counts.lora_params == 2 * per_block


def test_traffic_formulas():
    counts = count_model(preset="tiny", rank=4)
    g = counts.lora_params * GRAD_BYTES
    intra, inter = layout_traffic("ddp", counts, 8, 1)
    assert intra == pytest.approx(2 * g * 7 / 8) and inter == 0
    intra, inter = layout_traffic("hsdp", counts, 8, 4)
    assert inter == pytest.approx(2 * (g / 8) * 3 / 4)


class _LoRANorm(torch.nn.Module):
    """Forward = squared norm of the adapters: every LoRA param gets a gradient, through DDP's forward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self) -> torch.Tensor:
        return sum((p.float() ** 2).sum() for n, p in self.model.named_parameters() if "lora_" in n)


def _ddp_worker(rank: int, world: int, port: int, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from ltxdist.lora import LoRASpec, inject_lora
        from ltxdist.models import build_meta_transformer
        from ltxdist.models.presets import transformer_config

        model = build_meta_transformer(transformer_config("tiny"))
        inject_lora(model, LoRASpec(rank=4, alpha=4, targets=("attn",)))
        model.to_empty(device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        ddp = torch.nn.parallel.DistributedDataParallel(_LoRANorm(model))
        sent = []

        def counting_hook(state, bucket):
            sent.append(bucket.buffer().numel() * bucket.buffer().element_size())
            fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
            return fut.then(lambda f: f.value()[0])

        ddp.register_comm_hook(None, counting_hook)
        ddp().backward()
        if rank == 0:
            result["bytes"] = sum(sent)
    finally:
        dist.destroy_process_group()


def test_ddp_all_reduces_exactly_the_modelled_gradient_bytes():
    manager = mp.Manager()
    result = manager.dict()
    mp.spawn(_ddp_worker, args=(2, free_port(), result), nprocs=2, join=True)
    counts = count_model(preset="tiny", rank=4, targets=("attn",))
    assert result["bytes"] == counts.lora_params * GRAD_BYTES
