#!/usr/bin/env bash
# The test suite: installs the package with its dev and mpi extras (mpi4py + MPICH, for mpiexec), then runs pytest
# (GPU tests skip without CUDA; the SLURM tests without root or the Debian packages slurm-wlm and munge, which
# .ci/run installs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh dev,mpi
python -m pytest -q "$@"
