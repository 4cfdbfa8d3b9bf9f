"""Registers the typed schema with Hydra and locates the conf/ tree."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from ltxdist.config.schema import GROUP_OPTIONS, TrainConfig

# conf/ sits next to the package in a checkout; LTXDIST_CONF points elsewhere (e.g. an installed copy).
CONF_DIR = Path(os.environ.get("LTXDIST_CONF", Path(__file__).resolve().parents[2] / "conf"))


@functools.cache
def register_configs() -> None:
    """The schema into Hydra's ConfigStore, once per process: the store is process-wide and hands out
    deep copies of what it holds (ConfigStore.load), while storing converts every dataclass again (tens of
    milliseconds, which each compose_train_config call used to pay)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    # Each option's dataclass, which conf/<group>/<option>.yaml names first in its defaults list.
    for group, options in GROUP_OPTIONS.items():
        for option, schema in options.items():
            store.store(group=f"schema/{group}", name=option, node=schema)


def compose_train_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """`conf/train.yaml` composed with Hydra overrides outside a Hydra app (dry runs, tests, benchmarks).
    A mistake (unknown key or option, a key of an unselected option, a value of the wrong type) raises
    ConfigError with one line naming the key and its group."""
    from hydra import compose, initialize_config_dir

    from ltxdist.config.closure import check_closed
    from ltxdist.config.hydra_errors import explain_compose_error

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
    except Exception as exc:  # Hydra and OmegaConf raise several types; each is explained or re-raised
        explained = explain_compose_error(exc, list(overrides))
        if explained is None:
            raise
        raise explained from exc
    check_closed(cfg)
    return cfg
