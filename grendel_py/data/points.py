"""A scene's initial point cloud (what the model starts from with ``model.init: points``), and the PLY reader
that point clouds and Gaussian models share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from plyfile import PlyData, PlyParseError

from grendel_py.errors import InputError, one_line


@dataclass(frozen=True)
class PointCloud:
    """``xyz`` [P, 3] float32 and ``rgb`` [P, 3] uint8 (both None when the scene has no points), read from
    ``source`` (the points file, or the scene when it has none: what errors about them name)."""

    xyz: torch.Tensor | None
    rgb: torch.Tensor | None
    source: Path


def read_ply_data(path: str | Path, missing: str = "no such file") -> PlyData:
    """The PLY file at ``path`` as plyfile parses it; InputError naming it when it is absent (``missing``),
    unreadable or not a valid PLY."""
    try:
        # mapped (copy-on-write): plyfile reads unmapped files row by row in Python
        return PlyData.read(str(path), mmap="c")
    except FileNotFoundError:
        raise InputError(path, missing) from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a valid PLY file: the header is not ASCII text") from None
    except (PlyParseError, ValueError) as e:
        raise InputError(path, f"not a valid PLY file: {one_line(str(e))}") from None
