"""The unmodified CUDA kernels of cuda/*.cu run on the CPU with CUDA's execution model: every source is
compiled by g++ with tests/cuda_runtime/gpu_runtime.h included first (a block's threads as fibers, block
barriers, warp ops, atomics; the model and its limits are described there), together with one generated C
launcher per kernel, into one shared library called through ctypes. Unlike tests/host_kernels.py (the
kernels' math in plain loops), this runs the kernels themselves: shared-memory batches, __syncthreads,
warp votes and shuffles, atomics and early exits, under seeded random interleavings, and turns barrier or
warp divergence into a RuntimeError naming kernel, block, threads and call sites.

Set GP_RUNTIME_SANITIZE to a -fsanitize value to build the library with sanitizers: "undefined", or
"address,undefined" with the ASan runtime loaded first, e.g.
    LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 GP_RUNTIME_SANITIZE=address,undefined pytest ...
(ASan then checks the kernels' global memory accesses against torch's CPU allocations.)
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

from grendel_py.render.cuda_kernels import BLOCK, CUDA_DIR, DTYPES, KERNELS, check_args
from tests.host_kernels import compiler

RUNTIME_DIR = Path(__file__).with_name("cuda_runtime")
C_TYPES = {
    "i32": "int",
    "i64": "long long",
    "f32*": "float*",
    "i32*": "int*",
    "i64*": "long long*",
    "u8*": "unsigned char*",
}
SCALARS = {"i32": ctypes.c_int, "i64": ctypes.c_longlong}
SANITIZE = os.environ.get("GP_RUNTIME_SANITIZE", "")
FLAGS = ["-std=c++20", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-pthread"]
if SANITIZE:
    FLAGS += [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer", "-DGPRT_STACK_BYTES=(512*1024)"]

Signatures = dict[Path, dict[str, tuple[str, ...]]]  # source -> kernel name -> argument types (C_TYPES keys)


class Config(ctypes.Structure):
    """gprt::Config."""

    _fields_ = [
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("seed", ctypes.c_uint64),
        ("workers", ctypes.c_int),
    ]


def available() -> bool:
    """Whether the runtime can be built here (g++ on x86-64)."""
    return compiler() is not None and platform.machine() == "x86_64"


def _launchers(source: Path, kernels: dict[str, tuple[str, ...]]) -> str:
    """A translation unit: the kernel source, then ``gprt_launch_<name>(config, err, err_size, args...)``
    per kernel."""
    lines = [f'#include "{source.resolve()}"']
    for name, types in kernels.items():
        params = ", ".join(f"{C_TYPES[t]} a{i}" for i, t in enumerate(types))
        args = ", ".join(f"a{i}" for i in range(len(types)))
        lines += [
            f'extern "C" int gprt_launch_{name}(const gprt::Config* config, char* err, std::size_t err_size, {params}) {{',
            f'    return gprt::launch("{name}", *config, [=] {{ {name}({args}); }}, err, err_size);',
            "}",
        ]
    return "\n".join(lines) + "\n"


class RuntimeLibrary:
    """The kernels of ``signatures`` compiled with the runtime (cached in the temp dir by a hash of every input)."""

    def __init__(self, signatures: Signatures):
        if "address" in SANITIZE and "libasan" not in os.environ.get("LD_PRELOAD", ""):
            raise RuntimeError("GP_RUNTIME_SANITIZE=address needs LD_PRELOAD=$(g++ -print-file-name=libasan.so)")
        self.signatures = {name: types for kernels in signatures.values() for name, types in kernels.items()}
        units = {f"{i}_{src.stem}.cpp": _launchers(src, kernels) for i, (src, kernels) in enumerate(signatures.items())}
        inputs = sorted(
            {p for src in signatures for p in (*src.parent.glob("*.cu*"), *RUNTIME_DIR.glob("gpu_runtime.*"))}
        )
        digest = hashlib.sha256(
            "\0".join([*FLAGS, *units.values()]).encode() + b"".join(p.read_bytes() for p in inputs)
        ).hexdigest()[:16]
        lib = Path(tempfile.gettempdir()) / f"grendel_py_gpu_runtime_{digest}.so"
        if not lib.exists():
            with tempfile.TemporaryDirectory() as tmp:
                for unit, text in units.items():
                    (Path(tmp) / unit).write_text(text)
                out = lib.with_suffix(f".{os.getpid()}.tmp")
                cmd = [
                    compiler(),
                    *FLAGS,
                    "-include",
                    str(RUNTIME_DIR / "gpu_runtime.h"),
                    *units,
                    str(RUNTIME_DIR / "gpu_runtime.cpp"),
                    "-o",
                    str(out),
                ]
                proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
                if proc.returncode:
                    raise RuntimeError(f"building the GPU runtime failed:\n{' '.join(cmd)}\n{proc.stderr}")
                os.replace(out, lib)
        self._dll = ctypes.CDLL(str(lib))
        for name, types in self.signatures.items():
            fn = getattr(self._dll, f"gprt_launch_{name}")
            fn.argtypes = [ctypes.POINTER(Config), ctypes.c_char_p, ctypes.c_size_t] + [
                SCALARS.get(t, ctypes.c_void_p) for t in types
            ]
            fn.restype = ctypes.c_int

    def launch(
        self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args, seed: int = 0, workers: int = 1
    ) -> None:
        """Run kernel ``name`` over ``grid`` blocks of ``block`` threads on ``args`` (ints and contiguous CPU
        tensors of the signature's dtypes); raise RuntimeError with the runtime's message on a failure."""
        types = self.signatures[name]
        if len(args) != len(types):
            raise ValueError(f"kernel {name} takes {len(types)} arguments, got {len(args)}")
        values = []
        for i, (arg, kind) in enumerate(zip(args, types)):
            if kind in SCALARS:
                values.append(arg)
                continue
            if arg.device.type != "cpu" or arg.dtype != DTYPES[kind] or not arg.is_contiguous():
                raise ValueError(f"kernel {name} argument {i}: expected a contiguous CPU {DTYPES[kind]} tensor")
            values.append(arg.data_ptr())
        pad = lambda dims: (*dims, *(1,) * (3 - len(dims)))  # noqa: E731
        config = Config(pad(grid), pad(block), seed, workers)
        err = ctypes.create_string_buffer(4096)
        if getattr(self._dll, f"gprt_launch_{name}")(ctypes.byref(config), err, len(err), *values):
            raise RuntimeError(f"{err.value.decode()} (seed {seed})")


@functools.cache
def cuda_library() -> RuntimeLibrary:
    """The kernels of cuda/*.cu, with the signatures of grendel_py.render.cuda_kernels.KERNELS."""
    signatures: Signatures = {}
    for name, kernel in KERNELS.items():
        signatures.setdefault(CUDA_DIR / kernel.source, {})[name] = kernel.args
    return RuntimeLibrary(signatures)


class RuntimeKernels:
    """``launch(name, size, *args)`` as :class:`grendel_py.render.cuda_kernels.CupyKernels` (same grid and
    block), on CPU tensors; ``seed`` drives the interleavings, ``workers`` OS threads run blocks; ``library``:
    the kernels built from other sources than cuda/ (planted mutants), else :func:`cuda_library`."""

    def __init__(self, seed: int = 0, workers: int = 1, library: RuntimeLibrary | None = None):
        self.seed, self.workers, self.library = seed, workers, library

    def launch(self, name: str, size: int, *args) -> None:
        check_args(name, args)
        if size == 0:
            return
        for a in args:
            if isinstance(a, torch.Tensor) and a.device.type != "cpu":
                raise ValueError(f"runtime kernel {name}: tensor on {a.device}")
        if KERNELS[name].grid == "element":
            grid, block, args = (min(-(-size // BLOCK), 1 << 20),), (BLOCK,), (size, *args)
        else:
            grid, block = (size,), (16, 16)
        (self.library or cuda_library()).launch(name, grid, block, args, seed=self.seed, workers=self.workers)
