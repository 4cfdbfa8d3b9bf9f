"""Block swap (`model.offload_blocks`): the schedule moves each offloaded block once per forward and once
per recompute, the results equal the run without offload exactly (bf16 and fp8 base), and it composes
with DDP on two processes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from e2e_utils import REPO, compose_train, train_in_process, train_overrides
from test_quantized_base import _batch, _module

from ltxdist.lora import read_lora_file
from ltxdist.parallel.offload import frozen_parameter_names, offloaded_block_indices


def _step(module, batch):
    for p in module.lora_parameters():
        p.grad = None
    loss, _ = module.compute_loss(batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.lora_parameters()]


def test_offloaded_blocks_are_spread_and_bounded():
    assert offloaded_block_indices(48, 24) == list(range(0, 48, 2))
    assert offloaded_block_indices(48, 48) == list(range(48))
    assert len(set(offloaded_block_indices(48, 47))) == 47
    with pytest.raises(ValueError, match=r"model\.offload_blocks"):
        offloaded_block_indices(2, 3)


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_offload_moves_each_block_once_per_pass_and_changes_nothing(tiny_ckpt, tiny_data, precision):
    common = ("model.dtype=float32", "model.gradient_checkpointing=true", f"model.base_precision={precision}")
    batch = _batch(tiny_data)
    ref = _module(tiny_ckpt, tiny_data, *common)
    module = _module(tiny_ckpt, tiny_data, *common, "model.offload_blocks=2")
    offloader = module.block_offloader
    assert offloader is not None and offloader.indices == [0, 1]
    blocks = module.transformer.transformer_blocks
    frozen = {name for name, p in blocks[1].named_parameters() if not p.requires_grad}
    assert not frozen, "between passes an offloaded block holds no frozen weights"
    assert offloader.host_bytes() == sum(
        p.numel() * p.element_size()
        for name, p in ref.transformer.transformer_blocks[0].named_parameters()
        if name in frozen_parameter_names(ref.transformer.transformer_blocks[0])
    ) + sum(
        p.numel() * p.element_size()
        for name, p in ref.transformer.transformer_blocks[1].named_parameters()
        if name in frozen_parameter_names(ref.transformer.transformer_blocks[1])
    )

    loss_ref, grads_ref = _step(ref, batch)
    loss, grads = _step(module, batch)
    # forward + checkpoint recompute: two copies of each block per step, no more
    assert dict(offloader.transfers) == {0: 2, 1: 2}
    assert torch.equal(loss, loss_ref)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ref, strict=True))
    assert not any(not p.requires_grad for p in blocks[0].parameters())
    _step(module, batch)  # the next step starts where the last backward ended (block 0): same count
    assert dict(offloader.transfers) == {0: 4, 1: 4}

    # A forward without gradients (validation sampling) has no recompute: one copy each.
    offloader.reset_counts()
    module.eval()
    ref.eval()
    with torch.no_grad():
        loss, _ = module.compute_loss(batch)
        loss_ref, _ = ref.compute_loss(batch)
    assert dict(offloader.transfers) == {0: 1, 1: 1}
    assert torch.equal(loss, loss_ref)


@pytest.mark.parametrize(
    "ac",
    [
        ("parallel.activation_checkpointing=attention",),
        ("parallel.activation_checkpointing=every_k", "parallel.activation_checkpointing_every=2"),
        ("parallel.activation_checkpointing=budget", "parallel.memory_budget_gib=100"),
    ],
    ids=["attention", "every_k", "budget"],
)
def test_offload_under_each_block_mode_recomputes_the_swapped_blocks(tiny_ckpt, tiny_data, ac):
    """The per-block modes would leave a swapped block `off` (budget: a roomy budget plans every block off;
    every_k=2: block 1) or recompute it where the swap's weights are gone (attention): swapped blocks are
    always fully recomputed, each copied once per forward and once per recompute, with the gradients of the
    run without swap; the budget planner counts their device copies in flight as resident."""
    common = ("model.dtype=float32", *ac)
    batch = _batch(tiny_data)
    ref = _module(tiny_ckpt, tiny_data, *common)
    module = _module(tiny_ckpt, tiny_data, *common, "model.offload_blocks=2")
    loss_ref, grads_ref = _step(ref, batch)
    loss, grads = _step(module, batch)
    offloader = module.block_offloader
    assert dict(offloader.transfers) == {0: 2, 1: 2}  # forward + recompute: neither block is `off`
    assert torch.equal(loss, loss_ref)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ref, strict=True))
    planner = module.transformer.__dict__["ltxdist_ac_planner"]
    assert planner.modes == ["full", "full"]
    if "budget" in ac[0]:
        assert ref.transformer.__dict__["ltxdist_ac_planner"].last_counts == {
            "off": 2,
            "attention": 0,
            "full": 0,
        }
        assert planner.last_counts == {"off": 0, "attention": 0, "full": 2}
        # Both blocks swapped, both in flight at once: the same device bytes as without swap.
        assert offloader.in_flight_bytes() == offloader.host_bytes() > 0
        assert planner.resident(module.transformer) == ref.transformer.__dict__[
            "ltxdist_ac_planner"
        ].resident(ref.transformer)


@pytest.mark.slow
def test_ddp_two_processes_with_fp8_base_and_offload_match_one_process(tiny_ckpt, tmp_path):
    # As test_train_e2e's DDP check, on an fp8 base with one of the two blocks swapped: DDP must not try
    # to broadcast 8-bit or host-resident weights (gloo cannot send float8), and the result must match.
    from ltxdist.data.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, tiny_ckpt, num_samples=8, samples_per_shard=4, seed=1)
    common = {
        "trainer.max_steps": 3,
        "trainer.checkpoint_every_n_steps": 3,
        "data.shuffle_buffer": 1,
        "data.split": "sample",
        "model.base_precision": "fp8",
        "model.gradient_checkpointing": "true",
        "model.offload_blocks": 1,
    }
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    # The 1-process reference trains in this process (what is under test is the 2-process run).
    single = train_overrides(tiny_ckpt, data, tmp_path / "single", **common, **{"data.batch_size": 2})
    train_in_process(compose_train(single))
    ddp_args = train_overrides(
        tiny_ckpt,
        data,
        tmp_path / "ddp",
        **common,
        **{
            "data.batch_size": 1,
            "parallel": "ddp",
            "parallel.devices": 2,
            "parallel.accelerator": "cpu",
            "parallel.process_group_backend": "gloo",
        },
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    ddp = subprocess.run(
        [*launcher, "-m", "ltxdist.training.train", *ddp_args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    a = read_lora_file(tmp_path / "single" / "lora" / "lora_weights_step_000003.safetensors")
    b = read_lora_file(tmp_path / "ddp" / "lora" / "lora_weights_step_000003.safetensors")
    assert a.metadata["base_precision"] == "fp8" and a.metadata["base_fp8_matmul"] == "false"
    assert a.metadata["base_checkpoint"] == tiny_ckpt.name
    assert max(t.float().abs().max().item() for k, t in a.tensors.items() if "lora_B" in k) > 1e-4
    for k in a.tensors:
        torch.testing.assert_close(b.tensors[k].float(), a.tensors[k].float(), rtol=2e-2, atol=1e-4)
