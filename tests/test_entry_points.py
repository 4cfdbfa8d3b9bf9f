"""The documented entry points work from the checkout root, where `python -m` / `-c` put the root first on
sys.path: nothing there may shadow an installed package. transformers >= 5.25 imports Hugging Face's
`kernels` package, so a root-level `kernels/__init__.py` (our Triton sources once lived there) broke every
`python -m ...` that reached transformers, while console scripts and `.venv/bin/pytest` kept working.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from e2e_utils import REPO

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("PYTHONPATH", None)

# Imports what the sampling and data-preparation commands import when they run (their CLI modules import
# it lazily, after parsing, so that --help is fast): the pipelines, which import transformers, whose Gemma
# activations module imports Hugging Face `kernels`. Reports whether those paths alone reached
# transformers, then where `kernels` and `ltxdist_kernels` came from.
_PROBE = """
import sys
import ltxdist.sampling.cli, ltxdist.data.prepare.cli
import ltxdist.sampling.pipeline, ltxdist.data.prepare.pipeline
print("transformers" in sys.modules)
from transformers import Gemma3ForConditionalGeneration
import kernels, ltxdist_kernels.fused_lora_linear
print(kernels.__file__)
print(ltxdist_kernels.__file__)
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )


def test_python_c_from_the_root_imports_the_real_hugging_face_kernels() -> None:
    proc = _run("-c", _PROBE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported_transformers, kernels_file, ltxdist_kernels_file = proc.stdout.split()
    assert imported_transformers == "True"
    # The installed package, not anything inside the checkout (site-packages of a venv inside the
    # checkout is fine: that is an installed package).
    assert "site-packages" in kernels_file, f"`kernels` resolved to {kernels_file}"
    assert ltxdist_kernels_file.endswith(os.path.join("kernels", "ltxdist_kernels", "__init__.py"))


@pytest.mark.parametrize(
    "module",
    # `torchrun -m ltxdist.training.train` from the root: the DDP run of faults/test_resume_position.py.
    ["ltxdist.sampling.cli", "ltxdist.data.prepare.cli"],
)
def test_python_m_help_from_the_root(module: str) -> None:
    proc = _run("-m", module, "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage" in proc.stdout.lower()


HELP_COMMANDS = [
    "ltxdist-train",
    "ltxdist-prepare",
    "ltxdist-export",
    "ltxdist-sample",
    "ltxdist-bench",
    "ltxdist-tiny-checkpoint",
    "ltxdist-synthetic-data",
]


def test_help_of_every_command_imports_no_torch() -> None:
    """`--help` of every console script answers without importing torch, Lightning or transformers (they
    take 5-10 s to import; issue 24 measured 10-14 s per --help). Checked on what is imported, not on
    time: the shared test machine's timing is not a measurement."""
    import importlib.metadata

    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    probe = (
        "import sys, importlib\n"
        "module, func = sys.argv[1].split(':')\n"
        "sys.argv = [sys.argv[2], '--help']\n"
        "try:\n    getattr(importlib.import_module(module), func)()\n"
        "except SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))\n"
    )
    for name in HELP_COMMANDS:
        proc = _run("-c", probe, scripts[name], name)
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        assert "usage" in proc.stdout.lower(), (name, proc.stdout[-2000:])
        assert proc.stdout.strip().endswith("HEAVY []"), (name, proc.stdout.strip().splitlines()[-1])


def test_python_m_pytest_collects_from_the_root() -> None:
    """`python -m pytest` (what `make test` runs) collects the modules that import transformers."""
    proc = _run("-m", "pytest", "--collect-only", "-q", "tests/sampling", "tests/data/test_prepare.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "error" not in proc.stdout.lower().split("tests collected")[-1], proc.stdout[-3000:]
    assert "tests/sampling/test_conditioning.py::" in proc.stdout
