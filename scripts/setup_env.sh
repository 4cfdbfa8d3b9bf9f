#!/usr/bin/env bash
# Creates .venv with everything ltxdist needs, on a CPU-only machine or a CUDA one, at the exact versions
# of constraints.txt (the lock the test suite last passed with; `make lock` refreshes it).
# Order matters: torch first (so nothing later resolves a multi-GB CUDA torch on a CPU machine),
# then the rest, then the torchaudio fix-up for CPU torch.
# LTXDIST_UNLOCKED=1 resolves the newest versions pyproject.toml allows instead (what `make lock` tests).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
# torch comes from the lock too (the CPU wheel on this project's machines is 2.13.0).
locked_torch=$(sed -n 's/^torch==//p' constraints.txt 2>/dev/null || true)
TORCH_VERSION=${TORCH_VERSION:-${locked_torch:-2.13.0}}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==$TORCH_VERSION first"
  $PIP install -q "torch==$TORCH_VERSION"
fi
if [ "${LTXDIST_UNLOCKED:-0}" = 1 ]; then
  echo "[setup] installing ltxdist and the newest dependencies pyproject.toml allows (unlocked)"
  $PIP install -q -e ".[dev]"
else
  echo "[setup] installing ltxdist and its dependencies at the versions of constraints.txt"
  $PIP install -q -c constraints.txt -e ".[dev]"
fi

# torchaudio from the registry is a CUDA build. ltx-core's audio VAE imports it but only uses
# MelSpectrogram and resample, which work in torchaudio's pure-Python mode. On a CPU torch, move the
# compiled extension aside so `import torchaudio` stops failing on libc10_cuda.so.
"$VENV/bin/python" - <<'PYEOF'
import importlib.util, pathlib, shutil, torch
if torch.version.cuda is None:
    spec = importlib.util.find_spec("torchaudio")
    if spec is not None and spec.origin:
        lib = pathlib.Path(spec.origin).parent / "lib"
        parked = lib / "_cuda_build_parked"
        for so in lib.glob("*.so"):
            parked.mkdir(exist_ok=True)
            shutil.move(str(so), parked / so.name)
            print(f"[setup] parked CUDA-only torchaudio extension {so.name}")
PYEOF

# On a machine without an NVIDIA GPU no nvidia-* package (CUDA runtime, cuDNN, NCCL: gigabytes) belongs in
# the environment; finding one means a dependency resolved a CUDA torch or CUDA extras. Say so loudly
# instead of leaving a multi-GB environment that may not even import.
has_gpu() { [ -e /proc/driver/nvidia/version ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; }
if ! has_gpu; then
  cuda_pkgs=$($PIP list --format=freeze 2>/dev/null | grep -i '^nvidia-' || true)
  if [ -n "$cuda_pkgs" ]; then
    echo "[setup] ERROR: no NVIDIA GPU here, but CUDA packages were installed into $VENV:" >&2
    echo "$cuda_pkgs" | sed 's/^/[setup]   /' >&2
    echo "[setup] torch must come from the machine's CPU wheel before anything else is installed:" >&2
    echo "[setup] remove $VENV and rerun (or TORCH_VERSION=<the local CPU wheel's version> $0)." >&2
    exit 1
  fi
fi
"$VENV/bin/python" -c "import torchaudio, ltx_core.loader, ltx_core.model.audio_vae; print('[setup] environment ready')"
