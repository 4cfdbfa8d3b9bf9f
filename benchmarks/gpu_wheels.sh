#!/usr/bin/env bash
# Fetch, into .whl/ (git-ignored by .gitignore), the pure-Python wheels the lent GPU machine lacks for
# benchmarks/gpu_check.sh. That machine already has torch, triton, lightning, peft, transformers,
# accelerate, einops, scipy, safetensors, numpy and pytest, and reaches no package registry.
# Versions are the ones this checkout's .venv runs (constraints.txt). Usage: bash benchmarks/gpu_wheels.sh
# On the device, install them into .site and link only the two packages next to them (never put the
# checkout root on PYTHONPATH: its kernels/ folder must not compete with Hugging Face's `kernels`):
#   python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl
#   ln -sfn $PWD/ltxdist .site/ltxdist; ln -sfn $PWD/kernels/ltxdist_kernels .site/ltxdist_kernels
#   PYTHONPATH=$PWD/.site:$PWD/benchmarks python3 -P benchmarks/fullsize_bench.py ...
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PY=.venv/bin/python
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
for pkg in ltx-core hydra-core omegaconf webdataset braceexpand; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
    -d .whl "$pkg==$(version "$pkg")"
done
# antlr4-python3-runtime (needed by omegaconf) is published as an sdist only: build its wheel here.
"$PY" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
ls -la .whl
