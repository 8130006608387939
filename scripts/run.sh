#!/usr/bin/env bash
# Create the environment, install dlmi, and run the main two-stage job on the built-in synthetic dataset:
# train a classifier, train a classifier-aided U-Net, evaluate both, export them to ONNX, and predict a
# folder of new synthetic images with onnxruntime. Outputs: runs/demo/ (git-ignored) and exported/.
# Idempotent: a finished training step is skipped, an interrupted one resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
DLMI=.venv/bin/dlmi
OUT=runs/demo
mkdir -p "$OUT"

train() {  # train KIND DIR ARGS... — skip a finished run, resume an interrupted one
  local kind=$1 dir=$2; shift 2
  if [ -f "$dir/done" ]; then echo "== $dir: already trained"; return; fi
  if [ -f "$dir/last.pt" ]; then
    $DLMI train "$kind" --resume "$dir"
  else
    $DLMI train "$kind" "$@" --out "$dir"
  fi
  touch "$dir/done"
}

$DLMI data summary --dataset synthetic
train classifier "$OUT/classifier" --dataset synthetic --image-size 64 --epochs 8 --batch-size 16
train segmenter "$OUT/segmenter" --dataset synthetic --image-size 64 --base-channels 8 --epochs 8 \
  --batch-size 16 --loss dice-bce --aid "$OUT/classifier"

$DLMI evaluate "$OUT/classifier"
$DLMI evaluate "$OUT/segmenter"

$DLMI export onnx --classifier "$OUT/classifier" --segmenter "$OUT/segmenter" --out exported

# New images the models never saw (another seed), written as a BUSI-layout folder of PNGs.
[ -d "$OUT/new-images" ] || $DLMI data synth --out "$OUT/new-images" --count 12 --size 128 --seed 7
$DLMI predict --aided "$OUT/new-images" --models exported --out "$OUT/predictions" --exclude '*_mask*'

cat <<MSG

Done. Where things are:
  $OUT/{classifier,segmenter}/   run folders: config, split, metrics.jsonl, checkpoints, curves,
                                 eval-test.md (the tables above), confusion matrix, panels.png
  exported/                      classifier.onnx, unet.onnx, two_stage.onnx (+ export.json)
  $OUT/predictions/              per-image mask and overlay PNGs, predictions.csv, predictions.json
MSG
