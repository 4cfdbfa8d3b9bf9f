"""`python -m ltxdist.parallel.layout [hydra overrides]`: print the resolved config and the world layout
without starting anything (`launch/train.sh --dry-run`). Fails, naming the flag, where training would."""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import OmegaConf

from ltxdist.parallel.dims import ParallelDims


def describe_layout(cfg: Any) -> str:
    p = cfg.parallel
    dims = ParallelDims.from_config(p)
    world, sp, data_parallel = dims.world_size, dims.sequence, dims.data_parallel_size
    accumulate = cfg.trainer.accumulate_grad_batches
    per_step = data_parallel * cfg.data.batch_size * accumulate
    lines = [
        f"parallel         {dims.describe()}",
        f"mesh             replicate {dims.replicate} x shard {dims.shard} x sequence {dims.sequence}",
        f"world            {p.num_nodes} node(s) x {p.devices} process(es) = {world}",
        f"accelerator      {p.accelerator} "
        f"(backend {p.get('process_group_backend') or 'nccl on GPU, gloo on CPU'})",
        f"global batch     {data_parallel} x data.batch_size {cfg.data.batch_size} x accumulate {accumulate} "
        f"= {per_step} samples per optimizer step",
        f"steps            {cfg.trainer.max_steps} (lr schedule {cfg.optim.schedule.name}, stepped once per "
        "optimizer step)",
        f"run dir          {cfg.run.dir} (resume={cfg.run.resume})",
    ]
    if sp > 1:
        lines.insert(
            3,
            f"sequence par.    {data_parallel} group(s) of {sp} consecutive processes; each group shares its "
            f"samples, each process holds 1/{sp} of the tokens (Ulysses all-to-all over heads)",
        )
    if p.compile:
        lines.append("compile          torch.compile per transformer block")
    if p.get("offload_optimizer") or p.get("offload_params"):  # DeepSpeed options only
        offload = f"optimizer={p.offload_optimizer} params={p.get('offload_params', False)}"
        lines.append(f"offload          {offload} (to CPU)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from omegaconf.errors import OmegaConfBaseException

    from ltxdist.config.hydra_errors import explain_read_error
    from ltxdist.config.schema import ConfigError, validate_config
    from ltxdist.config.store import compose_train_config

    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        # As ltxdist-train reads its config: composing explains a misspelt key or option in one line,
        # reading explains a missing value (`???`, e.g. data=shards without data.path).
        cfg = compose_train_config(overrides)
        validate_config(cfg)
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
    except (ConfigError, OmegaConfBaseException) as err:
        if isinstance(err, OmegaConfBaseException):
            err = explain_read_error(err)
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    print("# resolved config")
    print(resolved)
    print("# world layout")
    print(describe_layout(cfg))


if __name__ == "__main__":
    main()
