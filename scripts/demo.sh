#!/usr/bin/env bash
# The tiny CPU demo, end to end: a tiny LTX-2.3-format checkpoint (transformer, VAEs, vocoder, text
# encoder) -> raw demo clips made with PyAV -> ltxdist-prepare (cached-latent shards) -> LoRA training ->
# ComfyUI-format LoRA file, inspected and merged into the base. A few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin  # the environment scripts/setup_env.sh made (make lock: .venv-lock)
OUT=${DEMO_DIR:-runs/tiny_demo}
MODELS=${DEMO_MODELS:-checkpoints}
DATA=${DEMO_DATA:-data/demo}
CKPT=$MODELS/ltx-2.3-tiny.safetensors

echo "== 1/5 tiny checkpoint + tiny Gemma text encoder"
[ -f "$CKPT" ] || $BIN/ltxdist-tiny-checkpoint "$MODELS"
echo "== 2/5 raw demo clips (PyAV: video + audio + caption sidecars)"
[ -d "$DATA/clips" ] || $BIN/ltxdist-prepare --make-demo-clips "$DATA/clips"
echo "== 3/5 ltxdist-prepare: clips -> cached-latent shards (resumes if interrupted)"
$BIN/ltxdist-prepare "$DATA/clips" --out "$DATA/shards" --checkpoint "$CKPT" --gemma "$MODELS/gemma-tiny" \
    --buckets "64x64x17;96x64x17;64x96x17" --lora-trigger sks
echo "== 4/5 train (experiment=tiny_demo)"
$BIN/ltxdist-train experiment=tiny_demo model.checkpoint="$CKPT" data=shards data.path="$DATA/shards" \
    data.batch_size=2 data.num_workers=0 run.dir="$OUT" "$@"
LORA=$(ls "$OUT"/lora/lora_weights_step_*.safetensors | sort | tail -n 1)
echo "== 5/5 export: inspect and merge $LORA"
$BIN/ltxdist-export inspect "$LORA"
$BIN/ltxdist-export merge --base "$CKPT" --lora "$LORA" --out "$OUT/merged.safetensors" --force  # a rerun replaces it
$BIN/python - "$OUT/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
k = max(1, len(rows) // 5)
first = sum(r["loss/total"] for r in rows[:k]) / k
last = sum(r["loss/total"] for r in rows[-k:]) / k
print(f"loss: first {k} steps {first:.3f} -> last {k} steps {last:.3f}")
PY
echo "demo done: LoRA at $LORA"
