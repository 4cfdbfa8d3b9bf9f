#!/usr/bin/env bash
# Creates .venv with everything ltxdist needs, on a CPU-only machine or a CUDA one.
# Order matters: torch first (so nothing later resolves a multi-GB CUDA torch on a CPU machine),
# then the rest, then the torchaudio fix-up for CPU torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==$TORCH_VERSION first"
  $PIP install -q "torch==$TORCH_VERSION"
fi
echo "[setup] installing ltxdist and its dependencies"
$PIP install -q -e ".[dev]"

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
"$VENV/bin/python" -c "import torchaudio, ltx_core.loader, ltx_core.model.audio_vae; print('[setup] environment ready')"
