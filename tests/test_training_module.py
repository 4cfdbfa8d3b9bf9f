"""The LightningModule's loss path: masked MSE, base weights, activation checkpointing, caption dropout,
per-modality weights, video-only batches."""

from __future__ import annotations

import itertools

import pytest
import torch

from ltxdist._ltx_core import BatchedPerturbationConfig
from ltxdist.config.store import compose_train_config, register_configs
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.lora import lora_modules
from ltxdist.models import load_transformer
from ltxdist.strategies.base import StreamTargets
from ltxdist.strategies.rng import sample_generators
from ltxdist.training.losses import masked_mse_per_sample
from ltxdist.training.module import LTXLoRAModule

register_configs()


def _module(tiny_ckpt, tiny_data, *overrides, dtype="float32"):
    cfg = compose_train_config(
        [
            f"model.checkpoint={tiny_ckpt}",
            f"data.path={tiny_data}",
            f"model.dtype={dtype}",
            "lora.rank=4",
            *overrides,
        ]
    )
    module = LTXLoRAModule(cfg)
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.lora_parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))  # B != 0 so every adapter gets gradients
    return module


def _batch(tiny_data):
    stream = CachedLatentStream(tiny_data, StreamPlan(batch_size=2, seed=0))
    return next(itertools.islice(stream.iter_batches(), 1, None))


def test_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_ckpt, tiny_data):
    batch = _batch(tiny_data)
    results = []
    for ac in ("false", "true"):
        module = _module(
            tiny_ckpt,
            tiny_data,
            f"model.gradient_checkpointing={ac}",
            "strategy.first_frame_conditioning_p=0.5",
        )
        module.train()
        assert module.transformer._enable_gradient_checkpointing is (ac == "true")
        loss, _ = module.compute_loss(batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in module.lora_parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_caption_dropout_uses_the_cached_empty_caption(tiny_ckpt, tiny_data):
    from ltxdist.data.shards import load_empty_caption

    batch = _batch(tiny_data)
    empty = load_empty_caption(tiny_data)
    module = _module(tiny_ckpt, tiny_data, "strategy.caption_dropout_p=1.0")
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    dropped = module._caption_dropout(batch, gens)
    for key in ("video_context", "audio_context"):
        assert torch.equal(dropped[key], empty[key].unsqueeze(0).expand_as(batch[key]).to(batch[key].dtype))
        assert not torch.equal(batch[key], dropped[key])  # the input batch is not modified in place
    kept = _module(tiny_ckpt, tiny_data, "strategy.caption_dropout_p=0.0")._caption_dropout(batch, gens)
    assert kept is batch


@pytest.mark.parametrize(("wv", "wa"), [(1.0, 1.0), (0.0, 1.0), (2.0, 0.5)])
def test_per_modality_loss_weights(tiny_ckpt, tiny_data, wv, wa):
    batch = _batch(tiny_data)
    module = _module(
        tiny_ckpt, tiny_data, f"strategy.video_loss_weight={wv}", f"strategy.audio_loss_weight={wa}"
    )
    total, parts = module.compute_loss(batch)
    torch.testing.assert_close(total.detach(), wv * parts["loss/video"] + wa * parts["loss/audio"])
    assert parts["loss/video"] > 0 and parts["loss/audio"] > 0
    buckets = parts["sigma_buckets/video"]
    assert sum(int(count) for _, count in buckets.values()) == 2  # every sample lands in one sigma bucket


def test_warm_start_carries_adapters_and_moments_but_not_the_schedule(tiny_ckpt, tiny_data, tmp_path):
    from ltxdist.checkpoint import TorchTrainable, TrainState, load_checkpoint, save_checkpoint

    batch = _batch(tiny_data)
    src = _module(tiny_ckpt, tiny_data, "optim.lr=0.01")
    opt_src = torch.optim.AdamW(src.lora_parameters(), lr=0.01)
    loss, _ = src.compute_loss(batch)
    loss.backward()
    opt_src.step()
    save_checkpoint(tmp_path / "ck", TorchTrainable(src, opt_src), TrainState(step=1))

    dst = _module(tiny_ckpt, tiny_data, "lora.init_seed=7")
    opt_dst = torch.optim.AdamW(dst.lora_parameters(), lr=0.001)
    load_checkpoint(tmp_path / "ck", TorchTrainable(dst, opt_dst), with_train_state=False)  # a warm start
    for a, b in zip(src.lora_parameters(), dst.lora_parameters(), strict=True):
        torch.testing.assert_close(a, b)
    moments_src = opt_src.state_dict()["state"]
    moments_dst = opt_dst.state_dict()["state"]
    assert moments_dst.keys() == moments_src.keys()
    for i in moments_src:
        torch.testing.assert_close(moments_dst[i]["exp_avg"], moments_src[i]["exp_avg"])
    assert opt_dst.param_groups[0]["lr"] == 0.001  # the new stage's own learning rate


def test_masked_mse_value_and_gradient_match_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 5, 4, generator=g).requires_grad_()
    target = torch.randn(3, 5, 4, generator=g)
    # sample 0: 3 trained tokens; sample 1: only the last; sample 2: none (must give 0, not NaN)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.float32)
    per_sample = masked_mse_per_sample(pred, StreamTargets(target, mask, torch.zeros(3)))
    p, t = pred.detach().tolist(), target.tolist()
    expected = []
    for b in range(3):
        token_errors = [
            sum((p[b][i][c] - t[b][i][c]) ** 2 for c in range(4)) / 4 for i in range(5) if mask[b, i]
        ]
        expected.append(sum(token_errors) / len(token_errors) if token_errors else 0.0)
    assert per_sample.tolist() == pytest.approx(expected, rel=1e-5)
    unmasked = float((pred.detach()[0] - target[0]).pow(2).mean())
    assert float(per_sample[0].detach()) != pytest.approx(unmasked, rel=1e-2)  # the mask matters here
    per_sample.sum().backward()
    # d loss_b / d pred[b, i, c] = 2 (pred - target) / (C * trained tokens of b) on trained tokens, else 0
    trained = mask.sum(dim=1).clamp(min=1).view(3, 1, 1)
    grad = 2 * (pred.detach() - target) / (4 * trained) * mask.unsqueeze(-1)
    torch.testing.assert_close(pred.grad, grad)
    assert torch.count_nonzero(pred.grad[2]) == 0 and torch.count_nonzero(pred.grad[0, 1]) == 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_module_base_weights_are_what_load_transformer_loads(tiny_ckpt, tiny_data, dtype):
    # The training module materialises through parallel/materialize.py + copy_base_weights; sampling,
    # export and tests use load_transformer. The two paths must give the same model.
    module = _module(tiny_ckpt, tiny_data, dtype=dtype)
    reference = load_transformer(tiny_ckpt, dtype=getattr(torch, dtype)).model
    expected = reference.state_dict()
    ours = {
        k: v for k, v in module.transformer.state_dict().items() if not k.endswith((".lora_A", ".lora_B"))
    }
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    with torch.no_grad():
        for m in lora_modules(module.transformer).values():
            m.lora_B.zero_()  # adapters off: the module's transformer is then the base
    batch = _batch(tiny_data)
    inputs = module.strategy_impl.prepare(
        batch,
        dtype=getattr(torch, dtype),
        device=torch.device("cpu"),
        generators=sample_generators(0, batch["ids"], batch["epochs"]),
    )
    with torch.no_grad():
        ours_out = module.transformer(inputs.video, inputs.audio, BatchedPerturbationConfig.empty(2))
        ref_out = reference(inputs.video, inputs.audio, BatchedPerturbationConfig.empty(2))
    for a, b in zip(ours_out, ref_out, strict=True):
        assert torch.equal(a, b)


def test_standard_strategy_on_video_only_batches(tiny_ckpt, tmp_path):
    from ltxdist.data.synthetic import write_synthetic_dataset

    data = tmp_path / "video_only"
    write_synthetic_dataset(data, tiny_ckpt, num_samples=2, samples_per_shard=2, with_audio=False)
    batch = next(CachedLatentStream(data, StreamPlan(batch_size=2, seed=0)).iter_batches())
    assert "audio_latents" not in batch
    module = _module(tiny_ckpt, data)
    inputs = module.strategy_impl.prepare(
        batch,
        dtype=torch.float32,
        device=torch.device("cpu"),
        generators=sample_generators(0, batch["ids"], batch["epochs"]),
    )
    assert inputs.audio is None and inputs.audio_targets is None and inputs.video_targets is not None
    total, parts = module.compute_loss(batch)
    assert "loss/audio" not in parts and "sigma_buckets/audio" not in parts
    assert torch.isfinite(total) and float(total.detach()) > 0
    torch.testing.assert_close(total.detach(), parts["loss/video"])  # video weight 1, nothing else added
    total.backward()
    adapters = lora_modules(module.transformer)
    assert all(float(m.lora_A.grad.abs().sum()) > 0 for n, m in adapters.items() if ".attn1." in n)
    audio_only = [m for n, m in adapters.items() if ".audio_attn1." in n]
    assert audio_only and all(m.lora_A.grad is None or not m.lora_A.grad.any() for m in audio_only)


def test_a_converted_position_without_cursors_restarts_at_the_samples_consumed(tiny_ckpt, tiny_data):
    """A train state converted from the format before cursors: 3 micro-batches of 1 sample on each of 2
    data-parallel processes are 6 samples, which this 1-process run with batch 2 resumes after 3 of its
    batches, from record headers (no cursors)."""
    from ltxdist.checkpoint import TrainState

    module = _module(tiny_ckpt, tiny_data, "data.batch_size=2")
    state = TrainState(
        step=3,
        data={"batches_seen": 3},
        layout={"data_parallel_size": 2, "micro_batch_size": 1},
        counters={"nonfinite": {}},
    )
    module.load_train_state(state)
    assert (module.batches_seen, module.data_start.cursors) == (3, None)
    state.layout = {"data_parallel_size": 2, "micro_batch_size": 3}  # 18 samples: 9 batches of 2
    module.load_train_state(state)
    assert module.batches_seen == 9


def test_mixed_datasets_draw_their_own_noise_for_alike_sample_ids(tiny_ckpt, tiny_data):
    """Every prepared dataset names its samples row00000000, ...: under data mixing (batch["source"]) the
    draws are seeded by dataset and id, so row k of two characters gets its own sigma, noise and coins."""
    module = _module(tiny_ckpt, tiny_data)
    batch = _batch(tiny_data)

    def loss(source):
        with torch.no_grad():
            mixed = dict(batch) if source is None else {**batch, "source": source}
            return float(module.compute_loss(mixed)[0])

    assert loss("character_a") == loss("character_a")
    assert loss("character_a") != loss("character_b")
    assert loss(None) not in (loss("character_a"), loss("character_b"))  # unmixed: the plain ids
