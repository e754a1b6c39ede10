"""Pinhole cameras as the renderer sees them.

Conventions (COLMAP / OpenCV): camera axes x right, y down, z forward; ``R, t`` map world to camera
(``x_cam = R @ x_world + t``); intrinsics in pixels with pixel (i, j) centred at (i + 0.5, j + 0.5), so
a point projects to ``u = fx * x / z + cx``. Distorted captures are undistorted to this model when the
dataset is loaded, so everything downstream of the readers is pinhole.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch


@dataclass(frozen=True)
class Camera:
    """One view: pose, pinhole intrinsics, image size and where its image lives.

    ``R`` ([3, 3]) and ``t`` ([3]) are float64 tensors (world -> camera). ``uid`` is the camera's index in its
    scene (stable across splits). ``image_path`` is None for cameras without a photo (synthetic renders).
    """

    uid: int
    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    R: torch.Tensor
    t: torch.Tensor
    image_path: Path | None = None

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera {self.name}: image size must be positive, got {self.width}x{self.height}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"camera {self.name}: focal lengths must be positive, got {self.fx}, {self.fy}")
        if tuple(self.R.shape) != (3, 3) or tuple(self.t.shape) != (3,):
            raise ValueError(f"camera {self.name}: R must be [3, 3] and t [3]")

    @property
    def center(self) -> torch.Tensor:
        """Camera centre in world coordinates, float64 [3]."""
        return -self.R.T @ self.t

    def to_camera(self, x: torch.Tensor) -> torch.Tensor:
        """World points ``x`` [..., 3] (float64) in camera coordinates, ``R @ x + t`` summed in a fixed order
        (so the result does not depend on the matmul kernel or thread count)."""
        R, t = self.R, self.t
        return torch.stack(
            [R[r, 0] * x[..., 0] + R[r, 1] * x[..., 1] + R[r, 2] * x[..., 2] + t[r] for r in range(3)], dim=-1
        )

    def pixels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """World points ``x`` [P, 3] (float64): pixel coordinates ``u``, ``v`` [P] and whether each lies in front
        of the camera and inside the image, bool [P] (``u``, ``v`` of points behind it are meaningless)."""
        xc = self.to_camera(x)
        z = xc[:, 2]
        safe_z = torch.where(z > 0, z, torch.ones_like(z))
        u, v = self.fx * xc[:, 0] / safe_z + self.cx, self.fy * xc[:, 1] / safe_z + self.cy
        return u, v, (z > 0) & (u >= 0) & (u < self.width) & (v >= 0) & (v < self.height)

    def world_to_camera(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """The 4x4 world-to-camera matrix."""
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = self.R
        m[:3, 3] = self.t
        return m.to(dtype=dtype, device=device)

    def intrinsics(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """The 3x3 intrinsic matrix K."""
        k = torch.tensor([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
        return k.to(dtype=dtype, device=device)

    def scaled(self, width: int, height: int) -> Camera:
        """The same camera with its image resized to ``width`` x ``height`` (intrinsics scaled per axis)."""
        sx, sy = width / self.width, height / self.height
        return replace(
            self, width=width, height=height, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy
        )


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera ``(R, t)`` (float64) for a camera at ``eye`` looking at ``target``; ``up`` is the world's up.

    The camera's y axis points down in the image, so it is the negated projection of ``up``.
    """
    eye, target, up = (torch.as_tensor(v, dtype=torch.float64) for v in (eye, target, up))
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    if x.norm() < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to the up vector")
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])  # rows: camera axes in world coordinates
    t = -R @ eye
    return R, t
