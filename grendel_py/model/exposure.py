"""Per-photo exposure compensation (``optim.exposure_lr``): a learned affine colour transform [3, 4] per training
photo, ``rgb' = A rgb + b``, applied to the render before the loss, as INRIA 3DGS's exposure (from
Hierarchical 3DGS) does for captures whose exposure changes between photos.

The transforms are few (12 numbers a photo), so every rank holds all of them, with their Adam state; a step
all-reduces the gradients of the batch's photos (each rank's share of the loss reaches them through its own
pixels), so every rank takes the same step. Test photos have no learned transform: evaluation renders them
as they are (identity), or, as INRIA's ``train_test_exp`` protocol, with a transform fitted on the left half of
each test photo and metrics on its right half (:func:`fit_exposure`; closed form here, where INRIA learns it
while training on those left halves).
"""

from __future__ import annotations

from typing import Any

import torch

from grendel_py.model.optim import FUSED_DEVICES, expon_lr

IDENTITY = torch.eye(3, 4)


def apply_exposure(image: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """``image`` [..., 3] through the affine ``transform`` [3, 4]: A rgb + b."""
    return image @ transform[:, :3].T + transform[:, 3]


def exposure_moments(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The sums a least-squares fit of ``target`` [N, 3] by an affine map of ``render`` [N, 3] needs: float64
    [4, 7] = [X^T X | X^T Y] with X = [render, 1] (add them up over ranks, then :func:`fit_exposure`)."""
    x = torch.cat([render.double(), render.new_ones(render.shape[0], 1, dtype=torch.float64)], dim=1)
    return x.T @ torch.cat([x, target.double()], dim=1)


def fit_exposure(moments: torch.Tensor) -> torch.Tensor:
    """The affine transform [3, 4] (float32) of least squares from :func:`exposure_moments` (a tiny ridge
    toward the identity keeps it defined when the pixels do not span the colours)."""
    xtx, xty = moments[:, :4], moments[:, 4:]
    ridge = 1e-9 * (float(xtx.diagonal().sum()) + 1.0)
    solution = torch.linalg.solve(
        xtx + ridge * torch.eye(4, dtype=xtx.dtype, device=xtx.device), xty + ridge * IDENTITY.T.to(xty)
    )
    return solution.T.float()


class Exposures:
    """The transforms of ``photos`` training photos (slot = index in the scene's training cameras), identity
    at first, on ``device``, optimised by Adam at ``lr``."""

    def __init__(self, photos: int, lr: float, device: torch.device):
        self.base_lr = lr
        self.transforms = IDENTITY.repeat(photos, 1, 1).to(device).requires_grad_(True)
        # Adam's default eps, not the Gaussians' 1e-15: a photo whose render matches gets gradients of float
        # noise, which a tiny eps would turn into full steps of random sign.
        self.optimizer = torch.optim.Adam([self.transforms], lr=lr, eps=1e-8, fused=device.type in FUSED_DEVICES)

    def of(self, slots: list[int]) -> torch.Tensor:
        """The transforms of the photos ``slots``, [B, 3, 4], through autograd (their gradients reach the table)."""
        return torch.stack([self.transforms[s] for s in slots])  # python indices: nothing to upload

    def step(self, slots: list[int], images_seen: int, total_images: int, reduce) -> None:
        """Sum the gradients of the batch's photos ``slots`` over ranks (``reduce``), take an Adam step at the
        learning rate of the schedule, clear the gradients."""
        if self.transforms.grad is None:  # no pixel of this rank reached them; the others' gradients still count
            self.transforms.grad = torch.zeros_like(self.transforms)
        grad = self.transforms.grad
        rows = torch.stack([grad[s] for s in slots])
        for s, row in zip(slots, reduce(rows, "sum")):
            grad[s] = row
        for group in self.optimizer.param_groups:
            group["lr"] = expon_lr(self.base_lr, self.base_lr / 10.0, images_seen / total_images)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"transforms": self.transforms.detach().cpu().clone(), "adam": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["transforms"].shape != self.transforms.shape:
            raise ValueError(
                f"exposures: {tuple(state['transforms'].shape)} saved, {tuple(self.transforms.shape)} expected"
            )
        with torch.no_grad():
            self.transforms.copy_(state["transforms"])
        self.optimizer.load_state_dict(state["adam"])
