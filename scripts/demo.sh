#!/usr/bin/env bash
# The main job on the embedded default scene: generate the synthetic `object` scene (a ray-cast COLMAP
# dataset, no downloads) and train on it with configs/demo.yaml on two ranks. Output in out/demo/: the scene, and the
# run (model.ply, metrics.json, renders/ with render | ground truth, tb/ for TensorBoard).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
rm -rf out/demo  # this script's own previous output
grendel synth out/demo/scene --preset object --seed 0
# two ranks (gloo on CPU, NCCL with GPUs): the Gaussians are split in two spatial shards, tiles are shared
python -m torch.distributed.run --standalone --nproc-per-node 2 -m grendel_py train --config configs/demo.yaml
