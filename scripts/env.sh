# Sourced by scripts/demo.sh and scripts/test.sh: `source scripts/env.sh [EXTRAS]`.
#
# Makes the project's Python environment the active one, then installs grendel_py (editable) into it with
# the extras EXTRAS (e.g. "dev,mpi"). An active virtual environment ($VIRTUAL_ENV, or a conda environment
# other than base) is used as it is; otherwise the checkout's own `.venv/` is created on first use and
# activated, so nothing is ever installed into the system interpreter and a fresh clone starts empty.
# torch==2.13.0 is installed first when the environment has no torch (a plain `torch` requirement could
# pull a CUDA build of several GB); an installed torch is kept.
#
# Afterwards (in your shell): `source .venv/bin/activate`, then `grendel ...`.

_grendel_env() {
    local root=$1 extras=$2 base=${PYTHON:-python3}
    if [[ -n ${VIRTUAL_ENV:-} ]]; then
        :  # the user's own environment
    elif [[ -n ${CONDA_PREFIX:-} && ${CONDA_DEFAULT_ENV:-base} != base ]]; then
        :  # an activated conda environment
    else
        local venv=$root/.venv
        if [[ -e $venv ]] && ! "$venv/bin/python" -c "" 2>/dev/null; then
            echo "env: $venv is broken (moved, or its Python is gone): making it anew" >&2
            rm -rf "$venv"
        fi
        if [[ ! -e $venv ]]; then
            if ! "$base" -m venv "$venv"; then
                rm -rf "$venv"
                echo "env: '$base -m venv' failed: install Python's venv module (Debian: python3-venv), or activate an environment of your own first" >&2
                return 1
            fi
            echo "env: created $venv" >&2
        fi
        # shellcheck disable=SC1091
        source "$venv/bin/activate"
    fi
    if ! python -c "import torch" 2>/dev/null; then
        python -m pip install --quiet --disable-pip-version-check torch==2.13.0 || return 1
    fi
    python -m pip install --quiet --disable-pip-version-check -e "$root${extras:+[$extras]}"
}

_grendel_env "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" "${1:-}"
