"""`model.kernels` reaches the model: LTXLoRAModule.configure_model patches ltx-core's Attention modules
into KernelAttention for `triton`, and leaves them alone for `torch` (and for `auto` on a CPU).

The fused entry points are swapped for their plain PyTorch references while counting calls, so the
triton-configured module runs on CPU in milliseconds and the test checks the dispatch, not kernel
numerics (tests/kernels/test_fused_lora_linear.py and test_qk_norm_rope.py do that).
"""

from __future__ import annotations

import pytest
import torch
from ltx_core.model.transformer.attention import Attention

import ltxdist_kernels.attention as kattn
from ltxdist.config.store import compose_train_config, register_configs
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.lora.layers import LoRALinear
from ltxdist.training.module import LTXLoRAModule
from ltxdist_kernels.attention import KernelAttention
from ltxdist_kernels.reference import lora_linear_reference, qk_norm_rope_reference


def _configured(tiny_ckpt, tiny_data, kernels: str) -> LTXLoRAModule:
    register_configs()
    cfg = compose_train_config(
        [
            f"model.checkpoint={tiny_ckpt}",
            f"data.path={tiny_data}",
            "model.dtype=float32",
            f"model.kernels={kernels}",
            "lora.rank=4",
        ]
    )
    module = LTXLoRAModule(cfg)
    module.configure_model()  # no trainer: the module's own device (CPU)
    return module


def _attentions(module: LTXLoRAModule) -> list[Attention]:
    return [m for m in module.transformer.modules() if isinstance(m, Attention)]


@pytest.mark.parametrize("kernels", ["torch", "auto"])
def test_torch_and_auto_on_cpu_keep_ltx_core_attention(tiny_ckpt, tiny_data, kernels):
    attentions = _attentions(_configured(tiny_ckpt, tiny_data, kernels))
    assert len(attentions) == 12  # tiny preset: 2 blocks x 6 attentions
    assert all(type(m) is Attention for m in attentions)


def test_triton_patches_every_attention_and_dispatches_to_the_fused_entry_points(
    tiny_ckpt, tiny_data, monkeypatch
):
    patched = _configured(tiny_ckpt, tiny_data, "triton")
    attentions = _attentions(patched)
    assert len(attentions) == 12
    assert all(type(m) is KernelAttention and m.kernel_backend == "triton" for m in attentions)

    calls = {"lora": 0, "qk": 0}

    def counting(key, fn):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(kattn, "fused_lora_linear", counting("lora", lora_linear_reference))
    monkeypatch.setattr(kattn, "qk_norm_rope", counting("qk", qk_norm_rope_reference))
    batch = next(CachedLatentStream(tiny_data, StreamPlan(batch_size=2, seed=0)).iter_batches())
    reference = _configured(tiny_ckpt, tiny_data, "torch")  # same checkpoint, same seeded adapters
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B != 0, so the adapters contribute to the loss
        for p, q in zip(patched.lora_parameters(), reference.lora_parameters(), strict=True):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            q.copy_(p)
    loss_patched, _ = patched.compute_loss(batch)
    loss_reference, _ = reference.compute_loss(batch)

    adapted = sum(isinstance(c, LoRALinear) for m in attentions for c in m.modules())
    assert adapted > 0
    assert calls["lora"] == adapted  # every adapted projection went through the fused entry point
    assert calls["qk"] == 2 * len(attentions)  # q and k of every attention
    torch.testing.assert_close(loss_patched, loss_reference, rtol=1e-5, atol=1e-6)
