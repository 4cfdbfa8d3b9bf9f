"""Three known third-party start-up messages are dropped on every entry point, and only those: torchao's
"Failed to load .../torchao/_C_*.so" (optional CUDA kernels that cannot load on this machine), torch
pytree's Enum register_constant deprecation and bitsandbytes' hub 4-bit kernel warning.
Anything else those loggers say still shows."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from e2e_utils import REPO

from ltxdist import log_filters

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _record(logger: str, message: str) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, __file__, 1, message, None, None)


def _passes(logger: str, message: str) -> bool:
    return bool(logging.getLogger(logger).filter(_record(logger, message)))


def test_only_the_known_messages_are_dropped() -> None:
    log_filters.install()
    log_filters.install()  # idempotent: one filter per logger
    assert len(logging.getLogger(log_filters.TORCHAO_LOGGER).filters) >= 1
    so = ".venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so"
    assert not _passes("torchao", f"Failed to load {so}: Could not load this library: {so}")
    assert _passes("torchao", "Failed to load the config file configs/x.json")
    assert _passes("torchao", "Skipping import of cpp extensions due to incompatible torch version")
    enum = "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile"
    assert not _passes("torch.utils._pytree", enum + " ... Calling register_constant() on Enum subclasses")
    assert _passes("torch.utils._pytree", "some other pytree warning")
    hub = "Failed to load CPU gemm_4bit_forward from kernels-community: Kernel repository ... trust"
    assert not _passes("bitsandbytes.backends.cpu.ops", hub)
    assert _passes("bitsandbytes.backends.cpu.ops", "Failed to load CPU-only bitsandbytes library")
    kinds = [type(f) for f in logging.getLogger(log_filters.TORCHAO_LOGGER).filters]
    assert len(kinds) == len(set(kinds))


def _stderr(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_importing_ltxdist_silences_torchao_optional_kernel_failures() -> None:
    baseline = _stderr("import torchao")
    if "Failed to load" not in baseline:
        pytest.skip("torchao's optional kernels load on this machine: nothing to silence")
    quiet = _stderr(
        "import logging, ltxdist, torchao\nlogging.getLogger('torchao').warning('another torchao warning')\n"
    )
    assert "Failed to load" not in quiet
    assert "another torchao warning" in quiet
