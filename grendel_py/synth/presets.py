"""The scenes and cameras of the presets (``object``: a still life on a disc seen from rings of cameras;
``city``: an aerial city of blocks, towers and parks seen from a grid of oblique and nadir views), from the seed.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import torch

from grendel_py.data.cameras import Camera, look_at
from grendel_py.errors import InputError
from grendel_py.synth.scene import CHECKER, FACADE, NOISE, PARK_FRACTION, STREETS, STRIPES, Materials, Scene, Streets
from grendel_py.synth.textures import hash2

PRESETS = ("object", "city")


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
    ground = sb.material(CHECKER, _colour(rng, (0.1, 0.4), light), _colour(rng, (0.3, 0.7), dark), 0.22)
    r_main = rng.uniform(0.42, 0.55)
    center = rng.uniform(-0.15, 0.15, size=2)
    sb.sphere(
        (center[0], center[1], r_main),
        r_main,
        sb.material(NOISE, _colour(rng, (0.5, 0.9), dark), _colour(rng, (0.4, 0.8), light), 0.12),
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
        sb.material(CHECKER, _colour(rng, (0.5, 0.9), light), _colour(rng, (0.5, 0.9), dark), 0.1),
    )
    r_top = rng.uniform(0.16, 0.21)
    sb.sphere(
        (xy[0, 0], xy[0, 1], top + r_top),
        r_top,
        sb.material(STRIPES, _colour(rng, (0.6, 1.0), light), _colour(rng, (0.6, 1.0), dark), 0.08),
    )
    # A tall striped pillar.
    side = rng.uniform(0.1, 0.15)
    sb.box(
        (xy[1, 0] - side, xy[1, 1] - side, 0.0),
        (xy[1, 0] + side, xy[1, 1] + side, rng.uniform(0.8, 1.1)),
        sb.material(STRIPES, _colour(rng, (0.3, 0.8), light), _colour(rng, (0.3, 0.8), dark), 0.09),
    )
    # Two balls on the ground.
    for k in (2, 3):
        r = rng.uniform(0.16, 0.26)
        kind = CHECKER if k == 2 else NOISE
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
    ground = sb.material(STREETS, (0.22, 0.22, 0.24), (0.62, 0.6, 0.56), 1.0)
    park = hash2(sb.lattice, torch.arange(n)[:, None], torch.arange(n)[None, :]) < PARK_FRACTION
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
                    (lo[0], lo[1], 0.0), (hi[0], hi[1], height), sb.material(FACADE, wall, glass, rng.uniform(3.0, 4.5))
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
    return {"object": _object_scene, "city": _city_scene}[check_preset(preset)](seed)


def synthetic_cameras(preset: str, seed: int = 0) -> list[Camera]:
    """The cameras of a preset, in image order (``uid`` = image index, ``name`` = ``NNNN.png``)."""
    return {"object": _object_cameras, "city": _city_cameras}[check_preset(preset)](seed)


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise InputError(None, f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return preset
