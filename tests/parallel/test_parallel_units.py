"""Fast checks of ltxdist.parallel and its checkpoints: shard layout, the layout object's sizes and
errors, checkpoints written by 2 ranks (kill while writing, a full disk on one rank, warm start of
FSDP2-sharded adapters), DeepSpeed config, the order of parallelize_transformer and FSDP2's
mixed-precision policy, data position across layouts, and the launch / SLURM scripts (bash -n and dry
runs)."""

from __future__ import annotations

import errno
import itertools
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from e2e_utils import free_port
from hydra import compose, initialize_config_dir
from parallel_helpers import LAUNCH, REPO, env

from ltxdist.checkpoint import read_checkpoint
from ltxdist.config import ConfigError, validate_config
from ltxdist.config.store import CONF_DIR, register_configs
from ltxdist.data.streaming import CachedLatentStream, StreamPlan
from ltxdist.parallel.deepspeed_config import deepspeed_config
from ltxdist.parallel.shard_rows import chunk_bounds
from ltxdist.training.run_dir import complete_checkpoints

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


_KILL_WHILE_WRITING = textwrap.dedent(
    """
    import os, signal, sys, torch
    import ltxdist.checkpoint.checkpointer as cp
    from ltxdist.checkpoint import TorchTrainable, TrainState
    run = sys.argv[1]
    def write(step):
        module = torch.nn.Module()
        module.w = torch.nn.Parameter(torch.full((3,), float(step)))
        path = f"{run}/checkpoints/step-{step:06d}"
        cp.save_checkpoint(path, TorchTrainable(module, None), TrainState(step=step))
    write(4)
    cp.write_json_atomic = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # after the tensor file
    write(8)
    """
)


def test_kill_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _KILL_WHILE_WRITING, str(tmp_path)], env=env())
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert any(".tmp-" in name for name in leftovers), leftovers  # the kill really was mid-write
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [4]
    assert torch.equal(
        read_checkpoint(tmp_path / "checkpoints" / "step-000004").adapters["w"], torch.full((3,), 4.0)
    )
    # The next run clears the partial directory before it looks for a checkpoint.
    assert [p.name for p in resume_candidates_after_cleanup(tmp_path)] == ["step-000004"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000004"]


def resume_candidates_after_cleanup(run: Path) -> list[Path]:
    from ltxdist.training.checkpointing import resume_candidates
    from ltxdist.training.run_dir import remove_partial_files

    remove_partial_files(run)
    return resume_candidates(run, "auto")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-rank launch of two_rank_checks.py (warm start under FSDP2; a full disk on rank 1; rank 0
    killed mid-write)."""
    from two_rank_checks import stage_module

    from ltxdist.checkpoint import TorchTrainable, TrainState, save_checkpoint

    folder = tmp_path_factory.mktemp("two-ranks")
    save_checkpoint(folder / "plain", TorchTrainable(*stage_module()), TrainState(step=3))
    script = Path(__file__).with_name("two_rank_checks.py")
    rank_env = env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    ranks = [
        subprocess.Popen([sys.executable, str(script), str(folder), str(r)], env=rank_env) for r in (0, 1)
    ]
    try:
        assert ranks[0].wait(timeout=300) == -signal.SIGKILL
    finally:
        # Rank 1 now waits in a collective for a rank that is gone (or failed on the broken connection);
        # torchrun / SLURM would kill it: so does the test.
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return folder


def test_kill_of_rank_0_while_2_ranks_write_a_sharded_checkpoint_keeps_the_previous_one(two_ranks):
    run = two_ranks / "run"
    partial = [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]
    assert len(partial) == 1, partial  # the kill really landed late in the write: every tensor file
    assert sorted(p.name for p in partial[0].iterdir()) == [
        "shard-00001-model-00001-of-00001.safetensors",
        "shard-00002-model-00001-of-00001.safetensors",
    ]
    assert [s for s, _ in complete_checkpoints(run)] == [4]
    # Written as 3 + 2 rows by 2 ranks, read whole by one process (any layout reads any checkpoint).
    got = read_checkpoint(run / "checkpoints" / "step-000004")
    assert torch.equal(got.adapters["w"], torch.arange(10.0).reshape(5, 2) + 4) and got.train_state.step == 4


def test_a_full_disk_on_one_fsdp2_rank_stops_both_ranks_promptly_naming_the_path(two_ranks):
    """Rank 1 cannot write its piece; rank 0 could. Both fail at once (not after the 120 s collective
    timeout) with an error naming the checkpoint, and nothing of it is left."""
    run = two_ranks / "run"
    target = run / "checkpoints" / "step-000006"
    outcomes = [json.loads((run / f"full-disk-rank-{r}.json").read_text()) for r in (0, 1)]
    for rank, outcome in enumerate(outcomes):
        assert outcome["type"] == "AtomicWriteError", (rank, outcome)
        assert outcome["errno"] in (errno.EFBIG, errno.ENOSPC) and str(target) in outcome["error"], outcome
        assert "rank 1" in outcome["error"] and outcome["seconds"] < 30, outcome
    assert not target.exists() and not [p for p in (run / "checkpoints").iterdir() if "step-000006" in p.name]


def test_warm_start_of_fsdp2_sharded_adapters_matches_one_process(two_ranks):
    """Each of 2 FSDP2 ranks took its rows of the adapters and AdamW moments from a 1-process checkpoint
    and from a 2-rank sharded one; one AdamW step later, everything equals 1 process."""
    from safetensors.torch import load_file
    from two_rank_checks import Adapters, previous_stage, stage_grads, warm_start_and_step

    want = warm_start_and_step(Adapters(), two_ranks / "plain", stage_grads())

    def check(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-7, msg=key)

    for source in ("plain", "sharded"):
        check(load_file(str(two_ranks / f"result-{source}.safetensors")), want)
    # A wrong reference fails: the same step from the adapters without the carried AdamW moments.
    cold = Adapters()
    with torch.no_grad():
        for p, v in zip(cold.parameters(), previous_stage()[0].values(), strict=True):
            p.copy_(v)
    opt = torch.optim.AdamW(cold.parameters(), lr=0.1, weight_decay=0.0)
    for p, g in zip(cold.parameters(), stage_grads(), strict=True):
        p.grad = g
    opt.step()
    with pytest.raises(AssertionError):
        check(
            load_file(str(two_ranks / "result-sharded.safetensors")), {**want, "param0": cold.lora_A.detach()}
        )


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
    from ltxdist.config.store import compose_train_config

    # Options of another parallel option fail as the config is composed (config/closure.py).
    with pytest.raises(ConfigError, match=rf"^{flag}"):
        base = [f"model.checkpoint={tiny_ckpt}", f"data.path={tmp_path}"]
        validate_config(compose_train_config([*overrides, *base]))


@pytest.mark.parametrize(
    ("overrides", "dims"),
    [
        (["parallel=hsdp", "parallel.devices=4", "parallel.replicate=2"], (2, 2, 1)),
        (["parallel=hsdp", "parallel.devices=8", "parallel.num_nodes=4"], (4, 8, 1)),  # replicate = nodes
        (["parallel=sequence_parallel", "parallel.devices=8", "parallel.sequence_parallel=2"], (1, 4, 2)),
        (["parallel=ddp", "parallel.devices=4", "parallel.sequence_parallel=2"], (2, 1, 2)),
        (["parallel=deepspeed_zero3", "parallel.devices=4"], (1, 4, 1)),
    ],
)
def test_layout_sizes(overrides, dims, tmp_path):
    from ltxdist.parallel.dims import ParallelDims

    got = ParallelDims.from_config(_compose([*overrides, f"data.path={tmp_path}"]).parallel)
    assert (got.replicate, got.shard, got.sequence) == dims
    assert got.replicate * got.shard * got.sequence == got.world_size
    assert got.hsdp == (got.engine == "fsdp" and dims[0] > 1)


def test_zero_with_sequence_parallel_is_described_over_every_process(tmp_path):
    """DeepSpeed (no mpu) partitions over the whole world, sequence-parallel ranks included."""
    from ltxdist.parallel.dims import ParallelDims

    overrides = ["parallel=deepspeed_zero3", "parallel.devices=4", "parallel.sequence_parallel=2"]
    dims = ParallelDims.from_config(_compose([*overrides, f"data.path={tmp_path}"]).parallel)
    assert dims.describe() == "deepspeed_zero3: ZeRO-3 over 4 process(es)"
    assert dims.data_parallel_size == 2  # the data position still counts 2 groups of 2 ranks


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        (["parallel=hsdp", "parallel.devices=4", "parallel.replicate=3"], "parallel.replicate"),
        (
            ["parallel=hsdp", "parallel.devices=4", "parallel.replicate=2", "parallel.shard=4"],
            "parallel.shard",
        ),
        (["parallel=ddp", "parallel.devices=4", "parallel.replicate=2"], "parallel.replicate"),
        (["parallel.devices=2"], "parallel"),  # parallel=single
    ],
)
def test_layout_errors_name_the_flag(overrides, flag, tiny_ckpt, tmp_path):
    from ltxdist.config.store import compose_train_config

    # Composing refuses an option of an unselected variant (parallel.replicate under ddp); validating
    # refuses inconsistent sizes.
    with pytest.raises(ConfigError, match=rf"^{flag}"):
        validate_config(
            compose_train_config([*overrides, f"model.checkpoint={tiny_ckpt}", f"data.path={tmp_path}"])
        )


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


def test_fsdp2_mixed_precision_computes_in_bf16_and_keeps_lora_grads_fp32(tiny_ckpt, tiny_data, tmp_path):
    """One process (gloo, world 1), so no launch: the policy FSDP2 applies per block and at the root,
    what a LoRA layer sees in forward, and what the optimizer gets. With compile on, every FSDP2 unit
    is a compiled block (built on meta only: compiling on this CPU takes minutes)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from ltxdist.lora import LoRASpec, inject_lora
    from ltxdist.lora.inject import lora_modules
    from ltxdist.models import build_meta_transformer, read_checkpoint_info
    from ltxdist.parallel import parallelize_transformer
    from ltxdist.training.module import LTXLoRAModule

    def policy(unit: torch.nn.Module) -> tuple[torch.dtype, torch.dtype]:
        mp = unit._get_fsdp_state()._mp_policy
        return mp.param_dtype, mp.reduce_dtype

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        cfg = _compose(
            [
                f"model.checkpoint={tiny_ckpt}",
                f"data.path={tiny_data}",
                "model.dtype=bfloat16",
                "lora.dtype=float32",
                "lora.rank=4",
                "parallel=fsdp2",
                "parallel.devices=1",
                "parallel.accelerator=cpu",
            ]
        )
        module = LTXLoRAModule(cfg)
        mesh = module.parallel_mesh.fsdp_mesh  # built from the process group (no trainer here)
        assert mesh.ndim == 1 and mesh.size() == 1
        module.configure_model()
        model = module.transformer
        units = [*model.transformer_blocks, model]
        assert all(isinstance(u, FSDPModule) for u in units)
        assert {policy(u) for u in units} == {(torch.bfloat16, torch.float32)}
        seen: list[tuple[torch.dtype, torch.dtype]] = []
        lora = next(iter(lora_modules(model).values()))
        hook = lora.register_forward_pre_hook(lambda m, args: seen.append((m.lora_A.dtype, m.lora_B.dtype)))
        module.train()
        batch = next(iter(CachedLatentStream(tiny_data, StreamPlan(batch_size=1, seed=0)).iter_batches()))
        loss, _ = module.compute_loss(batch)
        loss.backward()
        hook.remove()
        assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}  # gathered in bf16 for compute
        for p in module.lora_parameters():  # stored, reduced and stepped in fp32
            assert isinstance(p, DTensor) and p.dtype == torch.float32
            assert p.grad is not None and p.grad.dtype == torch.float32

        meta = build_meta_transformer(read_checkpoint_info(tiny_ckpt).config).to(torch.bfloat16)
        inject_lora(meta, LoRASpec(rank=2))
        other = SimpleNamespace(**{**dict(cfg.parallel), "reduce_dtype": "bfloat16", "compile": True})
        parallelize_transformer(
            meta, other, gradient_checkpointing=True, fsdp_mesh=mesh, compute_dtype=torch.bfloat16
        )
        assert policy(meta) == (torch.bfloat16, torch.bfloat16)  # parallel.reduce_dtype reaches FSDP2
        for block in meta.transformer_blocks:
            assert isinstance(block, FSDPModule) and block._compiled_call_impl is not None
            assert policy(block) == (torch.bfloat16, torch.bfloat16)
    finally:
        dist.destroy_process_group()


# -- data position across layouts -----------------------------------------------------------------
def test_data_position_converts_between_process_counts_without_repeat_or_skip(tiny_ckpt, tmp_path):
    from ltxdist.data.position import convert_batches
    from ltxdist.data.synthetic import write_synthetic_dataset

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

    converted = convert_batches
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


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lora.rnak=4"], "config error: lora.rnak: not an option of lora (did you mean lora.rank?)"),
        (["parallel=fsdp3"], "config error: parallel=fsdp3: not an option of parallel (choices: "),
        (["data=shards"], "config error: data.path: no value given; set data.path=..."),
    ],
)
def test_dry_run_config_mistakes_are_one_line_as_in_training(overrides, expected, capsys):
    """The dry run (launch/train.sh --dry-run) explains a misspelt key, an unknown option and a missing
    mandatory value as ltxdist-train does: one line, no Hydra traceback or search path."""
    from ltxdist.parallel.layout import main

    with pytest.raises(SystemExit) as exit_:
        main(overrides)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(expected) and len(err.strip().splitlines()) == 1, err
    assert "+lora" not in err and "search path" not in err.lower()


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
            "parallel=hsdp",
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
    # the job's CPUs reach the task (Slurm >= 22.05's srun does not inherit --cpus-per-task)
    assert "srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=1 --cpus-per-task=64 env" in out
    assert "2 node(s) x 8 process(es) = 16" in out
    # parallel=hsdp: one replica per node, the base sharded over the node's 8 GPUs
    assert "replicate 2 x shard 8 x sequence 1" in out and "HSDP" in out
    assert (
        "--nnodes 2 --rdzv_backend c10d --rdzv_endpoint gpu07:24242 --rdzv_id 4242 --nproc_per_node 8 "
        "-m ltxdist.training.train parallel=hsdp model=ltx23_22b"
    ) in out
    assert out.rstrip().endswith("parallel.devices=8 parallel.num_nodes=2")
    one = subprocess.run(
        ["bash", str(SLURM / "train_1node.sbatch"), "parallel=deepspeed_zero3", f"data.path={tmp_path}"],
        env={**slurm_env, "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "gpu07", "SLURM_CPUS_PER_TASK": "32"},
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    assert "srun --kill-on-bad-exit=1 --nodes=1 --ntasks=1 --cpus-per-task=32 env" in one.stdout
    assert "1 node(s) x 8 process(es) = 8" in one.stdout and "--standalone" in one.stdout
    # The SLURM directives that make preemption work are there.
    for name in ("train_1node.sbatch", "train_multinode.sbatch"):
        text = (SLURM / name).read_text()
        assert "#SBATCH --signal=USR1@120" in text and "#SBATCH --requeue" in text
