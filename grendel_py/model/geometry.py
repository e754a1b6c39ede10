"""The 3D shape of a Gaussian: its rotation from the quaternion (w, x, y, z) and its covariance R S S^T R^T;
used by the projection, densification (split offsets along the axes) and the viewer's arrays."""

from __future__ import annotations

import torch


def quats_to_rotmats(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] from quaternions (w, x, y, z) [N, 4], normalised here."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def covariances_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World covariances [N, 3, 3] = R S S^T R^T from quaternions [N, 4] and scales [N, 3]."""
    m = quats_to_rotmats(quats) * scales[:, None, :]
    return m @ m.transpose(1, 2)
