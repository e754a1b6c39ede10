#!/usr/bin/env bash
# The test suite: installs the package with its dev and mpi extras (mpi4py + MPICH, for mpiexec), then runs pytest
# (GPU tests skip without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev,mpi
python3 -m pytest -q "$@"
