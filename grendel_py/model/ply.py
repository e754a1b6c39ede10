"""Gaussian models as PLY files in the INRIA 3DGS layout.

One ``vertex`` element, binary little endian, float32 properties in this order::

    x y z nx ny nz f_dc_0..2 f_rest_0..f_rest_{3(K-1)-1} opacity scale_0..2 rot_0..3

with K = (d + 1)^2; normals are written as 0, opacity is the logit, scales are logs, rot is the
quaternion (w, x, y, z), and f_rest is channel-major: f_rest_{c (K-1) + k} = shN[:, k, c].
Readers also accept files without normals (gsplat) and any property order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from grendel_py.data.points import read_ply_data
from grendel_py.errors import InputError
from grendel_py.fileio import atomic_open
from grendel_py.model.gaussians import MAX_SH_DEGREE, Gaussians, num_sh_rest

_REST_COUNTS = {3 * num_sh_rest(d): d for d in range(MAX_SH_DEGREE + 1)}


def ply_property_names(sh_degree: int) -> list[str]:
    """The INRIA property names, in file order, for ``sh_degree``."""
    return [
        *("x", "y", "z", "nx", "ny", "nz"),
        *(f"f_dc_{i}" for i in range(3)),
        *(f"f_rest_{i}" for i in range(3 * num_sh_rest(sh_degree))),
        "opacity",
        *(f"scale_{i}" for i in range(3)),
        *(f"rot_{i}" for i in range(4)),
    ]


def ply_records(gaussians: Gaussians) -> np.ndarray:
    """[N, n_props] C-contiguous little-endian float32 rows in INRIA property order (normals 0)."""
    g = gaussians.to("cpu")
    n = len(g)
    columns = [
        g.means,
        torch.zeros((n, 3), dtype=torch.float32),
        g.sh0.reshape(n, 3),
        g.shN.transpose(1, 2).reshape(n, 3 * g.shN.shape[1]),
        g.opacity_logits[:, None],
        g.log_scales,
        g.quats,
    ]
    return np.ascontiguousarray(torch.cat(columns, dim=1).detach().numpy().astype("<f4", copy=False))


def write_ply(path: str | Path, gaussians: Gaussians) -> None:
    """Write ``gaussians`` (validated first) to ``path`` atomically in the INRIA layout."""
    gaussians.validate()
    dtype = np.dtype([(name, "<f4") for name in ply_property_names(gaussians.sh_degree)])
    vertices = ply_records(gaussians).view(dtype).reshape(len(gaussians))
    with atomic_open(path) as f:
        PlyData([PlyElement.describe(vertices, "vertex")], text=False, byte_order="<").write(f)


def read_ply(path: str | Path) -> Gaussians:
    """Read a Gaussian PLY (INRIA or gsplat layout, SH degree 0..3) into CPU tensors, ids = arange(N).

    Raises :class:`InputError` for unreadable or malformed files, missing properties, an f_rest count
    that matches no SH degree, and non-finite values."""
    vertices = _read_vertices(path)
    names = set(vertices.dtype.names or ())
    rest_count = sum(p.startswith("f_rest_") for p in names)
    if rest_count not in _REST_COUNTS:
        valid = ", ".join(str(c) for c in _REST_COUNTS)
        raise InputError(path, f"{rest_count} f_rest_* properties match no SH degree 0..3 (expected one of {valid})")
    sh_degree = _REST_COUNTS[rest_count]
    expected = [p for p in ply_property_names(sh_degree) if p not in ("nx", "ny", "nz")]
    missing = [p for p in expected if p not in names]
    if missing:
        raise InputError(path, f"vertex element lacks properties {', '.join(missing)}")
    n = vertices.shape[0]
    rest = _columns(path, vertices, expected[6 : 6 + rest_count])
    return Gaussians(
        means=_columns(path, vertices, ["x", "y", "z"]),
        log_scales=_columns(path, vertices, ["scale_0", "scale_1", "scale_2"]),
        quats=_columns(path, vertices, ["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacity_logits=_columns(path, vertices, ["opacity"]).reshape(n),
        sh0=_columns(path, vertices, ["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        shN=rest.reshape(n, 3, rest_count // 3).transpose(1, 2).contiguous(),
        ids=torch.arange(n, dtype=torch.int64),
    )


def _read_vertices(path: str | Path) -> np.ndarray:
    """The structured array of the ``vertex`` element of the PLY at ``path``."""
    ply = read_ply_data(path)
    if "vertex" not in ply:
        found = ", ".join(el.name for el in ply.elements) or "none"
        raise InputError(path, f"no 'vertex' element (found: {found})")
    data = ply["vertex"].data
    non_scalar = [name for name in data.dtype.names or () if data.dtype[name].kind not in "fiu"]
    if non_scalar:
        raise InputError(path, f"vertex properties {', '.join(non_scalar)} are not numeric scalars")
    return data


def _columns(path: str | Path, vertices: np.ndarray, props: list[str]) -> torch.Tensor:
    """[N, len(props)] float32 tensor of the properties ``props`` (finite-checked)."""
    cols = [_finite_column(path, vertices, p) for p in props]
    return torch.from_numpy(np.stack(cols, axis=1) if cols else np.zeros((vertices.shape[0], 0), np.float32))


def _finite_column(path: str | Path, vertices: np.ndarray, prop: str) -> np.ndarray:
    """Property ``prop`` as a contiguous float32 array; InputError if any value is NaN or infinite."""
    values = np.ascontiguousarray(vertices[prop], dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise InputError(path, f"property '{prop}' has {bad.size} non-finite values (first at vertex {bad[0]})")
    return values
