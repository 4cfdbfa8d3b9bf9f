#!/usr/bin/env bash
# The GPU checks of issue 21 in ONE device call on one H100/H200, at most 9 minutes including the wheel
# install, in order of value; each part writes its results file into $OUT as soon as it ends, and the last
# step prints one table of the goals (benchmarks/gpu_summary.py -> $OUT/gpu_check_summary.md).
#
#   1. the bf16 kernel tests, compiled (goal: all pass in < 60 s)            -> kernel_tests.xml
#   2. the full-size trimmed matrix: kernels auto / torch / PEFT, AC modes  -> fullsize_<hw>_<date>.*
#   3. the kernel benchmark: LoRA linear vs the frozen GEMM, q/k norm, SDPA backends, auto dispatch
#                                                                            -> kernels_<hw>_<date>.*
#   4. the fp8 frozen base: bf16 / fp8 / fp8 + block swap, uncapped and at 24 GiB -> low_vram_<hw>_<date>.*
#   5. per-block torch.compile at 22B, in the time left (a timeout is a result) -> compile_<hw>_<date>.*
#   6. the summary table                                                     -> gpu_check_summary.md
#
# Here, once (needs PyPI): bash benchmarks/gpu_wheels.sh            (the pure-Python wheels, into .whl/)
# The device call:         command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 580;
#                          then copy $OUT's results files into benchmarks/results/ and commit them.
# On a CPU:                bash benchmarks/gpu_check.sh --dry-run [OUT]   (the same parts on tiny shapes,
#                          with .venv's python, no install; ~3 minutes on 2 cores)
#                          bash benchmarks/gpu_check.sh --print-plan      (the commands, nothing run)
# Only some parts:         GPU_CHECK_PARTS="fp8 compile" bash benchmarks/gpu_check.sh   (a second device
#                          call for the parts the first one skipped for time; set-up and summary always run)
#
# Never put the checkout root on PYTHONPATH: its kernels/ folder must not shadow Hugging Face's `kernels`
# (transformers imports it). Only links named ltxdist and ltxdist_kernels go on it, and `python -P`
# keeps the current folder off sys.path, so benchmarks/ is named explicitly.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry; shift ;;
  --print-plan) MODE=plan; shift ;;
esac
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}  # 9 minutes, install included
START=$SECONDS

if [ "$MODE" = dry ]; then
  OUT=${1:-${OUT:-${TMPDIR:-/tmp}/ltxdist_gpu_check_dry}}
  PY="${VENV:-$ROOT/.venv}/bin/python -P"  # the environment scripts/setup_env.sh made (make lock: VENV)
else
  OUT=${1:-${OUT:-$ROOT/benchmarks/results/gpu_check_$(date -u +%Y-%m-%d)}}
  PY="python3 -P"
fi
[ "$MODE" = plan ] || mkdir -p "$OUT"
PARTS="$OUT/gpu_check_parts.tsv"
[ "$MODE" = plan ] || printf 'part\tstatus\tseconds\n' > "$PARTS"

left() { echo $((BUDGET_S - (SECONDS - START))); }

# run_part NAME MAX_SECONDS MIN_SECONDS COMMAND...: run with a timeout of min(MAX, time left - 15 s for the
# summary); skip when fewer than MIN seconds are left. Never stops the script: the next part still runs.
run_part() {
  local name=$1 max=$2 min=$3
  shift 3
  if [ -n "${GPU_CHECK_PARTS:-}" ] && [[ " $GPU_CHECK_PARTS " != *" $name "* ]]; then
    [ "$MODE" = plan ] || printf '%s\tnot selected\t0\n' "$name" >> "$PARTS"
    return 0
  fi
  local limit=$(($(left) - 15))
  [ "$limit" -gt "$max" ] && limit=$max
  if [ "$MODE" = plan ]; then
    echo "[$name] timeout ${max}s: $*"
    return 0
  fi
  if [ "$limit" -lt "$min" ]; then
    echo "[gpu_check] $name: skipped, ${limit}s left" | tee -a "$OUT/gpu_check.log"
    printf '%s\tskipped\t0\n' "$name" >> "$PARTS"
    return 0
  fi
  echo "[gpu_check] $name (limit ${limit}s): $*" | tee -a "$OUT/gpu_check.log"
  local t0=$SECONDS rc=0
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  local took=$((SECONDS - t0))
  tail -n 30 "$OUT/$name.log"
  local status=ok
  [ "$rc" -eq 124 ] && status="timed out after ${took}s"
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && status="failed (exit $rc)"
  printf '%s\t%s\t%s\n' "$name" "$status" "$took" >> "$PARTS"
  echo "[gpu_check] $name: $status in ${took}s" | tee -a "$OUT/gpu_check.log"
  return 0
}

# -- set-up: wheels into .site, links to the two packages, never the checkout root --------------------
if [ "$MODE" = gpu ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site .whl/*.whl
  ln -sfn "$ROOT/ltxdist" .site/ltxdist
  ln -sfn "$ROOT/kernels/ltxdist_kernels" .site/ltxdist_kernels
  export PYTHONPATH="$ROOT/.site:$ROOT/benchmarks"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
elif [ "$MODE" = dry ]; then
  export PYTHONPATH="$ROOT/benchmarks"  # ltxdist and ltxdist_kernels come from .venv's editable install
else
  echo "[setup] pip install --no-index --target .site .whl/*.whl; links .site/ltxdist, .site/ltxdist_kernels;"
  echo "        PYTHONPATH=$ROOT/.site:$ROOT/benchmarks"
fi
export PYTHONUNBUFFERED=1

# -- 1. bf16 kernel tests, compiled -----------------------------------------------------------------
# Only the GPU-marked tests of the three kernel test files; --confcutdir keeps tests/conftest.py (the
# tiny-checkpoint fixtures, PyAV) out. Fixed Triton configs (tests/kernels/conftest.py) keep it short.
KERNEL_TESTS="tests/kernels/test_fused_lora_linear.py tests/kernels/test_qk_norm_rope.py tests/kernels/test_attention_dispatch.py"
kernel_tests() {
  local t0=$SECONDS rc=0
  # shellcheck disable=SC2086
  $PY -m pytest -p no:cacheprovider -q -m gpu --confcutdir=tests/kernels --durations=10 \
    --junitxml="$OUT/kernel_tests.xml" $KERNEL_TESTS || rc=$?
  echo $((SECONDS - t0)) > "$OUT/kernel_tests.seconds"
  return $rc
}
if [ "$MODE" = plan ]; then
  run_part kernel_tests 100 20 $PY -m pytest -p no:cacheprovider -q -m gpu --confcutdir=tests/kernels \
    --junitxml="$OUT/kernel_tests.xml" $KERNEL_TESTS
else
  export -f kernel_tests
  export PY OUT KERNEL_TESTS
  run_part kernel_tests 100 20 bash -c kernel_tests
fi

# -- 2. full-size trimmed matrix ------------------------------------------------------------------------
if [ "$MODE" = gpu ] || [ "$MODE" = plan ]; then
  run_part fullsize 270 120 $PY benchmarks/fullsize_bench.py --trimmed --out-dir "$OUT"
else
  run_part fullsize 270 30 $PY benchmarks/fullsize_bench.py --trimmed --preset tiny --device cpu \
    --dtype float32 --standard-bucket 64x64x9 --ic-bucket 64x64x9 --text-tokens 8 \
    --kernels-on-backend torch --out-dir "$OUT"
fi

# -- 3. kernel benchmark ----------------------------------------------------------------------------------
KERNEL_SECTIONS="lora_linear qk_norm_rope sdpa dispatch"
if [ "$MODE" = gpu ] || [ "$MODE" = plan ]; then
  # shellcheck disable=SC2086
  run_part kernels 130 60 $PY benchmarks/kernels_bench.py --tokens 3570 10752 --widths 4096 2048 \
    --ranks 32 128 --sections $KERNEL_SECTIONS --no-compile --e2e-audio-tokens 51 --e2e-text-tokens 1024 \
    --out-dir "$OUT"
else
  # shellcheck disable=SC2086
  run_part kernels 130 20 $PY benchmarks/kernels_bench.py --dry-run --sections $KERNEL_SECTIONS \
    --out-dir "$OUT"
fi

# -- 4. fp8 frozen base (issue 16): bf16 / fp8 / fp8 + block swap on the 22B architecture ----------------
# Uncapped (the fp8-matmul throughput goal) and under a 24 GiB cap (the 24 GB-card goal).
if [ "$MODE" = gpu ] || [ "$MODE" = plan ]; then
  run_part fp8 150 60 $PY benchmarks/low_vram_bench.py --gpu --buckets 960x544x49 --ranks 32 --caps 0 24 \
    --steps 2 --warmup 1 --out-dir "$OUT"
else
  run_part fp8 150 20 $PY benchmarks/low_vram_bench.py --gpu --preset tiny --device cpu --steps 1 --offload 1 \
    --warmup 0 --buckets 64x64x9 --text-tokens 8 --out-dir "$OUT"
fi

# -- 5. per-block compile at 22B, in whatever time is left --------------------------------------------
if [ "$MODE" = gpu ] || [ "$MODE" = plan ]; then
  run_part compile 200 60 $PY benchmarks/compile_bench.py --variants eager compiled --tokens 10752 5376 \
    --steps 3 --out-dir "$OUT"
else
  run_part compile 200 20 $PY benchmarks/compile_bench.py --preset tiny --device cpu --dtype float32 \
    --tokens 12 16 --audio-tokens 6 --text-tokens 5 --rank 4 --steps 2 --backend eager \
    --variants eager compiled --out-dir "$OUT"
fi
if [ "$MODE" != plan ] && grep -q "^compile	timed out" "$PARTS"; then
  grep "^compile	" "$PARTS" | cut -f2 | sed 's/^/per-block compile of 2 blocks at 10,752 tokens /' \
    > "$OUT/compile.timeout"
fi

# -- 6. summary ---------------------------------------------------------------------------------------------
if [ "$MODE" = plan ]; then
  echo "[summary] $PY benchmarks/gpu_summary.py $OUT --write $OUT/gpu_check_summary.md"
  exit 0
fi
$PY benchmarks/gpu_summary.py "$OUT" --write "$OUT/gpu_check_summary.md"
echo
column -t -s $'\t' "$PARTS" 2>/dev/null || cat "$PARTS"
echo "[gpu_check] total $((SECONDS - START)) s of ${BUDGET_S} s; results in $OUT"
