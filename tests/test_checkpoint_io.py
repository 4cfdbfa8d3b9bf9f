"""ltxdist.checkpoint in one process: exact round trip keyed by parameter name, no pickle anywhere,
completeness and resume rules, damaged files named (and skipped for the previous checkpoint), the old
format refused with the command that converts it, and that command."""

import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open

from ltxdist.checkpoint import (
    CheckpointFormatError,
    CheckpointMismatchError,
    LegacyCheckpointError,
    TorchTrainable,
    TrainState,
    load_checkpoint,
    load_newest,
    read_checkpoint,
    read_train_state,
    save_checkpoint,
)
from ltxdist.io import atomic_file, save_safetensors_atomic
from ltxdist.training.checkpointing import resume_candidates
from ltxdist.training.run_dir import ResumeError, complete_checkpoints


class Adapters(torch.nn.Module):
    """A frozen base, two adapters and one that never gets a gradient (no optimizer state)."""

    def __init__(self, reverse: bool = False):
        super().__init__()
        self.base = torch.nn.Linear(4, 3)
        self.base.requires_grad_(False)
        names = ["lora_A", "lora_B"][:: -1 if reverse else 1]  # registration (and optimizer) order
        shapes = {"lora_A": (2, 4), "lora_B": (3, 2)}
        for name in names:
            self.register_parameter(name, torch.nn.Parameter(torch.zeros(shapes[name])))
        self.idle = torch.nn.Parameter(torch.zeros(5))

    def forward(self, x):
        return self.base(x) + x @ self.lora_A.t() @ self.lora_B.t()


def _trained(steps: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    m = Adapters()
    with torch.no_grad():
        m.lora_A.normal_()
        m.lora_B.normal_()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.1, betas=(0.8, 0.99))
    for _ in range(steps):
        m(torch.randn(5, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
    return m, opt


def _fresh(reverse: bool = False):
    m = Adapters(reverse=reverse)
    return m, torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.5)


def _step(m, opt, seed=7):
    m(torch.randn(5, 4, generator=torch.Generator().manual_seed(seed))).sum().backward()
    opt.step()
    opt.zero_grad()


def test_round_trip_is_exact_keyed_by_name_and_carries_the_train_state(tmp_path):
    m, opt = _trained()
    state = TrainState(step=3, data={"batches_seen": 3}, extra={"run_identity": "abc"})
    save_checkpoint(tmp_path / "step-000003", TorchTrainable(m, opt), state)
    saved_b = m.lora_B.detach().clone()
    # Parameters registered in the other order: position-keyed moments would land on the wrong adapter.
    back, back_opt = _fresh(reverse=True)
    got = load_checkpoint(tmp_path / "step-000003", TorchTrainable(back, back_opt))
    assert got.step == 3 and got.data == {"batches_seen": 3} and got.extra == {"run_identity": "abc"}
    assert back_opt.param_groups[0]["lr"] == 0.1 and back_opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert back_opt.state[back.idle] == {}  # never had a gradient: still no state, as in the saved run
    _step(m, opt)
    _step(back, back_opt)
    for name in ("lora_A", "lora_B"):
        assert torch.equal(getattr(back, name), getattr(m, name)), name
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(back_opt.state[getattr(back, name)][key], opt.state[getattr(m, name)][key])
    # A warm start takes adapters and moments but keeps its own optimizer settings.
    warm, warm_opt = _fresh()
    load_checkpoint(tmp_path / "step-000003", TorchTrainable(warm, warm_opt), with_train_state=False)
    assert warm_opt.param_groups[0]["lr"] == 0.5 and torch.equal(warm.lora_B, saved_b)
    assert float(warm_opt.state[warm.lora_A]["step"]) == 3


def test_no_pickle_is_written_or_read(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    m, opt = _trained()
    for target, name in ((pickle, "dump"), (pickle, "dumps"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(target, name, refuse)
    monkeypatch.setattr(torch, "save", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    path = tmp_path / "step-000003"
    save_checkpoint(path, TorchTrainable(m, opt), TrainState(step=3))
    load_checkpoint(path, TorchTrainable(*_fresh()))
    read_checkpoint(path)
    monkeypatch.undo()
    files = sorted(os.listdir(path))
    assert [f for f in files if not f.endswith((".json", ".safetensors"))] == [], files
    for name in files:  # every file is what its name says: JSON, or a safetensors header + raw tensors
        if name.endswith(".json"):
            json.loads((path / name).read_text())
        else:
            with safe_open(str(path / name), framework="pt") as f:
                assert f.keys()


def test_non_json_state_is_refused_naming_the_field_and_nothing_is_written(tmp_path):
    m, opt = _trained()
    with pytest.raises(CheckpointFormatError, match=r"train_state\.extra\.who.*does not pickle"):
        save_checkpoint(
            tmp_path / "step-000003", TorchTrainable(m, opt), TrainState(step=3, extra={"who": object()})
        )
    assert list(tmp_path.iterdir()) == []


def test_incomplete_checkpoints_are_ignored_and_resume_rules(tmp_path):
    m, opt = _trained()
    for step in (4, 8):
        save_checkpoint(
            tmp_path / "checkpoints" / f"step-{step:06d}", TorchTrainable(m, opt), TrainState(step=step)
        )
    partial = tmp_path / "checkpoints" / "step-000012"
    partial.mkdir()
    (partial / "shard-00001-model-00001-of-00001.safetensors").write_bytes(b"partial")
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [4, 8]
    assert [p.name for p in resume_candidates(tmp_path, "auto")] == ["step-000004", "step-000008"]
    assert resume_candidates(tmp_path, "never") == []
    assert resume_candidates(tmp_path / "empty", "auto") == []
    with pytest.raises(ResumeError, match="no complete checkpoint"):
        resume_candidates(tmp_path / "empty", "must")
    with pytest.raises(ResumeError, match="not a complete checkpoint"):
        resume_candidates(tmp_path, str(partial))
    assert read_train_state(tmp_path / "checkpoints" / "step-000008").step == 8


def test_keep_last_k_deletes_only_this_branch_and_a_kill_mid_delete_leaves_no_damaged_checkpoint(
    tmp_path, monkeypatch
):
    from ltxdist.training import run_dir
    from ltxdist.training.callbacks import CheckpointAndExport
    from ltxdist.training.run_dir import remove_partial_files

    m, opt = _trained()
    for step in (2, 4, 6, 8):
        save_checkpoint(
            tmp_path / "checkpoints" / f"step-{step:06d}", TorchTrainable(m, opt), TrainState(step=step)
        )
    keeper = CheckpointAndExport(tmp_path, every_n_steps=2, keep_last_k=1, strategy_name="text_to_video")

    def killed_halfway(path, ignore_errors=False):  # the process dies after removing one file
        next(p for p in sorted(path.iterdir()) if p.suffix == ".safetensors").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(run_dir.shutil, "rmtree", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        keeper._keep_last_k(4)  # this run just wrote step 4; 6 and 8 are not its own
    monkeypatch.undo()
    # The half-deleted step 2 is under a temporary name: not a checkpoint, and removed at the next start.
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [4, 6, 8]
    assert not (tmp_path / "checkpoints" / "step-000002").exists()
    remove_partial_files(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000004",
        "step-000006",
        "step-000008",
    ]


def test_keep_last_k_that_cannot_delete_warns_and_training_goes_on(tmp_path, monkeypatch, caplog):
    """Rank 0 cleans up alone before a barrier: an error there would leave the other ranks waiting for
    the collective timeout. A checkpoint it cannot delete stays, with a warning."""
    import logging

    from ltxdist.training import callbacks
    from ltxdist.training.callbacks import CheckpointAndExport

    m, opt = _trained()
    for step in (2, 4):
        save_checkpoint(
            tmp_path / "checkpoints" / f"step-{step:06d}", TorchTrainable(m, opt), TrainState(step=step)
        )
    keeper = CheckpointAndExport(tmp_path, every_n_steps=2, keep_last_k=1, strategy_name="text_to_video")

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(callbacks, "delete_checkpoint", denied)
    with caplog.at_level(logging.WARNING, logger="ltxdist"):
        keeper._keep_last_k(4)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [2, 4] and "could not delete" in caplog.text


def test_a_damaged_file_is_named_and_the_previous_checkpoint_loads_instead(tmp_path):
    m, opt = _trained()
    older, newer = tmp_path / "step-000004", tmp_path / "step-000008"
    save_checkpoint(older, TorchTrainable(m, opt), TrainState(step=4))
    _step(m, opt)
    save_checkpoint(newer, TorchTrainable(m, opt), TrainState(step=8))
    (tensors,) = newer.glob("*.safetensors")
    good = tensors.read_bytes()
    for damage in (good[:-16], b"\0" * len(good), good[:8] + b"{" * (len(good) - 8)):  # cut, zeroed, junk
        tensors.write_bytes(damage)
        with pytest.raises(CheckpointFormatError, match=str(tensors)):
            load_checkpoint(newer, TorchTrainable(*_fresh()))
        back = _fresh()
        path, state = load_newest([older, newer], lambda p, b=back: load_checkpoint(p, TorchTrainable(*b)))
        assert path == older and state.step == 4
    # Without an older one, the error naming the file is the answer (nothing is silently skipped).
    with pytest.raises(CheckpointFormatError, match=str(tensors)):
        load_newest([newer], lambda p: load_checkpoint(p, TorchTrainable(*_fresh())))
    # A foreign or missing file is caught from meta.json's inventory.
    tensors.write_bytes(good)
    (newer / "shard-00002-model-00001-of-00001.safetensors").write_bytes(good)
    with pytest.raises(CheckpointFormatError, match="not part of the checkpoint"):
        load_checkpoint(newer, TorchTrainable(*_fresh()))


def test_other_adapters_are_a_mismatch_naming_the_flags_not_damage(tmp_path):
    m, opt = _trained()
    save_checkpoint(tmp_path / "step-000003", TorchTrainable(m, opt), TrainState(step=3))
    other = torch.nn.Module()
    other.lora_A = torch.nn.Parameter(torch.zeros(2, 4))
    with pytest.raises(CheckpointMismatchError, match=r"lora\.rank / lora\.targets"):
        load_checkpoint(tmp_path / "step-000003", TorchTrainable(other, None))


def test_an_old_format_checkpoint_is_refused_with_the_convert_command(tmp_path):
    old = tmp_path / "run" / "checkpoints" / "step-000003"
    old.mkdir(parents=True)
    save_safetensors_atomic({"t0": torch.ones(2)}, old / "tensors.safetensors")
    (old / "state.json").write_text('{"__dict__": {"global_step": 3}}')
    (old / "meta.json").write_text(json.dumps({"complete": True, "global_step": 3, "format": 1}))
    with pytest.raises(LegacyCheckpointError, match=rf"python -m ltxdist\.checkpoint\.convert {old}"):
        load_newest([old], lambda p: load_checkpoint(p, TorchTrainable(*_fresh())))


def test_convert_rewrites_an_old_checkpoint_of_a_real_run(tiny_ckpt, tiny_data, tmp_path):
    """The converter names the old position-keyed moments from the run's config (LoRA built on meta)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ltxdist.checkpoint.convert import adapter_order, main
    from ltxdist.config.store import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"model.checkpoint={tiny_ckpt}", f"data.path={tiny_data}", "lora.rank=2"]
        )
    order = adapter_order(cfg)
    run = tmp_path / "run"
    old = run / "checkpoints" / "step-000003"
    old.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    g = torch.Generator().manual_seed(0)
    full = {name: torch.randn(3, 2, generator=g) for name in order}
    tensors, tags, items = {}, {}, []
    for i, name in enumerate(order):
        tensors[f"a{i}"] = full[name]
        tags[name] = {"__tensor__": f"a{i}"}
        tensors[f"m{i}"] = full[name] * 10
        items.append([i, {"__dict__": {"exp_avg": {"__tensor__": f"m{i}"}}}])
    # Format 2 (FSDP2): the first adapter as rows 0-1 and 2 written by 2 ranks, as the old writer did.
    first = order[0]
    tags[first] = {"__sharded__": "s0", "shape": [3, 2], "dim": 0}
    for rank, (start, stop) in enumerate(((0, 2), (2, 3))):
        save_safetensors_atomic(
            {"s0": full[first][start:stop]},
            old / "shards" / f"rank-{rank:05d}.safetensors",
            metadata={"layout": json.dumps({"s0": [start, stop]})},
        )
    groups = [
        {"__dict__": {"lr": 0.25, "betas": {"__tuple__": [0.9, 0.99]}, "params": list(range(len(order)))}}
    ]
    tree = {
        "__dict__": {
            "state_dict": {"__dict__": tags},
            "optimizer_states": [{"__dict__": {"state": {"__items__": items}, "param_groups": groups}}],
            "global_step": 3,
            "ltxdist": {"__dict__": {"batches_seen": 3}},
            "ltxdist_layout": {"__dict__": {"world_size": 2, "micro_batch_size": 1}},
        }
    }
    save_safetensors_atomic(tensors, old / "tensors.safetensors")
    (old / "state.json").write_text(json.dumps(tree))
    (old / "meta.json").write_text(json.dumps({"complete": True, "global_step": 3, "format": 2, "shards": 2}))
    main([str(old)])
    assert not (old / "shards").exists() and not (old / "state.json").exists()  # replaced in place
    got = read_checkpoint(old)
    assert got.adapters.keys() == set(order)
    for name in order:
        assert torch.equal(got.adapters[name], full[name])
        assert torch.equal(got.optimizer[name]["exp_avg"], full[name] * 10)  # by name, from the position
    assert got.train_state.step == 3 and got.train_state.data == {"batches_seen": 3}
    assert got.train_state.layout["data_parallel_size"] == 2 and got.train_state.optimizer[0]["lr"] == 0.25


def test_atomic_file_leaves_old_content_on_failure(tmp_path):
    target = tmp_path / "lora.safetensors"
    save_safetensors_atomic({"a": torch.ones(2)}, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors"]


def test_atomic_writes_get_normal_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    target = tmp_path / "x.safetensors"
    save_safetensors_atomic({"a": torch.ones(1)}, target)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_8bit_adamw_state_round_trips(tmp_path):
    """bitsandbytes' AdamW8bit (the ID-LoRA recipe's optimizer) keeps its quantised moments in a nested
    dict and its step as a Python int: both come back, and the next step equals an uninterrupted one."""
    bnb = pytest.importorskip("bitsandbytes")

    def model_and_optimizer(seed: int):
        torch.manual_seed(seed)
        m = torch.nn.Linear(64, 64)  # 4,096 weights: bitsandbytes' smallest 8-bit (block-wise) state
        return m, bnb.optim.AdamW8bit(m.parameters(), lr=0.1)

    def step(m, opt, seed):
        m(torch.randn(3, 64, generator=torch.Generator().manual_seed(seed))).square().sum().backward()
        opt.step()
        opt.zero_grad()

    m, opt = model_and_optimizer(0)
    for seed in (1, 2):
        step(m, opt, seed)
    saved = opt.state[m.weight]
    assert saved["state1"].dtype == torch.uint8  # really the 8-bit state
    save_checkpoint(tmp_path / "step-000002", TorchTrainable(m, opt), TrainState(step=2))
    back, back_opt = model_and_optimizer(1)
    load_checkpoint(tmp_path / "step-000002", TorchTrainable(back, back_opt))
    restored = back_opt.state[back.weight]
    assert restored["step"] == saved["step"] == 2 and isinstance(restored["step"], int)
    for key in ("state1", "state2", "absmax1", "absmax2", "qmap1", "qmap2"):
        assert torch.equal(restored[key], saved[key]), key
    step(m, opt, 3)
    step(back, back_opt, 3)
    assert torch.equal(back.weight, m.weight) and torch.equal(back.bias, m.bias)
