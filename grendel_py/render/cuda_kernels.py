"""The CUDA kernels in ``cuda/``: their signatures and their launch through CuPy.

Each kernel is listed once in :data:`KERNELS` with its source file, how it is launched and its argument
types. :class:`CupyKernels` compiles the sources with ``cupy.RawModule`` (NVRTC; CuPy caches the binaries on
disk, and this module keeps one module per device), shares torch tensors with CuPy through DLPack without
copies and launches on torch's current stream. ``launch`` checks every tensor's dtype, device and contiguity
against the signature, so a wrong call fails in Python instead of reading the wrong memory.

The same signatures drive the tests' host emulation (tests/host_kernels.py), which runs the kernels' math
(the ``.cuh`` headers) on the CPU.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from grendel_py.errors import InputError

CUDA_DIR = Path(__file__).resolve().parents[2] / "cuda"
BLOCK = 256  # threads per block: element kernels, and the 16 x 16 pixels of a tile
NVRTC_OPTIONS = ("--std=c++17",)

DTYPES = {"f32*": torch.float32, "i32*": torch.int32, "i64*": torch.int64, "u8*": torch.uint8}


@dataclass(frozen=True)
class Kernel:
    """``source``: file in cuda/. ``grid``: "element" (one thread per item, the item count is the kernel's
    first argument, typed by ``args[0]``) or "tile" (one 16 x 16 block per selected tile, the count is only
    the grid size). ``args``: the argument types, "i32", "i64", "f32*", "i32*", "i64*" or "u8*"."""

    source: str
    grid: str
    args: tuple[str, ...]


_BIN_IN = ("i32", "f32*", "f32*", "f32*", "i32*", "i64*", "i32", "i32*")
_RASTER_IN = ("i64*", "i64*", "i32*", "f32*", "f32*", "f32*", "f32*", "f32*", "i64*", "i32")
KERNELS: dict[str, Kernel] = {
    # n, means, quats, scales, opacities, sh, n_coeffs, degree, cam, width, height, antialiased
    #   -> means2d, conics, depths, opacities_out, colors, extents
    "project_forward": Kernel(
        "project.cu",
        "element",
        ("i32",) + ("f32*",) * 5 + ("i32", "i32", "f32*", "i32", "i32", "i32") + ("f32*",) * 5 + ("i32*",),
    ),
    # n, means, quats, scales, opacities, sh, n_coeffs, degree, cam, antialiased, v_means2d, v_conics, v_depths, v_opacities_out,
    #   v_colors -> v_means, v_quats, v_scales, v_opacities, v_sh
    "project_backward": Kernel(
        "project.cu", "element", ("i32",) + ("f32*",) * 5 + ("i32", "i32", "f32*", "i32") + ("f32*",) * 10
    ),
    # m = B n, n, means, quats, log_scales, opacity_logits, cams [B, 24], sizes [B, 2], antialiased -> visible [m]
    "project_visible": Kernel("project.cu", "element", ("i64", "i32") + ("f32*",) * 5 + ("i32*", "i32", "i64*")),
    # m, n, means, quats, log_scales, opacity_logits, sh0, shN, n_coeffs, degree, cams, sizes, antialiased, slots
    #   -> means2d, conics, depths, opacities_out, colors, extents, rows
    "project_packed_forward": Kernel(
        "project.cu",
        "element",
        ("i64", "i32") + ("f32*",) * 6 + ("i32", "i32", "f32*", "i32*", "i32", "i64*") + ("f32*",) * 5 + ("i32*",) * 2,
    ),
    # n, B, means, quats, log_scales, opacity_logits, sh0, shN, n_coeffs, degree, cams, antialiased, slots,
    #   v_means2d, v_conics, v_depths, v_opacities_out, v_colors -> += g_means, g_quats, g_log_scales, g_logits,
    #   g_sh0, g_shN
    "project_packed_backward": Kernel(
        "project.cu",
        "element",
        ("i32", "i32") + ("f32*",) * 6 + ("i32", "i32", "f32*", "i32", "i64*") + ("f32*",) * 11,
    ),
    # n, means2d, conics, opacities, extents, cams [B, 5], B, slot_of_tile [batch tiles] -> counts
    "count_intersections": Kernel("bin.cu", "element", _BIN_IN + ("i64*",)),
    # n, means2d, conics, opacities, extents, cams, B, slot_of_tile, starts, depth_rank -> keys
    "emit_keys": Kernel("bin.cu", "element", _BIN_IN + ("i64*", "i64*", "i64*")),
    # n, means2d, conics, opacities, extents, cams [B, 5], B -> += counts [batch tiles]
    "count_tile_pairs": Kernel("bin.cu", "element", ("i32", "f32*", "f32*", "f32*", "i32*", "i64*", "i32", "i32*")),
    # n, means2d, conics, opacities, extents, cams, B, owners [batch tiles] -> reach [W, n] (bytes, set to 1)
    "route_splats": Kernel("bin.cu", "element", ("i32", "f32*", "f32*", "f32*", "i32*", "i64*", "i32", "i64*", "u8*")),
    # m, sorted keys, n_slots -> offsets
    "tile_ranges": Kernel("bin.cu", "element", ("i64", "i64*", "i32", "i64*")),
    # regions [R, 6], R, canvases, ground truth, owned, weights [R, 2] -> block losses, block squared errors, maps
    # (grendel_py/loss/fused.py)
    "loss_forward": Kernel("loss.cu", "tile", ("i64*", "i32", "f32*", "f32*", "i32*", "f32*", "f32*", "f32*", "f32*")),
    # regions, R, canvases, ground truth, owned, weights, maps, incoming gradient [1] -> canvas gradient
    "loss_backward": Kernel("loss.cu", "tile", ("i64*", "i32", "f32*", "f32*", "i32*", "f32*", "f32*", "f32*", "f32*")),
    # batch tile ids, offsets, splat_index, means2d, conics, opacities, colors, background, cams, B -> rgb, T, walked
    "rasterize_forward": Kernel("rasterize.cu", "tile", _RASTER_IN + ("f32*", "f32*", "i32*")),
    # ..., cams, B, T_final, walked, g_rgb, g_alpha -> v_means2d, v_conics, v_opacities, v_colors
    "rasterize_backward": Kernel("rasterize.cu", "tile", _RASTER_IN + ("f32*", "i32*", "f32*", "f32*") + ("f32*",) * 4),
}

_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.MULTILINE)


def cuda_source(name: str) -> str:
    """The source of cuda/``name`` with its local includes expanded (once each, as ``#pragma once``), so the
    text NVRTC compiles, and CuPy's cache key, hold every line the kernels depend on."""
    seen: set[str] = set()

    def expand(file: str) -> str:
        if file in seen:
            return ""
        seen.add(file)
        path = CUDA_DIR / file
        if not path.is_file():
            raise InputError(path, "CUDA source not found (the cupy backend needs the repository's cuda/ folder)")
        text = path.read_text().replace("#pragma once\n", "")
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(name)


def check_args(name: str, args: tuple) -> None:
    """Raise ValueError unless ``args`` fit kernel ``name``'s signature (tensors: dtype and contiguity)."""
    kernel = KERNELS[name]
    types = kernel.args[1:] if kernel.grid == "element" else kernel.args
    if len(args) != len(types):
        raise ValueError(f"kernel {name} takes {len(types)} arguments after the size, got {len(args)}")
    for i, (arg, kind) in enumerate(zip(args, types)):
        if kind in DTYPES:
            if not isinstance(arg, torch.Tensor) or arg.dtype != DTYPES[kind] or not arg.is_contiguous():
                got = (
                    f"{arg.dtype}, contiguous={arg.is_contiguous()}"
                    if isinstance(arg, torch.Tensor)
                    else type(arg).__name__
                )
                raise ValueError(f"kernel {name} argument {i}: expected a contiguous {DTYPES[kind]} tensor, got {got}")
        elif not isinstance(arg, int):
            raise ValueError(f"kernel {name} argument {i}: expected an int, got {type(arg).__name__}")


class CupyKernels:
    """The kernels compiled for one CUDA device, launched on torch's current stream."""

    def __init__(self, device: torch.device):
        import cupy

        self._cupy = cupy
        self.device = device
        with cupy.cuda.Device(device.index):
            modules = {
                src: cupy.RawModule(code=cuda_source(src), options=NVRTC_OPTIONS)
                for src in sorted({k.source for k in KERNELS.values()})
            }
            self._functions = {name: modules[k.source].get_function(name) for name, k in KERNELS.items()}

    def launch(self, name: str, size: int, *args) -> None:
        """Run kernel ``name`` over ``size`` items (element kernels) or selected tiles (tile kernels)."""
        check_args(name, args)
        if size == 0:
            return
        cp = self._cupy
        kernel = KERNELS[name]
        if kernel.grid == "element":
            grid, block = (min(-(-size // BLOCK), 1 << 20),), (BLOCK,)
        else:
            grid, block = (size,), (16, 16)
        scalar = {"i32": np.int32, "i64": np.int64}
        stream = torch.cuda.current_stream(self.device)
        # Inside torch's stream, so DLPack hands the tensors over without a cross-stream wait.
        with cp.cuda.Device(self.device.index), cp.cuda.ExternalStream(stream.cuda_stream):
            values = []
            for arg, kind in zip((size,) + args if kernel.grid == "element" else args, kernel.args):
                if isinstance(arg, torch.Tensor):
                    if arg.device != self.device:
                        raise ValueError(f"kernel {name}: tensor on {arg.device}, kernels compiled for {self.device}")
                    # detach: DLPack refuses tensors that require grad (autograd Functions get the originals)
                    values.append(cp.from_dlpack(arg.detach()) if arg.numel() else cp.ndarray(0, dtype=np.float32))
                else:
                    values.append(scalar[kind](arg))
            self._functions[name](grid, block, tuple(values))


@functools.cache
def cupy_kernels(device: torch.device) -> CupyKernels:
    """The kernels of ``device`` (a CUDA device), compiled once per process."""
    if device.type != "cuda":
        raise InputError(None, f"the cupy render backend needs CUDA tensors, got tensors on {device}")
    try:
        import cupy  # noqa: F401
    except ImportError as err:
        raise InputError(
            None, "render.backend=cupy needs CuPy: pip install 'grendel_py[cuda]' (CUDA 13) or 'grendel_py[cuda12]'"
        ) from err
    return CupyKernels(device)
