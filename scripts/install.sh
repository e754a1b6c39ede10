#!/usr/bin/env bash
# Install grendel_py (editable) with the extras named in $1 (e.g. "dev"), reusing an installed torch.
# Without one, torch==2.13.0 is installed first, so pip never pulls a CUDA build of several GB by accident.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install --quiet torch==2.13.0
fi
extras=${1:-}
"$PY" -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
