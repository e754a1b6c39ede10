"""The CUDA sources build, and the Python launch table matches them (no GPU needed).

Every cuda/*.cu compiles with nvcc for sm_80 (A100) and sm_90 (H100), warnings as errors, both as written and as
the self-contained text the cupy backend gives NVRTC (includes expanded). Skipped without nvcc. The kernel
signatures parsed from the sources, and those of the host emulation, must equal grendel_py's launch table, so a
kernel and its caller cannot drift apart unnoticed on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from grendel_py.render.cuda_kernels import CUDA_DIR, KERNELS, NVRTC_OPTIONS, cuda_source
from tests.host_kernels import HARNESS

NVCC = shutil.which("nvcc")
SOURCES = sorted(p.name for p in CUDA_DIR.glob("*.cu"))
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc (the CUDA toolkit)")
TYPES = {
    "float*": "f32*",
    "int*": "i32*",
    "longlong*": "i64*",
    "i64*": "i64*",
    "int": "i32",
    "longlong": "i64",
    "i64": "i64",
    "unsignedchar*": "u8*",
}


def _nvcc(source: Path, arch: str, out: Path) -> None:
    cmd = [
        NVCC,
        "-std=c++17",
        f"-arch={arch}",
        "-cubin",
        "-o",
        str(out),
        "--Werror",
        "all-warnings",
        "-Xcompiler",
        "-Wall,-Werror",
        str(source),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}"


def test_sources_exist() -> None:
    assert set(SOURCES) == {k.source for k in KERNELS.values()}


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_with_nvcc(source: str, arch: str, tmp_path: Path) -> None:
    _nvcc(CUDA_DIR / source, arch, tmp_path / "out.cubin")


@needs_nvcc
@pytest.mark.parametrize("source", SOURCES)
def test_nvrtc_text_compiles(source: str, tmp_path: Path) -> None:
    text = cuda_source(source)
    assert '#include "' not in text and "#pragma once" not in text
    path = tmp_path / source
    path.write_text(text)
    _nvcc(path, "sm_90", tmp_path / "out.cubin")


def _signature(params: str) -> tuple[str, ...]:
    types = []
    for p in params.split(","):
        words = p.replace("*", " * ").split()[:-1]  # drop the parameter name
        key = "".join(w for w in words if w != "const")
        types.append(TYPES[key])
    return tuple(types)


def _kernels(text: str, pattern: str) -> dict[str, tuple[str, ...]]:
    return {m.group(1): _signature(m.group(2)) for m in re.finditer(pattern, text)}


def test_launch_table_matches_kernel_sources() -> None:
    found = {}
    for source in SOURCES:
        text = (CUDA_DIR / source).read_text()
        for name, sig in _kernels(
            text, r'extern "C" __global__ void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\(([^)]*)\)'
        ).items():
            found[name] = sig
            assert KERNELS[name].source == source, name
    assert found == {name: k.args for name, k in KERNELS.items()}


def test_host_emulation_matches_kernel_signatures() -> None:
    """Element kernels keep their signature; tile kernels take the tile count first."""
    found = _kernels(HARNESS.read_text(), r"(?m)^void (\w+)\(([^)]*)\)")
    expected = {name: k.args if k.grid == "element" else ("i32",) + k.args for name, k in KERNELS.items()}
    assert found == expected


def _nvrtc_library() -> ctypes.CDLL | None:
    """libnvrtc from the CUDA toolkit or the nvidia-cuda-nvrtc wheel (what CuPy uses), or None."""
    candidates = [ctypes.util.find_library("nvrtc")]
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else []:
        candidates += [str(p) for p in Path(root).glob("*/lib/libnvrtc.so*") if "alt" not in p.name]
    for path in filter(None, candidates):
        try:
            # a wheel's lib folder is not on the search path
            for builtins in Path(path).parent.glob("libnvrtc-builtins.so*"):
                if "alt" not in builtins.name:
                    ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


NVRTC = _nvrtc_library()


@pytest.mark.skipif(NVRTC is None, reason="needs libnvrtc (CUDA toolkit or pip install nvidia-cuda-nvrtc)")
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_with_nvrtc(source: str) -> None:
    """The exact text and options of CupyKernels, through NVRTC (the compiler CuPy's RawModule uses)."""
    program = ctypes.c_void_p()
    text = cuda_source(source).encode()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(program), text, source.encode(), 0, None, None) == 0
    options = [o.encode() for o in (*NVRTC_OPTIONS, "--gpu-architecture=compute_90")]
    status = NVRTC.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetProgramLog(program, log)
    NVRTC.nvrtcDestroyProgram(ctypes.byref(program))
    assert status == 0 and "warning" not in log.value.decode(), log.value.decode()


_POWER_PROBE = """
#include "raster.cuh"
extern "C" __global__ void rounded(const gp::Splat2D* s, const float* d, float* out) {
    const int i = threadIdx.x;
    out[i] = gp::splat_power(s[i], d[2 * i], d[2 * i + 1]);
}
extern "C" __global__ void plain(const gp::Splat2D* s, const float* d, float* out) {
    const int i = threadIdx.x;
    const float dx = d[2 * i], dy = d[2 * i + 1];
    out[i] = -0.5f * s[i].a * dx * dx - s[i].b * dx * dy - 0.5f * s[i].c * dy * dy;
}
"""


def _ptx_float_ops(ptx: str, kernel: str) -> list[str]:
    body = re.search(rf"\.entry {kernel}\b.*?\n}}", ptx, re.DOTALL)
    assert body, kernel
    return re.findall(r"^\s*((?:fma|mul|add|sub)[.\w]*f32)\b", body.group(0), re.MULTILINE)


@needs_nvcc
def test_alpha_is_computed_without_contractions(tmp_path: Path) -> None:
    """The forward and the backward rasterize kernels decide from a splat's alpha whether it counts; nvcc
    contracts the plain expression of its exponent into an FMA (differently where it is inlined), so
    ``splat_power`` rounds each operation (``__fmul_rn`` / ``__fsub_rn``): its PTX has only .rn multiplies
    and subtractions, which ptxas may not fuse."""
    source = tmp_path / "probe.cu"
    source.write_text(_POWER_PROBE)
    ptx = tmp_path / "probe.ptx"
    cmd = [NVCC, "-std=c++17", "-arch=sm_90", "-ptx", "-I", str(CUDA_DIR), "-o", str(ptx), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = ptx.read_text()
    rounded, plain = _ptx_float_ops(text, "rounded"), _ptx_float_ops(text, "plain")
    assert rounded and set(rounded) <= {"mul.rn.f32", "sub.rn.f32"}, rounded
    assert any(op.startswith("fma") for op in plain), plain  # what the rounding prevents


@needs_nvcc
@pytest.mark.parametrize("source", SOURCES)
def test_kernels_keep_everything_in_registers(source: str, tmp_path: Path) -> None:
    """No kernel has a stack frame or spills (ptxas -v, sm_90): per-thread arrays indexed at run time live in
    slow local memory (project_backward's SH basis did, 256 bytes, before its loops were templated on the
    degree)."""
    cmd = [
        NVCC,
        "-std=c++17",
        "-arch=sm_90",
        "-cubin",
        "-Xptxas",
        "-v",
        "-o",
        str(tmp_path / "out.cubin"),
        str(CUDA_DIR / source),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pattern = r"Compiling entry function '(\w+)'.*?(\d+) bytes stack frame, (\d+) bytes spill stores"
    frames = re.findall(pattern, proc.stderr, re.DOTALL)
    assert {name for name, *_ in frames} == {k for k, v in KERNELS.items() if v.source == source}, proc.stderr
    assert all(frame == spill == "0" for _, frame, spill in frames), frames
