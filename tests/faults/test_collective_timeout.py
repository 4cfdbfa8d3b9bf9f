"""A rank that hangs: `parallel.collective_timeout_s` reaches every distributed strategy, and a real gloo
collective that times out ends in an error naming the flag. (A whole DDP training run with one rank
stopped by SIGSTOP is in the soak, test_soak.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
from fault_helpers import ENV
from omegaconf import OmegaConf

from ltxdist.config.schema import GROUP_OPTIONS
from ltxdist.parallel import lightning_strategy
from ltxdist.parallel.timeouts import explain_collective_timeout


@pytest.mark.parametrize("name", ["ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"])
def test_every_distributed_strategy_gets_the_timeout(name, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    cfg = OmegaConf.structured(
        GROUP_OPTIONS["parallel"][name](accelerator="cpu", devices=2, collective_timeout_s=7.5)
    )
    strategy = lightning_strategy(cfg)
    assert strategy._timeout == timedelta(seconds=7.5)
    error = RuntimeError("[gloo/transport/tcp/pair.cc:534] Timed out waiting 7500ms for recv operation")
    strategy.on_exception(error)  # Lightning calls this with the exception that ends the run
    assert str(error).startswith("a collective operation") and "parallel.collective_timeout_s=7.5 s" in str(
        error
    )
    assert str(error).endswith("Timed out waiting 7500ms for recv operation")


_HANG = textwrap.dedent(
    """
    import json, sys, time
    from datetime import timedelta
    import torch, torch.distributed as dist
    rank, store = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2,
                            timeout=timedelta(seconds=2))
    if rank == 1:
        time.sleep(15)  # hung: never joins the all-reduce
        sys.exit(0)
    from ltxdist.parallel.timeouts import explain_collective_timeout
    try:
        dist.all_reduce(torch.ones(1))
    except Exception as exc:
        named = explain_collective_timeout(exc, timedelta(seconds=2))
        print(json.dumps({"type": type(exc).__name__, "named": named, "message": str(exc)}))
    """
)


def test_a_real_gloo_timeout_is_recognised_and_names_the_flag(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HANG, str(rank), str(tmp_path / "store")],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        out, err = procs[0].communicate(timeout=120)
    finally:
        procs[1].kill()
        procs[1].wait()
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    assert result, err[-3000:]
    assert result["named"] and isinstance(result["type"], str)
    assert "parallel.collective_timeout_s=2 s" in result["message"]
    assert "Backend error:" in result["message"]


def test_other_errors_are_left_alone():
    for error in (ValueError("timed out"), RuntimeError("CUDA out of memory")):
        before = str(error)
        assert not explain_collective_timeout(error, timedelta(seconds=1))
        assert str(error) == before
