import os

import pytest
import torch

from ltxdist.io import atomic_file, save_safetensors_atomic
from ltxdist.training.checkpoint_io import CheckpointFormatError, SafetensorsCheckpointIO
from ltxdist.training.run_dir import ResumeError, complete_checkpoints, resolve_resume


def _optimizer_like_state():
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.randn(3, 2)
    opt.step()
    return {
        "state_dict": {"w": p.detach()},
        "optimizer_states": [opt.state_dict()],
        "global_step": 5,
        "loops": {"fit_loop": {"epoch_progress": {"current": {"ready": 1}}}},
        "pair": (1, 2.5, None),
        "dtype": torch.bfloat16,
    }


def test_roundtrip_without_pickle(tmp_path):
    ckpt = _optimizer_like_state()
    io = SafetensorsCheckpointIO()
    io.save_checkpoint(ckpt, tmp_path / "step-000005")
    assert sorted(os.listdir(tmp_path / "step-000005")) == ["meta.json", "state.json", "tensors.safetensors"]
    back = io.load_checkpoint(tmp_path / "step-000005")
    assert torch.equal(back["state_dict"]["w"], ckpt["state_dict"]["w"])
    st = back["optimizer_states"][0]["state"]
    assert list(st) == [0]  # int keys survive
    assert torch.equal(st[0]["exp_avg"], ckpt["optimizer_states"][0]["state"][0]["exp_avg"])
    assert back["pair"] == (1, 2.5, None) and back["dtype"] is torch.bfloat16
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3, 2))], lr=0.1)
    opt.load_state_dict(back["optimizer_states"][0])


def test_non_json_values_are_refused_naming_the_path(tmp_path):
    with pytest.raises(CheckpointFormatError, match=r"checkpoint\.callbacks\.cb has type object"):
        SafetensorsCheckpointIO().save_checkpoint({"callbacks": {"cb": object()}}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_incomplete_checkpoints_are_ignored_and_resume_rules(tmp_path):
    io = SafetensorsCheckpointIO()
    for step in (4, 8):
        io.save_checkpoint({"global_step": step}, tmp_path / "checkpoints" / f"step-{step:06d}")
    partial = tmp_path / "checkpoints" / "step-000012"
    partial.mkdir()
    (partial / "tensors.safetensors").write_bytes(b"partial")
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [4, 8]
    assert resolve_resume(tmp_path, "auto").name == "step-000008"
    assert resolve_resume(tmp_path, "never") is None
    assert resolve_resume(tmp_path / "empty", "auto") is None
    with pytest.raises(ResumeError, match="no complete checkpoint"):
        resolve_resume(tmp_path / "empty", "must")
    with pytest.raises(ResumeError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(partial))


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
