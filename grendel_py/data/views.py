"""What the scene readers produce: one record per captured image, before cameras are built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grendel_py.data.undistort import OpenCVIntrinsics


@dataclass(frozen=True)
class RawView:
    """One captured image as a reader describes it. ``name`` is its path relative to the scene's image root
    (posix); ``width`` x ``height`` and ``intrinsics`` are those of the file as captured (possibly
    distorted); ``R`` [3, 3] and ``t`` [3] float64 map world to camera (OpenCV axes); ``split`` is
    "train"/"test" when the source defines it (Blender split files), else None."""

    name: str
    image_path: Path
    width: int
    height: int
    intrinsics: OpenCVIntrinsics
    R: np.ndarray
    t: np.ndarray
    split: str | None
