"""Rays against the scene's primitives, vectorised (all broadcasting over leading dimensions; misses are +inf),
and the caster that finds each ray's nearest hit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grendel_py.synth.scene import BOX, GROUND, MISS, SPHERE, Scene


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over the last axis (size 3), summed in a fixed order."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def ray_sphere(
    origin: torch.Tensor, direction: torch.Tensor, center: torch.Tensor, radius: torch.Tensor
) -> torch.Tensor:
    """Distance along unit rays to the nearest sphere hit in front of the origin (``+inf`` on a miss).

    ``origin``, ``direction``, ``center`` [..., 3] and ``radius`` [...] broadcast together; result [...].
    """
    oc = origin - center
    b = dot(oc, direction)
    disc = b * b - (dot(oc, oc) - radius * radius)
    root = torch.sqrt(torch.clamp(disc, min=0.0))
    near, far = -b - root, -b + root
    t = torch.where(near > 0, near, far)
    return torch.where((disc >= 0) & (t > 0), t, torch.full_like(t, math.inf))


def _safe_inverse(d: torch.Tensor) -> torch.Tensor:
    """``1 / d`` with components of magnitude below 1e-12 nudged away from zero (keeping their sign)."""
    tiny = torch.where(d < 0, torch.full_like(d, -1e-12), torch.full_like(d, 1e-12))
    return 1.0 / torch.where(d.abs() < 1e-12, tiny, d)


def ray_aabb(origin: torch.Tensor, direction: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Distance along rays to an axis-aligned box ``[lo, hi]`` (slab test; ``+inf`` on a miss).

    Shapes [..., 3] broadcast together; result [...]. A ray starting inside the box reports its exit.
    """
    inv = _safe_inverse(direction)
    t_near = t_far = None
    for axis in range(3):
        t1 = (lo[..., axis] - origin[..., axis]) * inv[..., axis]
        t2 = (hi[..., axis] - origin[..., axis]) * inv[..., axis]
        lo_t, hi_t = torch.minimum(t1, t2), torch.maximum(t1, t2)
        t_near = lo_t if t_near is None else torch.maximum(t_near, lo_t)
        t_far = hi_t if t_far is None else torch.minimum(t_far, hi_t)
    t = torch.where(t_near > 0, t_near, t_far)
    return torch.where((t_far >= t_near) & (t_far > 0), t, torch.full_like(t, math.inf))


def ray_plane(origin: torch.Tensor, direction: torch.Tensor, point: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Distance along rays to the plane through ``point`` with ``normal`` (``+inf`` if parallel or behind).

    Shapes [..., 3] broadcast together; result [...].
    """
    denom = dot(direction, normal)
    safe = torch.where(denom.abs() < 1e-12, torch.ones_like(denom), denom)
    t = dot(point - origin, normal) / safe
    return torch.where((denom.abs() >= 1e-12) & (t > 0), t, torch.full_like(t, math.inf))


def box_normals(direction: torch.Tensor, origin: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Outward normals [N, 3] of the box faces that rays [N, 3] enter (the slab with the largest entry time)."""
    inv = _safe_inverse(direction)
    entry = torch.stack(
        [
            torch.minimum((lo[:, a] - origin[..., a]) * inv[:, a], (hi[:, a] - origin[..., a]) * inv[:, a])
            for a in range(3)
        ],
        dim=1,
    )
    axis = entry.argmax(dim=1)
    normals = torch.zeros_like(direction)
    rows = torch.arange(direction.shape[0])
    normals[rows, axis] = torch.where(direction[rows, axis] > 0, -1.0, 1.0).to(direction.dtype)
    return normals


@dataclass(frozen=True)
class Hits:
    """Nearest hits of rays [N]: ``t`` distance (inf: miss), ``kind`` (MISS/GROUND/SPHERE/BOX), ``index``
    of the sphere or box hit (0 otherwise)."""

    t: torch.Tensor
    kind: torch.Tensor
    index: torch.Tensor


def cast(scene: Scene, origin: torch.Tensor, direction: torch.Tensor, candidates: torch.Tensor) -> Hits:
    """Nearest hits of rays from ``origin`` [3] along unit ``direction`` [G, R, 3] (results flattened to [G * R]).

    Rays of group g are tested only against the boxes ``candidates[g]`` [G, K] (-1: padding); every sphere
    and the ground are tested for all rays.
    """
    g, r = direction.shape[:2]
    dtype = direction.dtype
    inf = torch.full((g, r), math.inf, dtype=dtype)
    zero = torch.zeros((g, r), dtype=torch.int64)

    t = ray_plane(origin, direction, torch.zeros(3, dtype=dtype), torch.tensor([0.0, 0.0, 1.0], dtype=dtype))
    x, y = origin[0] + t * direction[..., 0], origin[1] + t * direction[..., 1]
    if scene.ground_round:
        inside = x * x + y * y <= scene.ground_half**2
    else:
        inside = (x.abs() <= scene.ground_half) & (y.abs() <= scene.ground_half)
    t_ground = torch.where(inside, t, inf)

    t_sphere, i_sphere = inf, zero
    if scene.sphere_radius.numel():
        t = ray_sphere(origin, direction[:, :, None, :], scene.sphere_center.to(dtype), scene.sphere_radius.to(dtype))
        t_sphere, i_sphere = t.min(dim=-1)

    t_box, i_box = inf, zero
    if candidates.shape[1]:
        safe = candidates.clamp(min=0)
        lo, hi = scene.box_lo.to(dtype)[safe], scene.box_hi.to(dtype)[safe]
        t = ray_aabb(origin, direction[:, :, None, :], lo[:, None], hi[:, None])
        t = torch.where((candidates < 0)[:, None, :], torch.full_like(t, math.inf), t)
        t_box, k = t.min(dim=-1)
        i_box = candidates.gather(1, k)

    t_best, kind, index = t_ground, torch.where(t_ground < math.inf, GROUND, MISS), zero
    for k, t, i in ((SPHERE, t_sphere, i_sphere), (BOX, t_box, i_box)):  # ties go to the earlier kind
        closer = t < t_best
        t_best, kind, index = (
            torch.where(closer, t, t_best),
            torch.where(closer, k, kind),
            torch.where(closer, i, index),
        )
    return Hits(t=t_best.reshape(-1), kind=kind.reshape(-1), index=index.reshape(-1))


def cast_groups(
    scene: Scene, origin: torch.Tensor, direction: torch.Tensor, candidates: torch.Tensor, chunks: int = 4
) -> Hits:
    """:func:`cast` with the groups sorted by candidate count and cast in ``chunks`` batches, each padded only
    to its own largest count (much less padding when a few groups see many boxes)."""
    g, r = direction.shape[:2]
    count = (candidates >= 0).sum(dim=1)
    order = torch.sort(count, stable=True).indices
    t = torch.empty((g, r), dtype=direction.dtype)
    kind = torch.empty((g, r), dtype=torch.int64)
    index = torch.empty((g, r), dtype=torch.int64)
    for part in torch.tensor_split(order, chunks):
        if part.numel() == 0:
            continue
        hits = cast(scene, origin, direction[part], candidates[part, : int(count[part].max())])
        t[part], kind[part], index[part] = hits.t.reshape(-1, r), hits.kind.reshape(-1, r), hits.index.reshape(-1, r)
    return Hits(t=t.reshape(-1), kind=kind.reshape(-1), index=index.reshape(-1))
