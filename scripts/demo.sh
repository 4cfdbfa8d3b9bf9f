#!/usr/bin/env bash
# The tiny CPU demo, end to end: tiny LTX-2.3-format checkpoint -> cached-latent shards -> LoRA training
# -> ComfyUI-format LoRA file, inspected and merged into the base. A few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${DEMO_DIR:-runs/tiny_demo}
CKPT=${DEMO_CKPT:-checkpoints/ltx-2.3-tiny.safetensors}
DATA=${DEMO_DATA:-data/synthetic-tiny}

echo "== 1/4 tiny checkpoint"
[ -f "$CKPT" ] || $BIN/ltxdist-tiny-checkpoint "$CKPT"
echo "== 2/4 cached-latent shards"
[ -f "$DATA/index.json" ] || $BIN/ltxdist-synthetic-data "$DATA" --checkpoint "$CKPT" --num-samples 32
echo "== 3/4 train (experiment=tiny_demo)"
$BIN/ltxdist-train experiment=tiny_demo model.checkpoint="$CKPT" data.path="$DATA" run.dir="$OUT" "$@"
LORA=$(ls "$OUT"/lora/lora_weights_step_*.safetensors | sort | tail -n 1)
echo "== 4/4 export: inspect and merge $LORA"
$BIN/ltxdist-export inspect "$LORA"
$BIN/ltxdist-export merge --base "$CKPT" --lora "$LORA" --out "$OUT/merged.safetensors"
$BIN/python - "$OUT/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
k = max(1, len(rows) // 5)
first = sum(r["loss"] for r in rows[:k]) / k
last = sum(r["loss"] for r in rows[-k:]) / k
print(f"loss: first {k} steps {first:.3f} -> last {k} steps {last:.3f}")
PY
echo "demo done: LoRA at $LORA"
