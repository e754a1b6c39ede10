"""``grendel simulate``: W virtual ranks in one process, no communication, for comparing tile assignments.

A scene is a model (Gaussians) and cameras. Each camera is projected once with the renderer's own projection
and binning (:mod:`grendel_py.render`), which gives every (splat, tile) intersection. For an ownership of the
Gaussians (array-order as in Grendel, or kd spatial shards), a batch sampler and a tile-assignment strategy
(:class:`partition.balancer.TileBalancer`, fed the same tables the training loop all-reduces), every
iteration reports:

- ``bytes_per_iter``: what the forward splat exchange would move, summed over ranks: 56 bytes per (splat,
  rank) pair where the rank renders a tile the splat reaches and does not own the splat (exactly what
  :func:`grendel_py.parallel.exchange.exchange_splats` sends; the backward pass sends as many gradients back);
- ``balance``: largest over mean intersections rasterized per rank;
- ``model_time``: modelled iteration seconds, the max over ranks of ``intersection_seconds x (intersections
  + 1 per tile) + max(bytes sent, bytes received) / link bandwidth``.

Scenes: ``city`` (the synthetic city's surfaces covered by flat Gaussians, seen by its 336 aerial cameras at a
configurable resolution) and ``fox`` (../shared/data/fox, or any transforms.json / COLMAP scene, with a
trained model.ply when given, else the random initial model training starts from).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from grendel_py.config import ModelConfig
from grendel_py.data.cameras import Camera
from grendel_py.data.dataset import load_scene
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.initialize import initial_gaussians
from grendel_py.model.ply import read_ply
from grendel_py.pictures import save_picture, tile_heat, tile_picture
from grendel_py.render import project
from grendel_py.render.intersect import tile_pairs
from grendel_py.synth.presets import synthetic_cameras, synthetic_scene
from grendel_py.train.sampler import CameraSampler, camera_affinity, normalize_affinity
from partition.assign import Assignment, TileTable, majority
from partition.balancer import SPLAT_BYTES, TileBalancer
from partition.spatial import assign_owners
from partition.tiles import TileGrid

OWNERSHIPS = ("array-order", "kd")
SAMPLERS = ("random", "owner-aware")


@dataclass
class SimScene:
    """A model and the cameras that look at it; per-camera intersections are computed once, on demand."""

    name: str
    model: Gaussians
    cameras: list[Camera]
    cull: bool = True  # False: every tile of the splats' boxes (the binning before exact tile culling)
    _pairs: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def gaussians(self) -> int:
        return len(self.model)

    def owners(self, world: int, ownership: str) -> np.ndarray:
        """Every Gaussian's rank under ``ownership`` (:func:`partition.spatial.assign_owners`)."""
        return assign_owners(self.model.means, world, ownership).numpy()

    def affinity(self, owner: np.ndarray, world: int) -> np.ndarray:
        """Each camera's share of the Gaussians it sees per rank, [cameras, W] (the owner-aware sampler's)."""
        counts = camera_affinity(self.model.means, torch.from_numpy(owner), world, self.cameras)
        return normalize_affinity(counts)

    def intersections(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Camera ``k``'s (Gaussian index, tile id) pairs, int64 each, grouped by Gaussian (ascending)."""
        if k not in self._pairs:
            cam = self.cameras[k]
            with torch.no_grad():
                splats = project(self.model, cam, 0)
                grid = TileGrid(cam.width, cam.height)
                rows, tiles = tile_pairs(splats, [len(splats)], [grid], self.cull)
                kept = tiles < grid.n_tiles
            self._pairs[k] = (rows[kept].numpy(), tiles[kept].numpy())
        return self._pairs[k]


def city_scene(n_gaussians: int = 300_000, scale: int = 6, seed: int = 0) -> SimScene:
    """The synthetic city (:func:`grendel_py.synth.presets.synthetic_scene`) as a trained model would roughly
    look: ``n_gaussians`` flat Gaussians spread over the ground square and the buildings' roofs and walls in
    proportion to area (tangent sigma half the sample spacing, normal sigma a twentieth, opacity 0.9), seen by
    the preset's 336 cameras with images ``scale`` times larger (160 x 120 -> 960 x 720 at 6)."""
    scene = synthetic_scene("city", seed)
    gen = np.random.default_rng([seed, 77])
    lo, hi = scene.box_lo.double().numpy(), scene.box_hi.double().numpy()
    g = scene.ground_half
    # Faces: (lo, hi) boxes with one flat axis; the ground, then each building's roof and four walls.
    faces_lo = [np.array([-g, -g, 0.0])]
    faces_hi = [np.array([g, g, 0.0])]
    for a, b in zip(lo, hi):
        faces_lo += [np.array([a[0], a[1], b[2]]), a, np.array([b[0], a[1], a[2]]), a, np.array([a[0], b[1], a[2]])]
        faces_hi += [b, np.array([a[0], b[1], b[2]]), b, np.array([b[0], a[1], b[2]]), b]
    flo, fhi = np.stack(faces_lo), np.stack(faces_hi)
    size = fhi - flo
    flat = np.argmin(size, axis=1)
    area = np.prod(np.where(np.eye(3, dtype=bool)[flat], 1.0, size), axis=1)
    face = gen.choice(len(area), size=n_gaussians, p=area / area.sum())
    means = flo[face] + gen.random((n_gaussians, 3)) * size[face]
    spacing = math.sqrt(area.sum() / n_gaussians)
    scales = np.full((n_gaussians, 3), spacing / 2)
    scales[np.arange(n_gaussians), flat[face]] = spacing / 20
    model = Gaussians.from_points(means.astype(np.float32), None, 0, 0.9)
    model.log_scales = torch.from_numpy(np.log(scales).astype(np.float32))
    cams = [c.scaled(c.width * scale, c.height * scale) for c in synthetic_cameras("city", seed)]
    return SimScene("city", model, cams)


def captured_scene(path: Path, model_path: Path | None, downscale: float, seed: int = 0) -> SimScene:
    """A captured scene's training cameras (at ``downscale``) and a trained model (``model_path``), or the
    random model training would start from (100k Gaussians in a cube around the cameras) when there is none."""
    scene = load_scene(path, downscale=downscale)
    if model_path is not None:
        model = read_ply(model_path)
    else:
        model = initial_gaussians(
            ModelConfig(sh_degree=0, init="random", random_points=100_000),
            scene.points,
            scene.cameras,
            scene.extent,
            seed,
        )
    return SimScene(Path(path).name, model, scene.train_cameras)


@dataclass
class Row:
    """One configuration, averaged over its iterations (see the module docstring)."""

    scene: str
    ownership: str
    sampler: str
    assignment: str
    tolerance: float | None
    world_size: int
    batch_size: int
    iterations: int
    bytes_per_iter: float
    balance: float
    model_time: float
    remote_fraction: float


def batch_table(scene: SimScene, batch: list[int], owner: np.ndarray, world_size: int) -> TileTable:
    """The all-reduced tile table the training loop would see for this batch."""
    grids, parts = [], []
    for k in batch:
        cam = scene.cameras[k]
        grid = TileGrid(cam.width, cam.height)
        rows, tiles = scene.intersections(k)
        counts = np.bincount(owner[rows] * grid.n_tiles + tiles, minlength=world_size * grid.n_tiles)
        grids.append(grid)
        parts.append(majority(counts.reshape(world_size, grid.n_tiles)))  # camera by camera: [W, tiles] stays small
    return TileTable(tuple(grids), *(np.concatenate(column) for column in zip(*parts)))


def routes(rows: np.ndarray, ranks: np.ndarray, owner: np.ndarray, world: int) -> tuple[np.ndarray, np.ndarray]:
    """Each (Gaussian, rank that renders a tile of it) once, of a camera's intersections ``rows`` rendered by
    ``ranks``: the rank it goes to and the rank that owns it."""
    need = np.unique(rows * world + ranks)
    return need % world, owner[need // world]


def exchange_bytes(
    scene: SimScene, batch: list[int], owner: np.ndarray, plan: Assignment
) -> tuple[np.ndarray, np.ndarray]:
    """Bytes each rank would send and receive in the forward splat exchange, float64 [W] each."""
    w = plan.world_size
    sent, received = np.zeros(w), np.zeros(w)
    offset = 0
    for slot, k in enumerate(batch):
        rows, tiles = scene.intersections(k)
        to, own = routes(rows, plan.rank[offset + tiles], owner, w)
        offset += plan.grids[slot].n_tiles
        away = to != own  # a splat is not sent to its owner
        sent += np.bincount(own[away], minlength=w)
        received += np.bincount(to[away], minlength=w)
    return sent * SPLAT_BYTES, received * SPLAT_BYTES


def run_config(
    scene: SimScene,
    ownership: str,
    sampler_kind: str,
    assignment: str,
    tolerance: float | None,
    world_size: int,
    batch_size: int,
    iterations: int,
    intersection_seconds: float,
    link_bytes_per_s: float,
    seed: int = 0,
    pictures: Path | None = None,
) -> Row:
    """Simulate ``iterations`` batches of one configuration; with ``pictures``, save there the tile picture
    (:func:`grendel_py.pictures.tile_picture` over the view's intersections) of the first camera of the first
    batch."""
    owner = scene.owners(world_size, ownership)
    sampler = CameraSampler(len(scene.cameras), batch_size, seed)
    if sampler_kind == "owner-aware":
        sampler.set_affinity(scene.affinity(owner, world_size))
    # Bytes per remote intersection calibrate as in training; speeds stay equal (no timings are observed).
    balancer = TileBalancer(assignment, world_size, tolerance, link_bytes_per_s, seconds_per_work=intersection_seconds)
    total_bytes = balance = model_time = remote = inter = 0.0
    for i in range(iterations):
        batch = sampler.next_batch()
        table = batch_table(scene, batch, owner, world_size)
        plan = balancer.plan(table)
        if pictures is not None and i == 0:
            _save_tile_picture(
                pictures,
                scene,
                batch[0],
                table,
                plan,
                _config_name(ownership, sampler_kind, assignment, tolerance, world_size, batch_size),
            )
        sent, received = exchange_bytes(scene, batch, owner, plan)
        balancer.observe(plan, table, float(sent.sum()), None)
        compute = plan.work(balancer.work(table)) * intersection_seconds
        model_time += float((compute + np.maximum(sent, received) / link_bytes_per_s).max())
        total_bytes += float(sent.sum())
        balance += plan.balance(table.intersections)
        remote += float(plan.remote(table).sum())
        inter += float(table.intersections.sum())
    chosen = tolerance if assignment == "locality" else None
    return Row(
        scene.name,
        ownership,
        sampler_kind,
        assignment,
        chosen,
        world_size,
        batch_size,
        iterations,
        total_bytes / iterations,
        balance / iterations,
        model_time / iterations,
        remote / max(inter, 1.0),
    )


def _config_name(
    ownership: str, sampler: str, assignment: str, tolerance: float | None, world_size: int, batch_size: int
) -> str:
    tol = "" if assignment != "locality" else f"-tol-{'auto' if tolerance is None else f'{tolerance:g}'}"
    return f"w{world_size}_b{batch_size}_{ownership}_{sampler}_{assignment}{tol}"


def _save_tile_picture(
    folder: Path, scene: SimScene, camera: int, table: TileTable, plan: Assignment, name: str
) -> None:
    """The tile picture of the batch's first camera (``camera``) under ``plan``, as ``{scene}_{name}.png``."""
    grid = plan.grids[0]
    n = grid.n_tiles
    ranks, per_tile = plan.rank[:n], table.intersections[:n]
    work = np.bincount(ranks, weights=per_tile, minlength=plan.world_size)
    title = f"{scene.name} camera {camera}, {name}"
    save_picture(
        tile_picture(tile_heat(grid, per_tile), grid, ranks, work, title), Path(folder) / f"{scene.name}_{name}.png"
    )


def sweep(
    scenes: list[SimScene],
    worlds: list[int],
    batch_factors: list[int],
    tolerances: list[float | None],
    images: int,
    intersection_seconds: float,
    link_bytes_per_s: float,
    seed: int = 0,
    pictures: Path | None = None,
) -> list[Row]:
    """Every scene x world size x batch (factor x W, skipped beyond a scene's cameras) x ownership x sampler x
    assignment (rows, balanced, locality, majority), ``images`` / batch iterations each. With spatial ownership
    locality runs at every tolerance and owner-aware sampling is tried too; array-order shards all see every
    camera alike, so there only the automatic tolerance and random batches. ``pictures``: see :func:`run_config`."""
    spatial = [("rows", None), ("balanced", None)] + [("locality", t) for t in tolerances] + [("majority", None)]
    grendel = [("rows", None), ("balanced", None), ("locality", None), ("majority", None)]
    configs = []
    for scene in scenes:
        for w in worlds:
            for f in batch_factors:
                if f * w > len(scene.cameras):
                    continue
                for ownership in OWNERSHIPS:
                    samplers, plans = (SAMPLERS, spatial) if ownership == "kd" else (("random",), grendel)
                    for s in samplers:
                        configs += [(scene, ownership, s, a, t, w, f * w) for a, t in plans]
    rows = []
    for scene, ownership, s, a, t, w, b in tqdm(configs, desc="simulate", unit="config", disable=None):
        iterations = max(1, images // b)
        rows.append(
            run_config(
                scene, ownership, s, a, t, w, b, iterations, intersection_seconds, link_bytes_per_s, seed, pictures
            )
        )
    return rows


def rows_to_json(rows: list[Row]) -> str:
    return json.dumps({"rows": [asdict(r) for r in rows]}, indent=1)


def rows_to_markdown(rows: list[Row]) -> str:
    """One table per scene: bytes relative to array-order + rows of the same (W, batch)."""
    out = []
    base = {
        (r.scene, r.world_size, r.batch_size): r.bytes_per_iter
        for r in rows
        if r.ownership == "array-order" and r.assignment == "rows"
    }
    for scene in dict.fromkeys(r.scene for r in rows):
        out += [
            f"### {scene}",
            "",
            "| W | batch | ownership | sampler | assignment | MB/iter | vs Grendel | balance | model ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r.scene != scene:
                continue
            name = r.assignment if r.tolerance is None else f"locality (tol {r.tolerance:g})"
            if r.assignment == "locality" and r.tolerance is None:
                name = "locality (auto)"
            ref = base.get((r.scene, r.world_size, r.batch_size)) or float("nan")
            out.append(
                f"| {r.world_size} | {r.batch_size} | {r.ownership} | {r.sampler} | {name} | {r.bytes_per_iter / 1e6:.2f} | "
                f"{r.bytes_per_iter / ref:.2f} | {r.balance:.3f} | {r.model_time * 1e3:.2f} |"
            )
        out.append("")
    return "\n".join(out)
