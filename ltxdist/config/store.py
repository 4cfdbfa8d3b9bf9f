"""Registers the typed schema with Hydra and locates the conf/ tree."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from ltxdist.config.schema import TrainConfig

# conf/ sits next to the package in a checkout; LTXDIST_CONF points elsewhere (e.g. an installed copy).
CONF_DIR = Path(os.environ.get("LTXDIST_CONF", Path(__file__).resolve().parents[2] / "conf"))


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def compose_train_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """`conf/train.yaml` composed with Hydra overrides outside a Hydra app (dry runs, tests, benchmarks)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))
