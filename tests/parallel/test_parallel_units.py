"""Fast checks of ltxdist.parallel: shard layout, sharded checkpoints (N -> M processes, kill while
writing), DeepSpeed config, the order of parallelize_transformer, data position across layouts, and
the launch / SLURM scripts (bash -n and dry runs)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from parallel_helpers import LAUNCH, REPO, env

from ltxdist.config import ConfigError, validate_config
from ltxdist.config.store import CONF_DIR, register_configs
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.parallel.deepspeed_config import deepspeed_config
from ltxdist.parallel.shard_rows import LocalSlice, chunk_bounds
from ltxdist.training.checkpoint_io import SafetensorsCheckpointIO, read_checkpoint
from ltxdist.training.run_dir import complete_checkpoints, resolve_resume

SLURM = REPO / "slurm"


def _compose(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


# -- shard layout and sharded checkpoints ----------------------------------------------------------
def test_chunk_bounds_follow_torch_chunk():
    for size, world in itertools.product(range(10), range(1, 5)):
        pieces = torch.arange(size).chunk(world) if size else ()
        for rank in range(world):
            start, stop = chunk_bounds(size, world, rank)
            want = pieces[rank].tolist() if rank < len(pieces) else []
            assert list(range(start, stop)) == want, (size, world, rank)


def _write_sharded(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from ltxdist.training.checkpoint_io import save_sharded_checkpoint

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    full = _reference_tensors()
    state = {
        "state_dict": {"a": distribute_tensor(full["a"], mesh, [Shard(0)])},  # 5 rows: 3 + 2
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": full["m"]}}}],
        "replicated": distribute_tensor(full["r"], mesh, [Replicate()]),
        "global_step": 3,
    }
    state["optimizer_states"][0]["state"][0]["exp_avg"] = distribute_tensor(full["m"], mesh, [Shard(0)])

    def broadcast(obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    save_sharded_checkpoint(
        state, out, rank=rank, world_size=world, broadcast=broadcast, barrier=dist.barrier
    )
    dist.destroy_process_group()


def _reference_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(5, 3, generator=g),
        "m": torch.randn(7, generator=g),
        "r": torch.randn(2, generator=g),
    }


def test_sharded_checkpoint_written_by_2_processes_reads_whole_and_in_any_split(tmp_path):
    out = tmp_path / "step-000003"
    torch.multiprocessing.spawn(_write_sharded, args=(2, str(tmp_path / "init"), str(out)), nprocs=2)
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "rank-00000.safetensors",
        "rank-00001.safetensors",
    ]
    full = _reference_tensors()
    back = read_checkpoint(out)  # assembled in full: what a 1-process run (or DDP / DeepSpeed) loads
    assert torch.equal(back["state_dict"]["a"], full["a"])
    assert torch.equal(back["optimizer_states"][0]["state"][0]["exp_avg"], full["m"])
    assert torch.equal(back["replicated"], full["r"]) and back["global_step"] == 3
    # A 3-process run reads only its own rows of each sharded tensor (torch.chunk split of 3).
    lazy = read_checkpoint(out, lazy_shards=True)["state_dict"]["a"]
    for rank in range(3):
        start, stop = chunk_bounds(5, 3, rank)
        assert torch.equal(lazy.read(LocalSlice(0, start, stop)), full["a"][start:stop])
    # The plain reader (what single / DDP runs use through Lightning) sees the same.
    assert torch.equal(SafetensorsCheckpointIO().load_checkpoint(out)["state_dict"]["a"], full["a"])


_KILL_WHILE_WRITING = textwrap.dedent(
    """
    import os, signal, sys, torch
    import ltxdist.training.checkpoint_io as cio
    run, mode = sys.argv[1], sys.argv[2]
    state = lambda step: {"state_dict": {"w": torch.full((3,), float(step))}, "global_step": step}
    one = dict(rank=0, world_size=1, broadcast=lambda x: x, barrier=lambda: None)
    write = (lambda s, p: cio.save_sharded_checkpoint(s, p, **one)) if mode == "sharded" else (
        lambda s, p: cio.SafetensorsCheckpointIO().save_checkpoint(s, p))
    write(state(4), run + "/checkpoints/step-000004")
    real = cio.save_safetensors_atomic
    def die_after_first_file(*args, **kwargs):  # the kill lands between two files of checkpoint 8
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    cio.save_safetensors_atomic = die_after_first_file
    write(state(8), run + "/checkpoints/step-000008")
    """
)


@pytest.mark.parametrize("mode", ["sharded", "plain"])
def test_kill_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path, mode):
    proc = subprocess.run([sys.executable, "-c", _KILL_WHILE_WRITING, str(tmp_path), mode], env=env())
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert any(".tmp-" in name for name in leftovers), leftovers  # the kill really was mid-write
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [4]
    resume = resolve_resume(tmp_path, "auto")
    assert resume is not None and resume.name == "step-000004"
    assert torch.equal(read_checkpoint(resume)["state_dict"]["w"], torch.full((3,), 4.0))
    # The next run's first checkpoint callback clears the partial directory.
    from ltxdist.training.callbacks import _remove_partial_checkpoints

    _remove_partial_checkpoints(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000004"]


# -- config ------------------------------------------------------------------------------------------
def test_deepspeed_config_generation():
    cfg = SimpleNamespace(name="deepspeed_zero2", offload_optimizer=False, offload_params=False)
    z2 = deepspeed_config(cfg, on_gpu=True)
    assert z2["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in z2["zero_optimization"]
    assert z2["zero_allow_untested_optimizer"] and not z2["zero_force_ds_cpu_optimizer"]
    assert "gradient_accumulation_steps" not in z2  # Lightning sets it from the trainer
    cfg = SimpleNamespace(name="deepspeed_zero3", offload_optimizer=True, offload_params=True)
    z3 = deepspeed_config(cfg, on_gpu=False)["zero_optimization"]
    assert z3["stage"] == 3 and z3["offload_param"]["device"] == "cpu"
    assert z3["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert z3["overlap_comm"] is False  # no CUDA streams on the CPU


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        (["parallel=fsdp2", "parallel.offload_optimizer=true"], "parallel.offload_optimizer"),
        (["parallel=deepspeed_zero2", "parallel.offload_params=true"], "parallel.offload_params"),
        (["parallel=fsdp2", "parallel.reduce_dtype=float16"], "parallel.reduce_dtype"),
        (["parallel.name=fsdp3"], "parallel"),
    ],
)
def test_parallel_config_errors_name_the_flag(overrides, flag, tiny_ckpt, tmp_path):
    cfg = _compose([*overrides, f"model.checkpoint={tiny_ckpt}", f"data.path={tmp_path}"])
    with pytest.raises(ConfigError, match=rf"^{flag}"):
        validate_config(cfg)


def test_parallelize_applies_checkpointing_then_compile(tiny_ckpt):
    from ltxdist.lora import LoRASpec, inject_lora
    from ltxdist.models import build_meta_transformer, read_checkpoint_info
    from ltxdist.parallel import parallelize_transformer

    model = build_meta_transformer(read_checkpoint_info(tiny_ckpt).config)
    inject_lora(model, LoRASpec(rank=2))
    cfg = SimpleNamespace(name="ddp", compile=True)
    assert parallelize_transformer(model, cfg, gradient_checkpointing=True) is model
    assert model._enable_gradient_checkpointing
    assert all(block._compiled_call_impl is not None for block in model.transformer_blocks)
    # Compiling in place keeps parameter names: checkpoints and exports see the same keys.
    assert not any("_orig_mod" in name for name, _ in model.named_parameters())


# -- data position across layouts -----------------------------------------------------------------
def test_data_position_converts_between_process_counts_without_repeat_or_skip(tiny_ckpt, tmp_path):
    from ltxdist.data.synthetic import write_synthetic_dataset
    from ltxdist.training.module import LTXLoRAModule

    data = tmp_path / "data"
    write_synthetic_dataset(data, tiny_ckpt, num_samples=16, samples_per_shard=4, seed=1)

    def ids(world: int, batch: int, skip: int, steps: int) -> list[list[str]]:
        streams = [
            iter(
                CachedLatentStream(
                    data,
                    StreamPlan(
                        batch_size=batch, seed=0, rank=r, world_size=world, shuffle_buffer=1, split="sample"
                    ),
                    skip_batches=skip,
                )
            )
            for r in range(world)
        ]
        return [sorted(i for s in streams for i in next(s)["ids"]) for _ in range(steps)]

    def converted(batches_seen: int, saved_world: int, saved_batch: int, world: int, batch: int) -> int:
        module = SimpleNamespace(
            _trainer=object(),
            trainer=SimpleNamespace(world_size=world),
            cfg=SimpleNamespace(data=SimpleNamespace(batch_size=batch)),
        )
        ckpt = {"ltxdist_layout": {"world_size": saved_world, "micro_batch_size": saved_batch}}
        return LTXLoRAModule._resumed_data_position(module, batches_seen, ckpt)

    uninterrupted = ids(1, 2, 0, 10)  # global batches of 2
    assert converted(3, 1, 2, 2, 1) == 3  # 1 process x batch 2 -> 2 processes x batch 1
    assert ids(2, 1, converted(3, 1, 2, 2, 1), 7) == uninterrupted[3:]
    assert converted(5, 2, 1, 1, 2) == 5  # and back
    assert ids(1, 2, converted(5, 2, 1, 1, 2), 5) == uninterrupted[5:]
    with pytest.raises(ValueError, match=r"data\.batch_size / parallel\.devices"):
        converted(3, 1, 1, 2, 1)  # 3 samples do not fill whole global batches of 2


# -- launch and SLURM scripts ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "script", ["launch/train.sh", "slurm/train_1node.sbatch", "slurm/train_multinode.sbatch", "slurm/env.sh"]
)
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0


def test_launch_dry_run_prints_config_layout_and_command(tiny_ckpt, tmp_path):
    proc = subprocess.run(
        [
            "bash",
            str(LAUNCH),
            "--dry-run",
            "parallel=fsdp2",
            f"model.checkpoint={tiny_ckpt}",
            f"data.path={tmp_path}",
        ],
        env={**env(), "NPROC": "2"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "# resolved config" in out and "name: fsdp2" in out
    assert "1 node(s) x 2 process(es) = 2" in out
    assert "--standalone --nnodes 1 --nproc_per_node 2 -m ltxdist.training.train" in out
    assert out.rstrip().endswith("parallel.devices=2 parallel.num_nodes=1")
    bad = subprocess.run(
        ["bash", str(LAUNCH), "--dry-run", "parallel=single", f"data.path={tmp_path}"],
        env={**env(), "NPROC": "2"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "parallel=ddp" in bad.stderr  # the error names the flag to fix


def test_slurm_multinode_dry_run_renders_torchrun_for_2_nodes(tmp_path):
    slurm_env = {
        **env(),
        "DRY_RUN": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_SUBMIT_DIR": str(REPO),
        "PATH": "/usr/bin:/bin",  # no scontrol here: the template falls back to parsing the list
    }
    proc = subprocess.run(
        [
            "bash",
            str(SLURM / "train_multinode.sbatch"),
            "parallel=fsdp2",
            "model=ltx23_22b",
            f"data.path={tmp_path}",
        ],
        env=slurm_env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=1" in out
    assert "2 node(s) x 8 process(es) = 16" in out
    assert (
        "--nnodes 2 --rdzv_backend c10d --rdzv_endpoint gpu07:24242 --rdzv_id 4242 --nproc_per_node 8 "
        "-m ltxdist.training.train parallel=fsdp2 model=ltx23_22b"
    ) in out
    assert out.rstrip().endswith("parallel.devices=8 parallel.num_nodes=2")
    one = subprocess.run(
        ["bash", str(SLURM / "train_1node.sbatch"), "parallel=deepspeed_zero3", f"data.path={tmp_path}"],
        env={**slurm_env, "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "gpu07"},
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    assert "1 node(s) x 8 process(es) = 8" in one.stdout and "--standalone" in one.stdout
    # The SLURM directives that make preemption work are there.
    for name in ("train_1node.sbatch", "train_multinode.sbatch"):
        text = (SLURM / name).read_text()
        assert "#SBATCH --signal=USR1@120" in text and "#SBATCH --requeue" in text
