"""The fault battery: fast tests run with the suite; `@pytest.mark.soak` tests only when asked for
(`make soak`, i.e. `pytest -m soak tests/faults`). Hypothesis profiles: few examples in the fast part,
many in the soak."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# database=None: no .hypothesis/ folder in the checkout; a failure prints its example to reproduce it.
_COMMON = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}
settings.register_profile("fast", max_examples=15, derandomize=True, **_COMMON)
settings.register_profile("soak", max_examples=300, **_COMMON)


def soak_enabled(config: pytest.Config) -> bool:
    """`make soak` sets LTXDIST_SOAK=1 (everything in tests/faults, fuzzing with many examples);
    `pytest -m soak` runs the soak tests alone."""
    return os.environ.get("LTXDIST_SOAK") == "1" or "soak" in (config.getoption("-m") or "")


def pytest_configure(config: pytest.Config) -> None:
    default = "soak" if soak_enabled(config) else "fast"
    settings.load_profile(os.environ.get("LTXDIST_FUZZ_PROFILE", default))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if soak_enabled(config):
        return
    skip = pytest.mark.skip(reason="soak battery: run it with `make soak`")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under the soak: the summary RELIABILITY.md quotes, as JSON (LTXDIST_SOAK_RESULTS, default
    runs/soak/soak_results.json), also printed."""
    if not soak_enabled(session.config):
        return
    import json
    import sys

    from fault_helpers import SOAK

    from ltxdist.io import write_json_atomic

    summary = {"exit_status": int(exitstatus), **SOAK.summary()}
    default = Path(__file__).resolve().parents[2] / "runs" / "soak" / "soak_results.json"
    path = Path(os.environ.get("LTXDIST_SOAK_RESULTS", default))
    write_json_atomic(path, summary)
    brief = {k: v for k, v in summary.items() if k != "details"}
    print(f"\nsoak summary ({path}):\n{json.dumps(brief, indent=2)}", file=sys.stderr)


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> Path:
    """16 cached samples in 4 shards, one bucket: the pristine copy (tests copy it before changing it)."""
    from ltxdist.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("fault-data")
    write_synthetic_dataset(out, tiny_ckpt, num_samples=16, samples_per_shard=4, seed=3)
    return out


@pytest.fixture()
def data_copy(fault_data: Path, tmp_path: Path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(fault_data, out)
    return out


@pytest.fixture(scope="session")
def tiny_encoders_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint with the tiny VAEs and text connectors, tiny Gemma folder) for ltxdist-prepare."""
    from ltxdist.models.tiny_checkpoint import write_random_checkpoint
    from ltxdist.models.tiny_encoders import TINY_GEMMA_DIR, write_tiny_gemma

    root = tmp_path_factory.mktemp("tiny_full")
    ckpt = write_random_checkpoint(root / "ltx-2.3-tiny.safetensors", seed=0, with_encoders=True)
    return ckpt, write_tiny_gemma(root / TINY_GEMMA_DIR, seed=0)


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from fault_helpers import make_media

    return make_media(tmp_path_factory.mktemp("media"))
