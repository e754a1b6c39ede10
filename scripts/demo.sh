#!/usr/bin/env bash
# The main job on the embedded default scene: generate the synthetic `object` scene, summarise it,
# initialise Gaussians from its points and render them from the test cameras. Output in out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
out=out/demo
rm -rf "$out"  # this script's own previous output
grendel synth "$out/scene" --preset object --seed 0
grendel info "$out/scene"
grendel init "$out/scene" "$out/init.ply"
grendel render "$out/init.ply" --data "$out/scene" --out "$out/renders" --split test
echo "demo done: $out"
