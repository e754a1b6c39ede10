"""Procedural, view-independent textures (checkers, stripes, seeded value noise, window grids, street grids) and
the shading: a fixed directional light plus ambient.
"""

from __future__ import annotations

import math

import torch

from grendel_py.synth.intersect import Hits, box_normals, dot
from grendel_py.synth.scene import (
    AMBIENT,
    BOX,
    CHECKER,
    DIFFUSE,
    FACADE,
    LIGHT,
    MISS,
    NOISE,
    PARK_FRACTION,
    SPHERE,
    STREETS,
    STRIPES,
    Scene,
)


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


def hash2(lattice: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
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
    cell = hash2(scene.lattice, torch.floor(col).to(torch.int64), torch.floor(row).to(torch.int64)).to(p.dtype)
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
        & (hash2(scene.lattice, cell[:, 0].to(torch.int64), cell[:, 1].to(torch.int64)) < PARK_FRACTION)
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
    (CHECKER, _tex_checker),
    (STRIPES, _tex_stripes),
    (NOISE, _tex_noise),
    (FACADE, _tex_facade),
    (STREETS, _tex_streets),
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


def shade(scene: Scene, origin: torch.Tensor, direction: torch.Tensor, hits: Hits) -> tuple[torch.Tensor, torch.Tensor]:
    """Colours [N, 3] in [0, 1] of rays [N, 3] from ``origin`` [3] given their ``hits``, and the hit points [N, 3]
    (NaN for misses). Lambertian: albedo * (ambient + diffuse * max(n . light, 0)); misses see the sky."""
    dtype = direction.dtype
    n_rays = direction.shape[0]
    horizon, zenith = (torch.tensor(c, dtype=dtype) for c in scene.sky)
    elevation = torch.clamp(direction[:, 2], 0.0, 1.0)
    colour = horizon + (zenith - horizon) * elevation[:, None]
    points = torch.full((n_rays, 3), math.nan, dtype=dtype)
    hit = hits.kind != MISS
    if not bool(hit.any()):
        return colour, points
    kind, index, d = hits.kind[hit], hits.index[hit], direction[hit]
    p = origin + hits.t[hit][:, None] * d
    normal = torch.zeros_like(p)
    material = torch.full_like(kind, scene.ground_material)
    normal[:, 2] = 1.0
    sphere = kind == SPHERE
    if bool(sphere.any()):
        i = index[sphere]
        normal[sphere] = (p[sphere] - scene.sphere_center[i].to(dtype)) / scene.sphere_radius[i].to(dtype)[:, None]
        material[sphere] = scene.sphere_material[i]
    box = kind == BOX
    if bool(box.any()):
        i = index[box]
        normal[box] = box_normals(d[box], origin, scene.box_lo[i].to(dtype), scene.box_hi[i].to(dtype))
        material[box] = scene.box_material[i]
    light = torch.tensor(LIGHT, dtype=dtype)
    light = light / torch.sqrt(dot(light, light))
    lambert = AMBIENT + DIFFUSE * torch.clamp(dot(normal, light), min=0.0)
    colour[hit] = torch.clamp(_albedo(scene, p, normal, material) * lambert[:, None], 0.0, 1.0)
    points[hit] = p
    return colour, points
