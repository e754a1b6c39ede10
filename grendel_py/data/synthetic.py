"""Synthetic COLMAP datasets (``grendel synth``): procedural scenes rendered by an independent ray caster.

The scenes are analytic (spheres, axis-aligned boxes, a ground plane at ``z = 0``; world ``z`` is up) with
procedural, view-independent textures (checkers, stripes, seeded value noise, window grids, street grids)
lit by a fixed directional light plus ambient. Images come from a vectorised torch ray caster, never from
a Gaussian splat renderer, so they are a fair reconstruction target. Cameras follow :mod:`cameras`
(OpenCV axes, world -> camera ``R, t``, pixel ``(i, j)`` centred at ``(i + 0.5, j + 0.5)``).

Everything is deterministic given the seed: scene and camera parameters come from numpy generators seeded
with ``[seed, stream]``, and the per-pixel maths uses only exactly rounded operations (``+ - * /``, sqrt,
floor, min/max) and integer hashing, so results do not depend on the number of threads.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from grendel_py.data.cameras import Camera, look_at
from grendel_py.data.colmap import (
    ColmapCamera,
    ColmapImage,
    ColmapPoints,
    rotmat_to_qvec,
    write_model,
)
from grendel_py.errors import InputError
from grendel_py.outputs import staged_dir

PRESETS = ("object", "city")

# Texture kinds of a material.
_CHECKER, _STRIPES, _NOISE, _FACADE, _STREETS = range(5)
# Hit kinds returned by the caster.
_MISS, _GROUND, _SPHERE, _BOX = range(4)

_LIGHT = (0.45, 0.3, 0.84)  # direction towards the light (normalised where used)
_AMBIENT = 0.35
_DIFFUSE = 0.65
_DTYPE = torch.float32  # ray casting precision; projections of points are float64
_PARK_FRACTION = 0.12  # share of city blocks left as parks (no buildings, grass ground)


@dataclass(frozen=True)
class Materials:
    """Per-material texture parameters: ``kind`` [M] int64, colours ``a``, ``b`` [M, 3] in [0, 1], ``scale`` [M]."""

    kind: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    scale: torch.Tensor


@dataclass(frozen=True)
class Streets:
    """A square street grid: ``n`` x ``n`` blocks of pitch ``pitch`` starting at ``origin`` (x and y), roads
    ``road`` wide along the low side of each block and around the whole grid."""

    origin: float
    pitch: float
    road: float
    n: int

    @property
    def end(self) -> float:
        """The far edge of the grid (including its last road)."""
        return self.origin + self.n * self.pitch + self.road


@dataclass(frozen=True)
class Scene:
    """An analytic scene in world coordinates (z up).

    Spheres: ``sphere_center`` [S, 3], ``sphere_radius`` [S]; boxes: ``box_lo``, ``box_hi`` [B, 3]; each with a
    material index (``*_material`` [S] / [B] int64). The ground is the plane ``z = 0`` limited to a disc of
    radius ``ground_half`` (``ground_round``) or the square ``|x|, |y| <= ground_half``. Rays that miss see
    ``sky`` (horizon colour, zenith colour) blended by the ray's elevation. ``lattice`` [1024] holds the
    seeded value-noise values in [0, 1). ``extent`` is the scene's size across (world units).
    """

    sphere_center: torch.Tensor
    sphere_radius: torch.Tensor
    sphere_material: torch.Tensor
    box_lo: torch.Tensor
    box_hi: torch.Tensor
    box_material: torch.Tensor
    ground_half: float
    ground_round: bool
    ground_material: int
    materials: Materials
    lattice: torch.Tensor
    sky: tuple[tuple[float, float, float], tuple[float, float, float]]
    extent: float
    streets: Streets | None = None


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic` wrote: image count and size, 3D point count and the scene's extent."""

    n_images: int
    n_points: int
    width: int
    height: int
    extent: float


@dataclass(frozen=True)
class _Spec:
    """Generation parameters of a preset: points are sampled from every ``sample_every``-th view on a pixel
    grid of stride ``sample_stride``, merged on a ``voxel`` grid; tracks keep at most ``max_track`` views."""

    sample_every: int
    sample_stride: int
    voxel: float
    max_track: int


_SPECS = {
    "object": _Spec(sample_every=3, sample_stride=5, voxel=0.035, max_track=16),
    "city": _Spec(sample_every=3, sample_stride=8, voxel=1.3, max_track=12),
}


# ---------------------------------------------------------------------------------------------------------
# Ray / primitive intersection (all broadcasting over leading dimensions; misses are +inf).


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over the last axis (size 3), summed in a fixed order."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def ray_sphere(
    origin: torch.Tensor, direction: torch.Tensor, center: torch.Tensor, radius: torch.Tensor
) -> torch.Tensor:
    """Distance along unit rays to the nearest sphere hit in front of the origin (``+inf`` on a miss).

    ``origin``, ``direction``, ``center`` [..., 3] and ``radius`` [...] broadcast together; result [...].
    """
    oc = origin - center
    b = _dot(oc, direction)
    disc = b * b - (_dot(oc, oc) - radius * radius)
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
    denom = _dot(direction, normal)
    safe = torch.where(denom.abs() < 1e-12, torch.ones_like(denom), denom)
    t = _dot(point - origin, normal) / safe
    return torch.where((denom.abs() >= 1e-12) & (t > 0), t, torch.full_like(t, math.inf))


def _box_normals(direction: torch.Tensor, origin: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
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
class _Hits:
    """Nearest hits of rays [N]: ``t`` distance (inf: miss), ``kind`` (_MISS/_GROUND/_SPHERE/_BOX), ``index``
    of the sphere or box hit (0 otherwise)."""

    t: torch.Tensor
    kind: torch.Tensor
    index: torch.Tensor


def _cast(scene: Scene, origin: torch.Tensor, direction: torch.Tensor, candidates: torch.Tensor) -> _Hits:
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

    t_best, kind, index = t_ground, torch.where(t_ground < math.inf, _GROUND, _MISS), zero
    for k, t, i in ((_SPHERE, t_sphere, i_sphere), (_BOX, t_box, i_box)):  # ties go to the earlier kind
        closer = t < t_best
        t_best, kind, index = (
            torch.where(closer, t, t_best),
            torch.where(closer, k, kind),
            torch.where(closer, i, index),
        )
    return _Hits(t=t_best.reshape(-1), kind=kind.reshape(-1), index=index.reshape(-1))


def _cast_groups(
    scene: Scene, origin: torch.Tensor, direction: torch.Tensor, candidates: torch.Tensor, chunks: int = 4
) -> _Hits:
    """:func:`_cast` with the groups sorted by candidate count and cast in ``chunks`` batches, each padded only
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
        hits = _cast(scene, origin, direction[part], candidates[part, : int(count[part].max())])
        t[part], kind[part], index[part] = hits.t.reshape(-1, r), hits.kind.reshape(-1, r), hits.index.reshape(-1, r)
    return _Hits(t=t.reshape(-1), kind=kind.reshape(-1), index=index.reshape(-1))


# ---------------------------------------------------------------------------------------------------------
# Procedural textures (functions of the surface point and normal only, hence view-independent).


def _mix(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``a`` [N, 3] blended towards ``b`` [N, 3] by weights ``m`` [N]."""
    return a + (b - a) * m[:, None]


def _frac(x: torch.Tensor) -> torch.Tensor:
    """Fractional part in [0, 1)."""
    return x - torch.floor(x)


_PRIMES = (73856093, 19349663, 83492791)  # spatial-hash multipliers of the x, y, z lattice indices


def _lattice_value(lattice: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The lattice value picked by the (mixed) integer hash ``h`` (int64, any shape)."""
    h = h ^ (h >> 11) ^ (h >> 21)
    return lattice.take(h & (lattice.shape[0] - 1))


def _hash2(lattice: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
    """A value in [0, 1) per integer cell ``(ix, iy)`` (int64 tensors, broadcast) from the noise ``lattice``."""
    return _lattice_value(lattice, ix * _PRIMES[0] ^ iy * _PRIMES[1])


def _value_noise(scene: Scene, p: torch.Tensor) -> torch.Tensor:
    """Smooth value noise in [0, 1] at points ``p`` [N, 3] (lattice spacing 1): seeded random values at the
    integer lattice points (spatial hash into ``scene.lattice``) interpolated with smoothstep weights."""
    base = torch.floor(p)
    w = p - base
    w = w * w * (3.0 - 2.0 * w)
    i = base.to(torch.int64)
    lattice = scene.lattice.to(p.dtype)
    hx, hy, hz = ([(i[:, a] + d) * _PRIMES[a] for d in (0, 1)] for a in range(3))

    def lerp(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return a + (b - a) * m

    corner = [
        [
            lerp(
                _lattice_value(lattice, hx[0] ^ hy[dy] ^ hz[dz]),
                _lattice_value(lattice, hx[1] ^ hy[dy] ^ hz[dz]),
                w[:, 0],
            )
            for dz in (0, 1)
        ]
        for dy in (0, 1)
    ]
    return lerp(lerp(corner[0][0], corner[1][0], w[:, 1]), lerp(corner[0][1], corner[1][1], w[:, 1]), w[:, 2])


def _fbm(scene: Scene, p: torch.Tensor, octaves: int = 3) -> torch.Tensor:
    """Fractal sum of ``octaves`` value-noise octaves (each twice the frequency, half the weight), in [0, 1]."""
    total = torch.zeros(p.shape[0], dtype=p.dtype)
    weight, norm = 1.0, 0.0
    for octave in range(octaves):
        total = total + weight * _value_noise(scene, p * float(2**octave) + 17.31 * octave)
        norm += weight
        weight *= 0.5
    return total / norm


def _contrast(m: torch.Tensor, gain: float) -> torch.Tensor:
    """Stretch ``m`` in [0, 1] about 0.5 by ``gain``, clamped to [0, 1]."""
    return torch.clamp((m - 0.5) * gain + 0.5, 0.0, 1.0)


def _rgb(colour: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    """A constant colour expanded to the shape of ``like`` [N, 3]."""
    return torch.tensor(colour, dtype=like.dtype).expand_as(like)


def _tex_checker(
    scene: Scene, p: torch.Tensor, n: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """Solid 3D checker of cell size ``s``, mottled by noise."""
    q = torch.floor(p / s[:, None] + 0.37)
    parity = torch.remainder(q[:, 0] + q[:, 1] + q[:, 2], 2.0)
    grain = 0.8 + 0.4 * _fbm(scene, p * (3.0 / s[:, None]))
    return _mix(a, b, parity) * grain[:, None]


def _tex_stripes(
    scene: Scene, p: torch.Tensor, n: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """Slanted stripes of period ``s`` (mostly along z), mottled by noise."""
    phase = (0.35 * p[:, 0] + 0.2 * p[:, 1] + p[:, 2]) / s + 0.37
    band = (_frac(phase) < 0.5).to(p.dtype)
    grain = 0.8 + 0.4 * _fbm(scene, p * (3.0 / s[:, None]))
    return _mix(a, b, band) * grain[:, None]


def _tex_noise(
    scene: Scene, p: torch.Tensor, n: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """Four-octave value noise of feature size ``s`` blending the two colours."""
    return _mix(a, b, _contrast(_fbm(scene, p / s[:, None], octaves=4), 2.2))


def _tex_facade(
    scene: Scene, p: torch.Tensor, n: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """A building: wall ``a`` with a grid of windows ``b`` (spacing ``s``, storeys 1.2 ``s``, some lit) on
    vertical faces; a mottled grey roof on top faces."""
    m = _fbm(scene, p * 1.5)
    grain = (0.85 + 0.3 * m)[:, None]
    along = -n[:, 1] * p[:, 0] + n[:, 0] * p[:, 1]
    storey = 1.2 * s
    col, row = along / s + 0.25, p[:, 2] / storey
    fu, fv = _frac(col), _frac(row)
    window = (fu > 0.2) & (fu < 0.8) & (fv > 0.3) & (fv < 0.85) & (p[:, 2] > storey)
    cell = _hash2(scene.lattice, torch.floor(col).to(torch.int64), torch.floor(row).to(torch.int64)).to(p.dtype)
    glass = torch.where((cell > 0.85)[:, None], _rgb((0.95, 0.85, 0.55), b), b * (0.6 + 0.8 * cell)[:, None])
    wall = torch.where(window[:, None], glass, a * grain)
    roof = _mix(a * 0.6, _rgb((0.42, 0.42, 0.44), a), _contrast(m, 2.0)) * grain
    return torch.where((n[:, 2] > 0.5)[:, None], roof, wall)


def _tex_streets(
    scene: Scene, p: torch.Tensor, n: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """The city ground: asphalt roads ``a`` with dashed centre lines on the street grid, paved blocks ``b``
    or grass parks inside it, fields outside it."""
    streets = scene.streets
    grain = (0.8 + 0.4 * _fbm(scene, p * 0.7))[:, None]
    local = (p[:, :2] - streets.origin) / streets.pitch
    cell = torch.floor(local)
    offset = (local - cell) * streets.pitch  # position inside the block's pitch cell
    road_x, road_y = offset[:, 0] < streets.road, offset[:, 1] < streets.road
    half = 0.5 * streets.road
    dash_x = road_x & ((offset[:, 0] - half).abs() < 0.3) & (_frac(p[:, 1] / 6.0) < 0.5) & ~road_y
    dash_y = road_y & ((offset[:, 1] - half).abs() < 0.3) & (_frac(p[:, 0] / 6.0) < 0.5) & ~road_x
    road = torch.where((dash_x | dash_y)[:, None], _rgb((0.92, 0.92, 0.88), a), a * grain)
    colour = torch.where((road_x | road_y)[:, None], road, b * grain)
    inside = ((p[:, :2] >= streets.origin) & (p[:, :2] <= streets.end)).all(dim=1)
    park = (
        inside
        & ~(road_x | road_y)
        & (_hash2(scene.lattice, cell[:, 0].to(torch.int64), cell[:, 1].to(torch.int64)) < _PARK_FRACTION)
    )
    if bool(park.any()):
        m = _contrast(_fbm(scene, p[park] * 0.3, octaves=2), 1.8)
        colour[park] = _mix(_rgb((0.25, 0.45, 0.18), a[park]), _rgb((0.42, 0.55, 0.22), a[park]), m) * grain[park]
    out = ~inside
    if bool(out.any()):
        m = _contrast(_fbm(scene, p[out] * 0.05, octaves=2), 2.5)
        colour[out] = _mix(_rgb((0.35, 0.42, 0.2), a[out]), _rgb((0.55, 0.45, 0.3), a[out]), m) * grain[out]
    return colour


_TEXTURES = (
    (_CHECKER, _tex_checker),
    (_STRIPES, _tex_stripes),
    (_NOISE, _tex_noise),
    (_FACADE, _tex_facade),
    (_STREETS, _tex_streets),
)


def _albedo(scene: Scene, p: torch.Tensor, n: torch.Tensor, material: torch.Tensor) -> torch.Tensor:
    """Surface colours [N, 3] at points ``p`` [N, 3] with normals ``n`` [N, 3] and material indices [N]."""
    mats = scene.materials
    kind = mats.kind[material]
    out = torch.zeros_like(p)
    for k, texture in _TEXTURES:
        sel = kind == k
        if bool(sel.any()):
            m = material[sel]
            out[sel] = texture(
                scene, p[sel], n[sel], mats.a[m].to(p.dtype), mats.b[m].to(p.dtype), mats.scale[m].to(p.dtype)
            )
    return out


def _shade(
    scene: Scene, origin: torch.Tensor, direction: torch.Tensor, hits: _Hits
) -> tuple[torch.Tensor, torch.Tensor]:
    """Colours [N, 3] in [0, 1] of rays [N, 3] from ``origin`` [3] given their ``hits``, and the hit points [N, 3]
    (NaN for misses). Lambertian: albedo * (ambient + diffuse * max(n . light, 0)); misses see the sky."""
    dtype = direction.dtype
    n_rays = direction.shape[0]
    horizon, zenith = (torch.tensor(c, dtype=dtype) for c in scene.sky)
    elevation = torch.clamp(direction[:, 2], 0.0, 1.0)
    colour = horizon + (zenith - horizon) * elevation[:, None]
    points = torch.full((n_rays, 3), math.nan, dtype=dtype)
    hit = hits.kind != _MISS
    if not bool(hit.any()):
        return colour, points
    kind, index, d = hits.kind[hit], hits.index[hit], direction[hit]
    p = origin + hits.t[hit][:, None] * d
    normal = torch.zeros_like(p)
    material = torch.full_like(kind, scene.ground_material)
    normal[:, 2] = 1.0
    sphere = kind == _SPHERE
    if bool(sphere.any()):
        i = index[sphere]
        normal[sphere] = (p[sphere] - scene.sphere_center[i].to(dtype)) / scene.sphere_radius[i].to(dtype)[:, None]
        material[sphere] = scene.sphere_material[i]
    box = kind == _BOX
    if bool(box.any()):
        i = index[box]
        normal[box] = _box_normals(d[box], origin, scene.box_lo[i].to(dtype), scene.box_hi[i].to(dtype))
        material[box] = scene.box_material[i]
    light = torch.tensor(_LIGHT, dtype=dtype)
    light = light / torch.sqrt(_dot(light, light))
    lambert = _AMBIENT + _DIFFUSE * torch.clamp(_dot(normal, light), min=0.0)
    colour[hit] = torch.clamp(_albedo(scene, p, normal, material) * lambert[:, None], 0.0, 1.0)
    points[hit] = p
    return colour, points


# ---------------------------------------------------------------------------------------------------------
# Rendering.

_TILE = 8  # pixels per side of the screen tiles used to cull boxes


def _tile_grid(cam: Camera) -> tuple[int, int]:
    """Number of tile rows and columns covering the image."""
    return -(-cam.height // _TILE), -(-cam.width // _TILE)


def _tile_candidates(scene: Scene, cam: Camera) -> torch.Tensor:
    """Boxes that may be seen through each screen tile: [T, K] int64 box indices, -1 padded (T row-major tiles).

    A box is culled from a tile when all 8 of its corners lie outside one of the four planes through the
    camera centre bounding the tile (widened by half a pixel); those planes also exclude everything behind.
    """
    rows, cols = _tile_grid(cam)
    n_boxes = scene.box_lo.shape[0]
    if n_boxes == 0:
        return torch.zeros((rows * cols, 0), dtype=torch.int64)
    lo, hi = scene.box_lo, scene.box_hi
    bits = torch.tensor([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=torch.bool)
    corners = torch.where(bits, hi[:, None, :], lo[:, None, :])  # [B, 8, 3]
    x, y, z = cam.to_camera(corners).unbind(-1)  # [B, 8]
    u0 = torch.arange(cols, dtype=torch.float64) * _TILE - 0.5
    v0 = torch.arange(rows, dtype=torch.float64) * _TILE - 0.5
    u1, v1 = u0 + _TILE + 1.0, v0 + _TILE + 1.0

    def outside(a: float, c: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        # [n, B]: all corners have a * coord + c * z < 0
        return (a * coord[None] + c[:, None, None] * z[None] < 0).all(dim=-1)

    out_cols = outside(cam.fx, cam.cx - u0, x) | outside(-cam.fx, u1 - cam.cx, x)  # [cols, B]
    out_rows = outside(cam.fy, cam.cy - v0, y) | outside(-cam.fy, v1 - cam.cy, y)  # [rows, B]
    keep = ~(out_rows[:, None, :] | out_cols[None, :, :]).reshape(rows * cols, n_boxes)
    k = int(keep.sum(dim=1).max())
    order = torch.where(keep, torch.arange(n_boxes), n_boxes).sort(dim=1, stable=True).values[:, :k]
    return torch.where(order == n_boxes, -1, order)


def _trace(scene: Scene, cam: Camera, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray trace ``samples`` x ``samples`` sub-pixel rays per pixel (regular grid inside the pixel).

    Returns colours and hit points (NaN: miss), both [Hp, Wp, samples**2, 3] over the image padded to whole
    tiles; sample ``q`` of pixel (i, j) goes through ``(j + (q % s + 0.5) / s, i + (q // s + 0.5) / s)``.
    """
    rows, cols = _tile_grid(cam)
    hp, wp, s2 = rows * _TILE, cols * _TILE, samples * samples
    offsets = (torch.arange(samples, dtype=_DTYPE) + 0.5) / samples
    q = torch.arange(s2)
    u = torch.arange(wp, dtype=_DTYPE)[None, :, None] + offsets[q % samples][None, None, :]
    v = torch.arange(hp, dtype=_DTYPE)[:, None, None] + offsets[q // samples][None, None, :]
    a, b = ((u - cam.cx) / cam.fx).expand(hp, wp, s2), ((v - cam.cy) / cam.fy).expand(hp, wp, s2)
    R = cam.R.tolist()
    d = torch.stack([R[0][k] * a + R[1][k] * b + R[2][k] for k in range(3)], dim=-1)
    d = d / torch.sqrt(_dot(d, d))[..., None]

    def tiled(x: torch.Tensor) -> torch.Tensor:  # [Hp, Wp, S, 3] -> [T, tile * tile * S, 3]
        return x.reshape(rows, _TILE, cols, _TILE, s2, 3).permute(0, 2, 1, 3, 4, 5).reshape(rows * cols, -1, 3)

    def untiled(x: torch.Tensor) -> torch.Tensor:  # inverse of tiled
        return x.reshape(rows, cols, _TILE, _TILE, s2, 3).permute(0, 2, 1, 3, 4, 5).reshape(hp, wp, s2, 3)

    origin = cam.center.to(_DTYPE)
    d_tiled = tiled(d)
    hits = _cast_groups(scene, origin, d_tiled, _tile_candidates(scene, cam))
    colour, points = _shade(scene, origin, d_tiled.reshape(-1, 3), hits)
    return untiled(colour), untiled(points)


def _to_uint8(colour: torch.Tensor) -> np.ndarray:
    """Colours in [0, 1] to uint8 (round half up)."""
    return torch.floor(torch.clamp(colour, 0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()


def _render(scene: Scene, cam: Camera, samples: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The image (uint8 [H, W, 3], the mean of each pixel's samples) and the per-sample colours and hit points
    ([H, W, samples**2, 3], see :func:`_trace`)."""
    colour, points = _trace(scene, cam, samples)
    colour, points = colour[: cam.height, : cam.width], points[: cam.height, : cam.width]
    total = colour[:, :, 0]
    for q in range(1, samples * samples):
        total = total + colour[:, :, q]
    return _to_uint8(total / (samples * samples)), colour, points


def render(scene: Scene, cam: Camera, samples: int = 2) -> np.ndarray:
    """The camera's image, uint8 [H, W, 3], averaging ``samples`` x ``samples`` rays per pixel."""
    return _render(scene, cam, samples)[0]


# ---------------------------------------------------------------------------------------------------------
# Scenes.


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Independent generator per (seed, stream): 0 scene, 1 cameras."""
    return np.random.default_rng([seed, stream])


def _colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> tuple[float, float, float]:
    """A random colour with saturation and value drawn from the given ranges."""
    return colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(*sat), rng.uniform(*val))


class _SceneBuilder:
    """Collects primitives and materials, then freezes them into a :class:`Scene`."""

    def __init__(self, rng: np.random.Generator):
        self.lattice = torch.from_numpy(rng.random(1024))
        self.materials: list[tuple[int, tuple[float, ...], tuple[float, ...], float]] = []
        self.spheres: list[tuple[float, float, float, float, int]] = []
        self.boxes: list[tuple[tuple[float, ...], tuple[float, ...], int]] = []

    def material(self, kind: int, a: tuple[float, ...], b: tuple[float, ...], scale: float) -> int:
        self.materials.append((kind, tuple(a), tuple(b), float(scale)))
        return len(self.materials) - 1

    def sphere(self, center: tuple[float, float, float], radius: float, material: int) -> None:
        self.spheres.append((*(float(c) for c in center), float(radius), material))

    def box(self, lo: tuple[float, ...], hi: tuple[float, ...], material: int) -> None:
        self.boxes.append((tuple(float(c) for c in lo), tuple(float(c) for c in hi), material))

    def build(
        self,
        ground_half: float,
        ground_round: bool,
        ground_material: int,
        sky: tuple,
        extent: float,
        streets: Streets | None = None,
    ) -> Scene:
        f64 = torch.float64
        spheres = torch.tensor([s[:4] for s in self.spheres], dtype=f64).reshape(-1, 4)
        boxes = torch.tensor([[*lo, *hi] for lo, hi, _ in self.boxes], dtype=f64).reshape(-1, 6)
        mats = Materials(
            kind=torch.tensor([m[0] for m in self.materials], dtype=torch.int64),
            a=torch.tensor([m[1] for m in self.materials], dtype=f64),
            b=torch.tensor([m[2] for m in self.materials], dtype=f64),
            scale=torch.tensor([m[3] for m in self.materials], dtype=f64),
        )
        return Scene(
            sphere_center=spheres[:, :3],
            sphere_radius=spheres[:, 3],
            sphere_material=torch.tensor([s[4] for s in self.spheres], dtype=torch.int64),
            box_lo=boxes[:, :3],
            box_hi=boxes[:, 3:],
            box_material=torch.tensor([b[2] for b in self.boxes], dtype=torch.int64),
            ground_half=ground_half,
            ground_round=ground_round,
            ground_material=ground_material,
            materials=mats,
            lattice=self.lattice,
            sky=sky,
            extent=extent,
            streets=streets,
        )


def _object_scene(seed: int) -> Scene:
    """A few textured spheres and boxes on a checkered disc of radius 1.6 (world units), black background."""
    rng = _rng(seed, 0)
    sb = _SceneBuilder(rng)
    light, dark = (0.45, 0.85), (0.08, 0.3)
    ground = sb.material(_CHECKER, _colour(rng, (0.1, 0.4), light), _colour(rng, (0.3, 0.7), dark), 0.22)
    r_main = rng.uniform(0.42, 0.55)
    center = rng.uniform(-0.15, 0.15, size=2)
    sb.sphere(
        (center[0], center[1], r_main),
        r_main,
        sb.material(_NOISE, _colour(rng, (0.5, 0.9), dark), _colour(rng, (0.4, 0.8), light), 0.12),
    )
    angles = rng.uniform(0.0, 2 * math.pi) + np.arange(4) * (math.pi / 2) + rng.uniform(-0.3, 0.3, size=4)
    ring = rng.uniform(0.95, 1.15, size=4)
    xy = np.stack([ring * np.cos(angles), ring * np.sin(angles)], axis=1)
    # A pedestal with a striped ball on top.
    half = rng.uniform(0.22, 0.3, size=2)
    top = rng.uniform(0.3, 0.5)
    sb.box(
        (xy[0, 0] - half[0], xy[0, 1] - half[1], 0.0),
        (xy[0, 0] + half[0], xy[0, 1] + half[1], top),
        sb.material(_CHECKER, _colour(rng, (0.5, 0.9), light), _colour(rng, (0.5, 0.9), dark), 0.1),
    )
    r_top = rng.uniform(0.16, 0.21)
    sb.sphere(
        (xy[0, 0], xy[0, 1], top + r_top),
        r_top,
        sb.material(_STRIPES, _colour(rng, (0.6, 1.0), light), _colour(rng, (0.6, 1.0), dark), 0.08),
    )
    # A tall striped pillar.
    side = rng.uniform(0.1, 0.15)
    sb.box(
        (xy[1, 0] - side, xy[1, 1] - side, 0.0),
        (xy[1, 0] + side, xy[1, 1] + side, rng.uniform(0.8, 1.1)),
        sb.material(_STRIPES, _colour(rng, (0.3, 0.8), light), _colour(rng, (0.3, 0.8), dark), 0.09),
    )
    # Two balls on the ground.
    for k in (2, 3):
        r = rng.uniform(0.16, 0.26)
        kind = _CHECKER if k == 2 else _NOISE
        sb.sphere(
            (xy[k, 0], xy[k, 1], r),
            r,
            sb.material(kind, _colour(rng, (0.5, 1.0), light), _colour(rng, (0.5, 1.0), dark), 0.07),
        )
    black = (0.0, 0.0, 0.0)
    return sb.build(ground_half=1.6, ground_round=True, ground_material=ground, sky=(black, black), extent=3.2)


def _city_scene(seed: int) -> Scene:
    """A 10 x 10 grid of city blocks (pitch 30, roads 8 wide) with 1, 2 or 4 box buildings per block (heights
    up to ~70, taller near the centre), parks, on a 400 x 400 ground square; sky gradient beyond."""
    rng = _rng(seed, 0)
    sb = _SceneBuilder(rng)
    n, pitch, road = 10, 30.0, 8.0
    streets = Streets(origin=-(n * pitch + road) / 2, pitch=pitch, road=road, n=n)
    ground = sb.material(_STREETS, (0.22, 0.22, 0.24), (0.62, 0.6, 0.56), 1.0)
    park = _hash2(sb.lattice, torch.arange(n)[:, None], torch.arange(n)[None, :]) < _PARK_FRACTION
    setback, gap = 1.5, 2.0
    for i in range(n):
        for j in range(n):
            if park[i, j]:
                continue
            x0 = streets.origin + i * pitch + road + setback
            y0 = streets.origin + j * pitch + road + setback
            size = pitch - road - 2 * setback
            for lo, hi in _split_block(rng, x0, y0, size, gap):
                centre = math.hypot((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2)
                height = 8.0 + 50.0 * math.exp(-((centre / 110.0) ** 2)) * rng.uniform(0.3, 1.0) + rng.uniform(0, 12)
                wall = _colour(rng, (0.05, 0.35), (0.5, 0.9))
                glass = _colour(rng, (0.2, 0.5), (0.15, 0.35))
                sb.box(
                    (lo[0], lo[1], 0.0),
                    (hi[0], hi[1], height),
                    sb.material(_FACADE, wall, glass, rng.uniform(3.0, 4.5)),
                )
    sky = ((0.78, 0.84, 0.9), (0.35, 0.55, 0.85))
    return sb.build(
        ground_half=200.0, ground_round=False, ground_material=ground, sky=sky, extent=400.0, streets=streets
    )


def _split_block(
    rng: np.random.Generator, x0: float, y0: float, size: float, gap: float
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Footprints ``(lo, hi)`` of 1, 2 (split along x or y) or 4 buildings on the square block at (x0, y0)."""
    r = rng.random()
    if r < 0.4:
        return [((x0, y0), (x0 + size, y0 + size))]
    if r < 0.75:
        cut = size * rng.uniform(0.35, 0.65)
        if rng.random() < 0.5:
            return [((x0, y0), (x0 + cut - gap / 2, y0 + size)), ((x0 + cut + gap / 2, y0), (x0 + size, y0 + size))]
        return [((x0, y0), (x0 + size, y0 + cut - gap / 2)), ((x0, y0 + cut + gap / 2), (x0 + size, y0 + size))]
    cx, cy = size * rng.uniform(0.4, 0.6), size * rng.uniform(0.4, 0.6)
    xs = ((x0, x0 + cx - gap / 2), (x0 + cx + gap / 2, x0 + size))
    ys = ((y0, y0 + cy - gap / 2), (y0 + cy + gap / 2, y0 + size))
    return [((xa, ya), (xb, yb)) for xa, xb in xs for ya, yb in ys]


# ---------------------------------------------------------------------------------------------------------
# Cameras.


def _camera(
    uid: int,
    eye: np.ndarray,
    target: np.ndarray,
    up: tuple[float, float, float],
    width: int,
    height: int,
    hfov_deg: float,
) -> Camera:
    """A pinhole camera at ``eye`` looking at ``target`` (``up``: world up), principal point at the centre."""
    R, _ = look_at(
        torch.tensor(eye, dtype=torch.float64),
        torch.tensor(target, dtype=torch.float64),
        torch.tensor(up, dtype=torch.float64),
    )
    t = -(R @ torch.tensor(eye, dtype=torch.float64))
    f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return Camera(
        uid=uid, name=f"{uid:04d}.png", width=width, height=height, fx=f, fy=f, cx=width / 2, cy=height / 2, R=R, t=t
    )


def _object_cameras(seed: int) -> list[Camera]:
    """48 orbit views (160 x 120, 55 deg horizontal FOV): 16 azimuths at each of 3 elevations, ~3.7 units from
    a point just above the disc centre, azimuths and distances jittered by the seed."""
    rng = _rng(seed, 1)
    target = np.array([0.0, 0.0, 0.35])
    cams = []
    for elevation in (18.0, 38.0, 62.0):
        start = rng.uniform(0.0, 360.0)
        for k in range(16):
            az = math.radians(start + k * 22.5 + rng.uniform(-3.0, 3.0))
            el = math.radians(elevation + rng.uniform(-2.0, 2.0))
            dist = 3.7 * rng.uniform(0.95, 1.05)
            eye = target + dist * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
            cams.append(_camera(len(cams), eye, target, (0.0, 0.0, 1.0), 160, 120, 55.0))
    return cams


def _city_cameras(seed: int) -> list[Camera]:
    """336 aerial views (160 x 120, 60 deg horizontal FOV): a 12 x 12 lawnmower grid of near-nadir views at
    ~120 units (image up along the flight line, alternating per line), plus two rings of 96 oblique views
    from the perimeter looking inward and down (~35 and ~33 deg; the far ground edge and the sky show at the
    top of these)."""
    rng = _rng(seed, 1)
    cams = []
    spacing, n = 21.0, 12
    for row in range(n):
        y = (row - (n - 1) / 2) * spacing
        cols = range(n) if row % 2 == 0 else range(n - 1, -1, -1)
        for col in cols:
            x = (col - (n - 1) / 2) * spacing
            eye = np.array([x, y, 0.0]) + np.array([*rng.uniform(-2.0, 2.0, size=2), rng.uniform(115.0, 125.0)])
            tilt = rng.uniform(-6.0, 6.0, size=2)  # ground offset of the look-at point: a few degrees off nadir
            target = np.array([eye[0] + tilt[0], eye[1] + tilt[1], 0.0])
            up = (1.0, 0.0, 0.0) if row % 2 == 0 else (-1.0, 0.0, 0.0)
            cams.append(_camera(len(cams), eye, target, up, 160, 120, 60.0))
    rings = ((225.0, 115.0, 60.0), (185.0, 95.0, 40.0))  # (radius, altitude, target radius on the same side)
    for ring, (radius, altitude, aim) in enumerate(rings):
        start = rng.uniform(0.0, 360.0)
        for k in range(96):
            az = math.radians(start + (k + 0.5 * ring) * 3.75)
            direction = np.array([math.cos(az), math.sin(az), 0.0])
            eye = radius * direction + np.array([0.0, 0.0, altitude + rng.uniform(-5.0, 5.0)])
            target = aim * direction + np.array([*rng.uniform(-10.0, 10.0, size=2), 0.0])
            cams.append(_camera(len(cams), eye, target, (0.0, 0.0, 1.0), 160, 120, 60.0))
    return cams


def synthetic_scene(preset: str, seed: int = 0) -> Scene:
    """The analytic scene of a preset."""
    return {"object": _object_scene, "city": _city_scene}[_check_preset(preset)](seed)


def synthetic_cameras(preset: str, seed: int = 0) -> list[Camera]:
    """The cameras of a preset, in image order (``uid`` = image index, ``name`` = ``NNNN.png``)."""
    return {"object": _object_cameras, "city": _city_cameras}[_check_preset(preset)](seed)


def _check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise InputError(None, f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return preset


# ---------------------------------------------------------------------------------------------------------
# Sparse points and their tracks.


def _surface_samples(
    colour: torch.Tensor, points: torch.Tensor, stride: int, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hit points (float64 [P, 3]) and their shaded colours (uint8 [P, 3]) of the first sample of every
    ``stride``-th pixel (rows and columns from ``offset``); ``colour``, ``points`` as from :func:`_render`."""
    p = points[offset::stride, offset::stride, 0].reshape(-1, 3)
    c = colour[offset::stride, offset::stride, 0].reshape(-1, 3)
    hit = ~torch.isnan(p[:, 0])
    return p[hit].to(torch.float64).numpy(), _to_uint8(c[hit])


def _merge_voxels(xyz: np.ndarray, rgb: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first point (in input order) of each ``voxel``-sized grid cell."""
    keys = np.floor(xyz / voxel).astype(np.int64)
    first = np.sort(np.unique(keys, axis=0, return_index=True)[1])
    return xyz[first], rgb[first]


def _observe(scene: Scene, cam: Camera, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points [P, 3] that ``cam`` sees: their indices (ascending) and pixel positions (float64 [V, 2]).

    A point is seen when it projects inside the image and a ray from the camera centre towards it hits
    nothing closer than 0.1% short of it.
    """
    x = torch.from_numpy(xyz)
    u, v, inside = cam.pixels(x)
    idx = torch.nonzero(inside).squeeze(1)
    if idx.numel() == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2))
    center = cam.center
    d = x[idx] - center
    dist = torch.sqrt(_dot(d, d))
    tile = torch.floor(v[idx] / _TILE).to(torch.int64) * _tile_grid(cam)[1] + torch.floor(u[idx] / _TILE).to(
        torch.int64
    )
    hits = _cast_groups(
        scene, center.to(_DTYPE), (d / dist[:, None]).to(_DTYPE)[:, None, :], _tile_candidates(scene, cam)[tile]
    )
    seen = hits.t.to(torch.float64) >= dist * (1.0 - 1e-3)
    return idx[seen].numpy(), torch.stack([u[idx], v[idx]], dim=1)[seen].numpy()


def _colmap_cameras(cams: list[Camera]) -> tuple[dict[int, ColmapCamera], list[int]]:
    """PINHOLE cameras, one per distinct intrinsics (ids from 1 in order of first use), and each view's id."""
    ids: dict[tuple, int] = {}
    for cam in cams:
        ids.setdefault((cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy), len(ids) + 1)
    cameras = {i: ColmapCamera(i, "PINHOLE", k[0], k[1], np.array(k[2:], dtype=np.float64)) for k, i in ids.items()}
    return cameras, [ids[(c.width, c.height, c.fx, c.fy, c.cx, c.cy)] for c in cams]


def _group_rank(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted non-negative int ``keys`` [N]: each row's rank within its run of equal keys, and the run length."""
    counts = np.bincount(keys)
    starts = np.cumsum(counts) - counts
    return np.arange(keys.shape[0]) - starts[keys], counts[keys]


def _build_model(
    cams: list[Camera], xyz: np.ndarray, rgb: np.ndarray, seen: list[tuple[np.ndarray, np.ndarray]], max_track: int
) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage], ColmapPoints]:
    """COLMAP records from the views each point is seen in (``seen[c]`` = :func:`_observe` of camera c).

    Tracks longer than ``max_track`` keep ``max_track`` evenly spread views; points seen fewer than twice
    are dropped. Image ids are camera index + 1, point ids 1..P in input order.
    """
    point = np.concatenate([s[0] for s in seen]).astype(np.int64)
    view = np.concatenate([np.full(s[0].shape[0], c, dtype=np.int64) for c, s in enumerate(seen)])
    uv = np.concatenate([s[1] for s in seen]).reshape(-1, 2)
    order = np.lexsort((view, point))
    point, view, uv = point[order], view[order], uv[order]
    rank, count = _group_rank(point)
    keep = (rank * max_track) // count > ((rank - 1) * max_track) // count  # all of short tracks, spread otherwise
    point, view, uv = point[keep], view[keep], uv[keep]
    n_seen = np.bincount(point, minlength=xyz.shape[0])
    good = n_seen >= 2
    keep = good[point]
    point, view, uv = point[keep], view[keep], uv[keep]
    new_id = np.cumsum(good)  # 1-based ids of the kept points
    # Keypoint index of each observation inside its image: rank among the image's observations by point.
    by_view = np.lexsort((point, view))
    k = np.empty_like(point)
    k[by_view] = _group_rank(view[by_view])[0]
    cameras, camera_ids = _colmap_cameras(cams)
    per_view = np.bincount(view, minlength=len(cams))
    ends = np.cumsum(per_view)
    images = {}
    for c, cam in enumerate(cams):
        rows = by_view[ends[c] - per_view[c] : ends[c]]
        qvec = rotmat_to_qvec(cam.R.numpy())
        images[c + 1] = ColmapImage(
            c + 1,
            qvec,
            cam.t.numpy().copy(),
            camera_ids[c],
            cam.name,
            xys=uv[rows],
            point3D_ids=new_id[point[rows]].astype(np.int64),
        )
    counts = n_seen[good]
    points = ColmapPoints(
        ids=np.arange(1, counts.shape[0] + 1, dtype=np.int64),
        xyz=xyz[good],
        rgb=rgb[good],
        error=np.zeros(counts.shape[0]),
        track_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        track_image_ids=view + 1,
        track_point2D_idx=k,
    )
    return cameras, images, points


# ---------------------------------------------------------------------------------------------------------
# Writing.


def _write(out_dir: Path, scene: Scene, cams: list[Camera], spec: _Spec, samples: int = 2) -> SynthSummary:
    """Render ``cams`` and write images and a sparse model under ``out_dir``, built in a temporary sibling
    directory renamed into place at the end (removed on failure)."""
    with staged_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        xyz, rgb = [np.zeros((0, 3))], [np.zeros((0, 3), dtype=np.uint8)]
        for v, cam in enumerate(cams):
            image, colour, points = _render(scene, cam, samples)
            Image.fromarray(image).save(tmp / "images" / cam.name, format="PNG", compress_level=6)
            if v % spec.sample_every == 0:
                p, c = _surface_samples(
                    colour, points, spec.sample_stride, (v // spec.sample_every) % spec.sample_stride
                )
                xyz.append(p)
                rgb.append(c)
        xyz, rgb = _merge_voxels(np.concatenate(xyz), np.concatenate(rgb), spec.voxel)
        seen = [_observe(scene, cam, xyz) for cam in cams]
        cameras, images, points = _build_model(cams, xyz, rgb, seen, spec.max_track)
        write_model(tmp / "sparse" / "0", cameras, images, points, binary=True)
    return SynthSummary(
        n_images=len(cams), n_points=len(points), width=cams[0].width, height=cams[0].height, extent=scene.extent
    )


def write_synthetic(out_dir: str | Path, preset: str = "object", seed: int = 0) -> SynthSummary:
    """Generate the synthetic dataset ``preset`` (one of :data:`PRESETS`) with ``seed`` into ``out_dir``:
    ``images/NNNN.png`` (RGB) and ``sparse/0/{cameras,images,points3D}.bin`` (PINHOLE, world -> camera poses).

    Deterministic: the same preset and seed give byte-identical files. Raises InputError for an unknown
    preset, a negative seed, or an ``out_dir`` that exists and is not empty; writes nothing on failure.
    """
    _check_preset(preset)
    if seed < 0:
        raise InputError(None, f"synthetic seed must be >= 0, got {seed}")
    return _write(Path(out_dir), synthetic_scene(preset, seed), synthetic_cameras(preset, seed), _SPECS[preset])
