#!/usr/bin/env bash
# The main job on the embedded default scene: generate the synthetic `object` scene (a ray-cast COLMAP
# dataset, no downloads) and train on it with configs/demo.yaml. Output in out/demo/: the scene, and the
# run (model.ply, metrics.json, renders/ with render | ground truth, tb/ for TensorBoard).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
rm -rf out/demo  # this script's own previous output
grendel synth out/demo/scene --preset object --seed 0
grendel train --config configs/demo.yaml
