#!/usr/bin/env bash
# Create the environment, install dlmi, and run the main job on the built-in synthetic dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
DLMI=.venv/bin/dlmi
$DLMI plugins
$DLMI data summary --dataset synthetic
$DLMI model summary seed-cnn --num-classes 3 --image-size 512
$DLMI model summary unet --image-size 128
