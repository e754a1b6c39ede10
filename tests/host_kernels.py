"""The kernels' math on the CPU: tests/cuda_host.cpp (the cuda/*.cuh functions in plain loops) compiled with
the host C++ compiler and called through ctypes with the signatures of grendel_py.render.cuda_kernels."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from grendel_py.render.cuda_kernels import CUDA_DIR, KERNELS, check_args

HARNESS = Path(__file__).with_name("cuda_host.cpp")
CTYPES = {"i32": ctypes.c_int, "i64": ctypes.c_longlong}


def compiler() -> str | None:
    """The host C++ compiler, or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


@functools.cache
def _library() -> ctypes.CDLL:
    sources = [HARNESS, *sorted(CUDA_DIR.glob("*.cuh"))]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    lib = Path(tempfile.gettempdir()) / f"grendel_py_host_kernels_{digest}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [
            compiler(),
            "-std=c++17",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-shared",
            "-fPIC",
            str(HARNESS),
            "-o",
            str(tmp),
        ]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        os.replace(tmp, lib)
    dll = ctypes.CDLL(str(lib))
    for name, kernel in KERNELS.items():
        types = kernel.args if kernel.grid == "element" else ("i32",) + kernel.args
        getattr(dll, name).argtypes = [CTYPES.get(t, ctypes.c_void_p) for t in types]
        getattr(dll, name).restype = None
    return dll


class HostKernels:
    """``launch(name, size, *args)`` as :class:`grendel_py.render.cuda_kernels.CupyKernels`, on CPU tensors."""

    def launch(self, name: str, size: int, *args) -> None:
        check_args(name, args)
        values = [size, *(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)]
        for a in args:
            if isinstance(a, torch.Tensor) and a.device.type != "cpu":
                raise ValueError(f"host kernel {name}: tensor on {a.device}")
        getattr(_library(), name)(*values)
