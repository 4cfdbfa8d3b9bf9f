"""`ltxdist-train`: the console entry point.

`--help` is answered here from the conf/ tree (Hydra's own help rebuilds its config repository once per
config group: seconds); Hydra's other describe-only flags (`--hydra-help`, `--info`, `--cfg`) go to a
Hydra app that never imports torch or Lightning. Every other command line runs
`ltxdist.training.train.main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HELP = ("--help", "-h")
# Flags with which Hydra prints something and returns without running the task.
_DESCRIBE_ONLY = ("--hydra-help", "--version", "--info", "-i", "--cfg", "-c")

USAGE = """usage: ltxdist-train [GROUP=OPTION ...] [KEY=VALUE ...]

Train a LoRA or IC-LoRA adapter for LTX-2.3. The config is conf/train.yaml composed with Hydra:
choose an option per group, override any key. A misspelt key is an error that names it.

config groups (GROUP=OPTION, the default first):
{groups}

examples:
  ltxdist-train experiment=tiny_demo                          a tiny run on the CPU (minutes)
  ltxdist-train model=ltx23_22b data=shards data.path=/data/shards run.name=my_style
  torchrun --nproc_per_node 8 -m ltxdist.training.train ... parallel=ddp parallel.devices=8

resuming: run.resume=auto (default) continues the newest checkpoint of run.dir when it belongs to the
same run (same base, data, strategy, LoRA shape, optimizer), otherwise it refuses and says what
differs; run.resume=force continues anyway; a new run goes in another folder (run.name=NEW).
Ctrl-C saves a checkpoint.

more:
  ltxdist-train --cfg job [overrides]    the composed config these overrides give
  ltxdist-train --hydra-help             Hydra's own flags (--multirun, ...)
  docs/configuration.md                  every key with its default and allowed values
"""


def _describe_only(argv: list[str]) -> bool:
    return any(a in _DESCRIBE_ONLY or a.startswith(("--info=", "--cfg=")) for a in argv)


def _defaults(conf_dir: Path) -> dict[str, str]:
    """group -> default option, from the defaults list of conf/train.yaml (read as plain YAML)."""
    import yaml

    listed = yaml.safe_load((conf_dir / "train.yaml").read_text()).get("defaults", [])
    return {k: str(v) for item in listed if isinstance(item, dict) for k, v in item.items()}


def usage(conf_dir: Path) -> str:
    defaults = _defaults(conf_dir)
    rows = []
    for group in sorted(p for p in conf_dir.iterdir() if p.is_dir()):
        options = sorted(p.stem for p in group.glob("*.yaml"))
        first = defaults.get(group.name)
        if first in options:
            options = [first, *(o for o in options if o != first)]
        rows.append(f"  {group.name:<11} {', '.join(options)}")
    return USAGE.format(groups="\n".join(rows))


def main() -> None:
    argv = sys.argv[1:]
    if any(a in _HELP for a in argv):
        from ltxdist.config.store import CONF_DIR

        print(usage(CONF_DIR), end="")
        return
    if not _describe_only(argv):
        from ltxdist.training.train import main as train_main

        train_main()
        return
    import hydra

    from ltxdist.config.store import CONF_DIR, register_configs

    register_configs()

    @hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
    def describe(cfg: object) -> None:  # Hydra prints and returns before calling it
        raise RuntimeError("ltxdist-train: a describe-only flag reached the training task")

    describe()


if __name__ == "__main__":
    main()
