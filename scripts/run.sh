#!/usr/bin/env bash
# Create the environment, install dlmi, and run the main two-stage job on the built-in synthetic dataset:
# train a classifier, train a classifier-aided U-Net, evaluate both, export to ONNX, predict a folder.
# Outputs go to runs/demo (ignored by git) and exported/. A second run reuses finished steps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
DLMI=.venv/bin/dlmi
OUT=runs/demo
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

$DLMI data summary --dataset synthetic

if [ ! -f "$OUT/classifier/best.pt" ] || [ -f "$OUT/classifier/.incomplete" ]; then
  touch "$OUT/classifier.incomplete" 2>/dev/null || true
fi
train() {  # train KIND DIR ARGS... — resume an interrupted run, skip a finished one
  local kind=$1 dir=$2; shift 2
  if [ -f "$dir/done" ]; then echo "== $dir already trained"; return; fi
  if [ -f "$dir/last.pt" ]; then
    $DLMI train "$kind" --resume "$dir"
  else
    $DLMI train "$kind" "$@" --out "$dir"
  fi
  touch "$dir/done"
}

train classifier "$OUT/classifier" --dataset synthetic --image-size 64 --epochs 8 --batch-size 16
train segmenter "$OUT/segmenter" --dataset synthetic --image-size 64 --base-channels 8 --epochs 8 \
  --batch-size 16 --loss dice-bce --aid "$OUT/classifier"

$DLMI evaluate "$OUT/classifier"
$DLMI evaluate "$OUT/segmenter"
