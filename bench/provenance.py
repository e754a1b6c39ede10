"""What a raw result was measured on: the commit, whether the working tree differed from it, and a hash of the
sources of the GPU path, so that a figure can be matched to the code it describes.

    python bench/provenance.py        # prints the JSON object
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GPU_PATH = ("cuda", "grendel_py/render", "grendel_py/parallel", "grendel_py/loss")
"""The folders whose sources decide what runs on a GPU: the kernels, the renderer, the distributed step, the
loss."""


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_path_hash(root: Path = ROOT) -> str:
    """sha256 (first 16 hex digits) of the GPU path's source files as they are on disk (.py, .cu, .cuh), by
    relative path: equal hashes mean the same GPU-path code, whatever the commit or the state of the tree."""
    digest = hashlib.sha256()
    for folder in GPU_PATH:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".py", ".cu", ".cuh") and path.is_file():
                digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def provenance() -> dict:
    """{"commit": HEAD (None outside a git checkout), "dirty": whether tracked files differ from it,
    "gpu_path_sha256": :func:`gpu_path_hash`}."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "gpu_path_sha256": gpu_path_hash(),
    }


if __name__ == "__main__":
    print(json.dumps(provenance()))
