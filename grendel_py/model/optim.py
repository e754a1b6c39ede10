"""Adam over the trainable fields of a :class:`Gaussians` model, with ops that resize the model and its state.

One ``torch.optim.Adam`` param group per field, each holding that field's single leaf tensor. The optimizer
owns the model: its constructor replaces the fields of the caller's ``Gaussians`` with leaf tensors that
require grad, and :meth:`GaussianOptimizer.keep`, :meth:`~GaussianOptimizer.append` and
:meth:`~GaussianOptimizer.reset_field` swap those tensors (and ``ids``) for new ones while keeping the Adam
moments row-aligned, as INRIA 3DGS's ``_prune_optimizer`` / ``cat_tensors_to_optimizer`` /
``replace_tensor_to_optimizer`` do. Adam step counts are per group; rows that join keep the group's count.
On the CPU and CUDA the step is torch's fused Adam, whose step counts live on the model's device: the
unfused one reads each group's count back to the host (one synchronisation per field and step on a GPU).

Grendel's batch rule for B images per step: lr x sqrt(B), betas (0.9, 0.999) ** B, eps / sqrt(B).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from grendel_py.config import OptimConfig
from grendel_py.model.gaussians import TRAINABLE, Gaussians

FUSED_DEVICES = ("cpu", "cuda")
"""Device types with torch's fused Adam (elsewhere, e.g. the ``meta`` device of the tests, the default one)."""

BETAS = (0.9, 0.999)
"""Adam betas for one image per step."""


def expon_lr(lr_init: float, lr_final: float, t: float) -> float:
    """INRIA's exponential (log-linear) interpolation from ``lr_init`` at t = 0 to ``lr_final`` at t = 1;
    ``t`` is clamped to [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1.0 - t) + math.log(lr_final) * t)


class GaussianOptimizer:
    """Adam over ``gaussians`` (which it turns into the model, in place) with the batch rule for ``batch_size``.

    ``extent`` is the scene extent: the position learning rates are multiplied by it.
    """

    def __init__(self, gaussians: Gaussians, cfg: OptimConfig, extent: float, batch_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size}")
        if not extent > 0.0:
            raise ValueError(f"extent: expected a number > 0, got {extent}")
        self.gaussians = gaussians
        self.cfg = cfg
        self.extent = extent
        self.batch_size = batch_size
        self.lr_scale = math.sqrt(batch_size)
        for name in TRAINABLE:
            setattr(gaussians, name, _leaf(getattr(gaussians, name)))
        base = self._base_lrs()
        groups = [{"params": [getattr(gaussians, n)], "name": n, "lr": base[n] * self.lr_scale} for n in TRAINABLE]
        self.fused = gaussians.means.device.type in FUSED_DEVICES
        self.optimizer = torch.optim.Adam(
            groups,
            fused=self.fused,
            betas=(BETAS[0] ** batch_size, BETAS[1] ** batch_size),
            eps=cfg.eps / self.lr_scale,
        )

    def _base_lrs(self) -> dict[str, float]:
        """Per-field learning rates for one image per step (means at the start of the schedule)."""
        c = self.cfg
        return {
            "means": c.position_lr_init * self.extent,
            "log_scales": c.scaling_lr,
            "quats": c.rotation_lr,
            "opacity_logits": c.opacity_lr,
            "sh0": c.sh0_lr,
            "shN": c.shN_lr,
        }

    def _group(self, name: str) -> dict[str, Any]:
        return self.optimizer.param_groups[TRAINABLE.index(name)]

    def lr(self, name: str) -> float:
        """The current learning rate of field ``name`` (batch rule included)."""
        return float(self._group(name)["lr"])

    def position_lr(self, images_seen: int, total_images: int) -> float:
        """Position learning rate for one image per step after ``images_seen`` of ``total_images`` images:
        exponential from position_lr_init to position_lr_final, both x extent (no delay)."""
        t = images_seen / total_images
        return expon_lr(self.cfg.position_lr_init, self.cfg.position_lr_final, t) * self.extent

    def update_lr(self, images_seen: int, total_images: int) -> None:
        """Set the means learning rate to ``position_lr(images_seen, total_images) x sqrt(B)``."""
        self._group("means")["lr"] = self.position_lr(images_seen, total_images) * self.lr_scale

    def step(self) -> None:
        """One Adam step on the accumulated gradients, then clear them."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def keep(self, mask: torch.Tensor) -> None:
        """Keep only the Gaussians where the bool ``mask`` [N] is True (prune), with their Adam moments."""
        if mask.dtype != torch.bool or mask.shape != (len(self.gaussians),):
            raise ValueError(f"mask: expected bool [{len(self.gaussians)}], got {mask.dtype} {list(mask.shape)}")
        mask = mask.to(self.gaussians.device)
        for name in TRAINABLE:
            self._swap(name, getattr(self.gaussians, name).detach()[mask], lambda s: s[mask])
        self.gaussians.ids = self.gaussians.ids[mask]

    def append(self, new: Gaussians) -> None:
        """Add the Gaussians ``new`` at the end; their Adam moments start at zero."""
        model = self.gaussians
        if new.sh_degree != model.sh_degree:
            raise ValueError(f"append: SH degree {new.sh_degree} differs from the model's {model.sh_degree}")
        for name in TRAINABLE:
            rows = getattr(new, name).detach().to(model.device, torch.float32)
            values = torch.cat([getattr(model, name).detach(), rows])
            self._swap(name, values, lambda s, rows=rows: torch.cat([s, torch.zeros_like(rows)]))
        model.ids = torch.cat([model.ids, new.ids.to(model.device, torch.int64)])

    def reset_field(self, name: str, value: torch.Tensor) -> None:
        """Set field ``name`` to ``value`` (same shape) and zero its Adam moments (step count kept)."""
        if name not in TRAINABLE:
            raise ValueError(f"reset_field: {name!r} is not one of the trainable fields {TRAINABLE}")
        old = getattr(self.gaussians, name)
        if value.shape != old.shape:
            raise ValueError(f"reset_field: {name} has shape {list(old.shape)}, got a value of {list(value.shape)}")
        self._swap(name, value.detach().to(old.device, old.dtype).clone(), torch.zeros_like)

    def reset_rows(self, rows: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Zero the Adam moments of the Gaussians where the bool ``rows`` [N] is True, in every field, and set
        the fields named in ``values`` to those full-size tensors (step counts kept)."""
        if rows.dtype != torch.bool or rows.shape != (len(self.gaussians),):
            raise ValueError(f"rows: expected bool [{len(self.gaussians)}], got {rows.dtype} {list(rows.shape)}")
        for name in TRAINABLE:
            old = getattr(self.gaussians, name)
            value = values.get(name, old)
            if value.shape != old.shape:
                raise ValueError(f"reset_rows: {name} has shape {list(old.shape)}, got a value of {list(value.shape)}")
            mask = rows.reshape((-1,) + (1,) * (old.dim() - 1))
            self._swap(
                name, value.detach().to(old.device, old.dtype).clone(), lambda s, mask=mask: s.masked_fill(mask, 0.0)
            )

    def _swap(self, name: str, values: torch.Tensor, state_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Make the fresh tensor ``values`` (aliasing nothing) the leaf of field ``name`` and replace its Adam
        moments by ``state_fn(old moment)``; pending gradients are dropped."""
        old = getattr(self.gaussians, name)
        new = values.requires_grad_(True)
        self._group(name)["params"] = [new]
        state = self.optimizer.state.pop(old, None)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = state_fn(state[key])
            self.optimizer.state[new] = state
        setattr(self.gaussians, name, new)

    def state_dict(self, device: torch.device | None = None) -> dict[str, Any]:
        """Parameters, ids and per-field Adam state ({"step", "exp_avg", "exp_avg_sq"}, {} before the first
        step), as detached copies on ``device`` (default: where each lives; a checkpoint copies straight to
        the CPU, without a second copy on the GPU first). Learning rates and the batch rule are not saved:
        they come from the loading optimizer's config (call :meth:`update_lr` after loading)."""

        def copy(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(device or t.device, copy=True)

        params = {n: copy(getattr(self.gaussians, n)) for n in TRAINABLE}
        adam = {}
        for name in TRAINABLE:
            state = self.optimizer.state.get(getattr(self.gaussians, name), {})
            adam[name] = {k: copy(v) for k, v in state.items()}
        return {"params": params, "ids": copy(self.gaussians.ids), "adam": adam}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into this optimizer and its model (any size; this device)."""
        device = self.gaussians.device
        for name in TRAINABLE:
            old = getattr(self.gaussians, name)
            new = _leaf(state["params"][name].to(device, torch.float32))
            self._group(name)["params"] = [new]
            self.optimizer.state.pop(old, None)
            saved = state["adam"][name]
            if saved:
                self.optimizer.state[new] = {
                    "step": saved["step"].to(device if self.fused else "cpu", torch.float32, copy=True),
                    "exp_avg": saved["exp_avg"].to(device, torch.float32),
                    "exp_avg_sq": saved["exp_avg_sq"].to(device, torch.float32),
                }
            setattr(self.gaussians, name, new)
        self.gaussians.ids = state["ids"].to(device, torch.int64)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """A fresh leaf tensor with ``t``'s values that requires grad."""
    return t.detach().clone().requires_grad_(True)
