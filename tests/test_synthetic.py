"""Tests for the synthetic dataset generator (``grendel synth``) and its ray caster."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grendel_py.data.cameras import Camera, look_at
from grendel_py.data.colmap import qvec_to_rotmat, read_model
from grendel_py.errors import InputError
from grendel_py.synth import intersect, presets, writer
from grendel_py.synth import scene as synth_scene
from grendel_py.synth.intersect import ray_aabb, ray_plane, ray_sphere
from grendel_py.synth.presets import PRESETS, synthetic_cameras, synthetic_scene
from grendel_py.synth.raytrace import render
from grendel_py.synth.writer import SynthSummary, write_synthetic

INF = math.inf


def t64(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def unit(*v: float) -> torch.Tensor:
    x = torch.tensor(v, dtype=torch.float64)
    return x / x.norm()


# ------------------------------------------------------------------------------------------ ray casting


def test_ray_sphere_hand_computed():
    center, radius = t64(0.0, 0.0, 0.0), torch.tensor(1.0, dtype=torch.float64)
    z = unit(0, 0, 1)
    assert ray_sphere(t64(0.0, 0.0, -5.0), z, center, radius).item() == pytest.approx(4.0)
    # Off-axis by 0.6: enters at z = -0.8.
    assert ray_sphere(t64(0.6, 0.0, -5.0), z, center, radius).item() == pytest.approx(4.2)
    # From inside: the exit.
    assert ray_sphere(t64(0.0, 0.0, 0.5), z, center, radius).item() == pytest.approx(0.5)
    assert ray_sphere(t64(0.0, 2.0, -5.0), z, center, radius).item() == INF  # misses
    assert ray_sphere(t64(0.0, 0.0, 5.0), z, center, radius).item() == INF  # sphere behind
    # Broadcasting: 2 rays x 2 spheres.
    t = ray_sphere(t64([0.0, 0.0, -5.0], [3.0, 0.0, -5.0])[:, None], z, t64([0, 0, 0], [3, 0, 1]), t64(1.0, 2.0))
    assert t.shape == (2, 2)
    assert t[0, 0].item() == pytest.approx(4.0) and t[1, 1].item() == pytest.approx(4.0)
    assert t[0, 1].item() == INF and t[1, 0].item() == INF


def test_ray_aabb_hand_computed():
    lo, hi = t64(0.0, 0.0, 0.0), t64(1.0, 1.0, 1.0)
    assert ray_aabb(t64(-1.0, 0.5, 0.5), unit(1, 0, 0), lo, hi).item() == pytest.approx(1.0)
    assert ray_aabb(t64(-1.0, -1.0, -1.0), unit(1, 1, 1), lo, hi).item() == pytest.approx(math.sqrt(3.0))
    assert ray_aabb(t64(0.5, 0.5, 0.5), unit(0, 0, 1), lo, hi).item() == pytest.approx(0.5)  # inside: exit
    assert ray_aabb(t64(0.5, 0.5, 3.0), unit(0, 0, -1), lo, hi).item() == pytest.approx(2.0)  # from above
    assert ray_aabb(t64(-1.0, 2.0, 0.5), unit(1, 0, 0), lo, hi).item() == INF  # passes beside
    assert ray_aabb(t64(2.0, 0.5, 0.5), unit(1, 0, 0), lo, hi).item() == INF  # box behind
    assert ray_aabb(t64(-1.0, 0.5, 0.5), unit(1, 1, 0), lo, hi).item() == INF  # slanted past the corner
    # Broadcasting: 3 rays x 2 boxes.
    origins = t64([-1.0, 0.5, 0.5], [0.5, 0.5, 5.0], [10.0, 0.5, 0.5])
    dirs = torch.stack([unit(1, 0, 0), unit(0, 0, -1), unit(-1, 0, 0)])
    t = ray_aabb(origins[:, None], dirs[:, None], t64([0, 0, 0], [4, 0, 0]), t64([1, 1, 1], [5, 1, 1]))
    expected = [[1.0, 5.0], [4.0, INF], [9.0, 5.0]]
    np.testing.assert_allclose(t.numpy(), expected)


def test_ray_plane_hand_computed():
    point, normal = t64(0.0, 0.0, 0.0), t64(0.0, 0.0, 1.0)
    assert ray_plane(t64(0.0, 0.0, 5.0), unit(0, 0, -1), point, normal).item() == pytest.approx(5.0)
    assert ray_plane(t64(0.0, 0.0, 5.0), unit(0.6, 0, -0.8), point, normal).item() == pytest.approx(6.25)
    assert ray_plane(t64(0.0, 0.0, 5.0), unit(1, 0, 0), point, normal).item() == INF  # parallel
    assert ray_plane(t64(0.0, 0.0, 5.0), unit(0, 0, 1), point, normal).item() == INF  # pointing away
    tilted = ray_plane(t64(0.0, 0.0, 0.0), unit(1, 0, 0), t64(2.0, 0.0, 0.0), unit(1, 1, 0))
    assert tilted.item() == pytest.approx(2.0)


def _toy_scene(with_box: bool, with_sphere: bool) -> synth_scene.Scene:
    sb = presets._SceneBuilder(np.random.default_rng(0))
    mat = sb.material(synth_scene.CHECKER, (0.9, 0.9, 0.9), (0.1, 0.1, 0.1), 0.5)
    if with_box:
        sb.box((-1.0, -1.0, 0.0), (1.0, 1.0, 3.0), mat)
    if with_sphere:
        sb.sphere((0.0, -4.0, 1.0), 0.5, mat)
    return sb.build(ground_half=50.0, ground_round=False, ground_material=mat, sky=((0, 0, 0), (0, 0, 0)), extent=100.0)


def test_cast_takes_the_nearest_hit():
    scene = _toy_scene(with_box=True, with_sphere=True)
    origin = torch.tensor([0.0, -10.0, 1.0])
    d = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.8, -0.6]]])  # sphere, ground, ground
    hits = intersect.cast(scene, origin, d, torch.tensor([[0]]))
    assert hits.kind.tolist() == [synth_scene.SPHERE, synth_scene.GROUND, synth_scene.GROUND]
    np.testing.assert_allclose(hits.t.numpy(), [5.5, 1.0, 1.0 / 0.6], rtol=1e-6)
    d = torch.tensor([[[0.0, 1.0, 0.1]]])
    d = d / d.norm()
    hits = intersect.cast(_toy_scene(with_box=True, with_sphere=False), origin, d, torch.tensor([[0]]))
    assert hits.kind.tolist() == [synth_scene.BOX]
    assert hits.t.item() == pytest.approx(9.0 / d[0, 0, 1].item(), rel=1e-6)
    hits = intersect.cast(scene, origin, torch.tensor([[[0.0, 0.0, 1.0]]]), torch.tensor([[0]]))
    assert hits.kind.tolist() == [synth_scene.MISS]


def test_observe_respects_occlusion():
    R, t = look_at(t64(0.0, -10.0, 6.0), t64(0.0, 0.0, 0.0), t64(0.0, 0.0, 1.0))
    cam = Camera(0, "0000.png", 64, 48, 40.0, 40.0, 32.0, 24.0, R, t)
    points = np.array([[0.0, 5.0, 0.0], [3.0, -2.0, 0.0], [0.0, 0.0, 3.0]])  # behind box, beside it, its roof
    idx, uv = writer._observe(_toy_scene(with_box=True, with_sphere=False), cam, points)
    assert idx.tolist() == [1, 2]
    idx_free, uv_free = writer._observe(_toy_scene(with_box=False, with_sphere=False), cam, points)
    assert idx_free.tolist() == [0, 1, 2]
    x = torch.from_numpy(points) @ R.T + t
    np.testing.assert_allclose(uv_free, (x[:, :2] * 40.0 / x[:, 2:] + torch.tensor([32.0, 24.0])).numpy())
    np.testing.assert_array_equal(uv, uv_free[1:])


def test_render_is_thread_count_independent():
    scene, cam = synthetic_scene("object", 0), synthetic_cameras("object", 0)[5]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = render(scene, cam)
        torch.set_num_threads(2)
        two = render(scene, cam)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one, two)


# ------------------------------------------------------------------------------------------ object preset


@pytest.fixture(scope="module")
def object_dataset(tmp_path_factory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "object"
    return out, write_synthetic(out, "object", seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_object_writes_a_readable_model(object_dataset):
    out, summary = object_dataset
    assert sorted(p.name for p in out.iterdir()) == ["images", "sparse"]
    assert not list(out.parent.glob(".object.tmp-*"))
    cameras, images, points = read_model(out / "sparse" / "0")
    assert 40 <= summary.n_images == len(images) <= 60
    assert 2000 <= summary.n_points == len(points) <= 5000
    assert summary.extent > 0
    assert len(cameras) == 1
    cam = next(iter(cameras.values()))
    assert (cam.model, cam.width, cam.height) == ("PINHOLE", summary.width, summary.height)
    fx = cam.params[0]
    fov = 2 * math.degrees(math.atan(cam.width / 2 / fx))
    assert 50 <= fov <= 60
    names = sorted(img.name for img in images.values())
    assert names == [f"{i:04d}.png" for i in range(summary.n_images)]
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    with Image.open(out / "images" / names[0]) as im:
        assert (im.mode, im.size, im.format) == ("RGB", (summary.width, summary.height), "PNG")


def test_object_points_reproject_and_tracks_are_consistent(object_dataset):
    out, _ = object_dataset
    cameras, images, points = read_model(out / "sparse" / "0")
    row = {int(pid): k for k, pid in enumerate(points.ids)}
    n_obs = 0
    for img in images.values():
        fx, fy, cx, cy = cameras[img.camera_id].params
        R = qvec_to_rotmat(img.qvec)
        x = points.xyz[[row[int(p)] for p in img.point3D_ids]] @ R.T + img.tvec
        assert (x[:, 2] > 0).all()
        uv = np.stack([fx * x[:, 0] / x[:, 2] + cx, fy * x[:, 1] / x[:, 2] + cy], axis=1)
        assert np.abs(uv - img.xys).max(initial=0.0) < 1e-3
        w, h = cameras[img.camera_id].width, cameras[img.camera_id].height
        assert ((img.xys >= 0) & (img.xys < [w, h])).all()
        n_obs += len(img.point3D_ids)
    lengths = np.diff(points.track_offsets)
    assert lengths.min() >= 2 and lengths.max() <= writer._SPECS["object"].max_track
    assert n_obs == len(points.track_image_ids)
    for p, pid in enumerate(points.ids):
        for k in range(points.track_offsets[p], points.track_offsets[p + 1]):
            img = images[int(points.track_image_ids[k])]
            assert img.point3D_ids[points.track_point2D_idx[k]] == pid


def test_object_images_are_not_trivial(object_dataset):
    out, _ = object_dataset
    for path in sorted((out / "images").iterdir()):
        pixels = np.asarray(Image.open(path))
        assert pixels.std() > 20, path.name
        foreground = (pixels > 0).any(axis=2).mean()  # the object preset's background is black
        assert 0.2 < foreground < 0.95, path.name
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500, path.name


def test_object_point_colours_match_the_images(object_dataset):
    out, _ = object_dataset
    _, images, points = read_model(out / "sparse" / "0")
    row = {int(pid): k for k, pid in enumerate(points.ids)}
    img = images[1]
    pixels = np.asarray(Image.open(out / "images" / img.name)).astype(float)
    ij = np.floor(img.xys).astype(int)
    observed = pixels[ij[:, 1], ij[:, 0]]
    expected = points.rgb[[row[int(p)] for p in img.point3D_ids]].astype(float)
    assert np.median(np.abs(observed - expected)) < 25


def test_same_seed_same_bytes_other_seed_differs(object_dataset, tmp_path):
    out, _ = object_dataset
    again = tmp_path / "again"
    again.mkdir()  # an existing empty directory is fine
    write_synthetic(again, "object", seed=0)
    assert _files(again) == _files(out)
    other = tmp_path / "other"
    write_synthetic(other, "object", seed=1)
    a, b = _files(out), _files(other)
    assert a.keys() == b.keys()
    assert a["images/0000.png"] != b["images/0000.png"]
    assert a["sparse/0/points3D.bin"] != b["sparse/0/points3D.bin"]


def test_refuses_a_non_empty_output_directory(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        write_synthetic(out, "object")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(InputError):
        write_synthetic(afile, "object")


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="preset"):
        write_synthetic(tmp_path / "x", "castle")
    with pytest.raises(InputError, match="seed"):
        write_synthetic(tmp_path / "x", "object", seed=-1)
    assert not (tmp_path / "x").exists()
    assert PRESETS == ("object", "city")


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "write_model", broken)
    cams = synthetic_cameras("object", 0)[:2]
    with pytest.raises(RuntimeError, match="disk full"):
        writer._write(tmp_path / "out", synthetic_scene("object", 0), cams, writer._SPECS["object"])
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ city preset


def _view_dir(cam: Camera) -> np.ndarray:
    return cam.R[2].numpy()  # camera z axis (forward) in world coordinates


def test_city_scene_extent_and_layout():
    scene = synthetic_scene("city", 0)
    assert 200 <= scene.extent <= 500
    assert scene.extent == pytest.approx(2 * scene.ground_half)
    lo, hi = scene.box_lo.numpy(), scene.box_hi.numpy()
    assert 100 <= len(lo) <= 400
    assert (lo[:, 2] == 0).all() and (hi[:, 2] > lo[:, 2]).all()
    heights = hi[:, 2]
    assert heights.min() >= 5 and heights.max() <= 80 and heights.std() > 5  # varied
    streets = scene.streets
    assert (lo[:, :2] >= streets.origin).all() and (hi[:, :2] <= streets.end).all()
    assert streets.end - streets.origin >= 200
    other = synthetic_scene("city", 1)
    assert not torch.equal(other.box_hi, scene.box_hi)


def test_city_camera_layout():
    scene, cams = synthetic_scene("city", 0), synthetic_cameras("city", 0)
    assert 300 <= len(cams) <= 400
    assert [c.uid for c in cams] == list(range(len(cams)))
    assert all((c.width, c.height) == (160, 120) for c in cams)
    top = scene.box_hi[:, 2].max().item()
    centres = np.stack([c.center.numpy() for c in cams])
    assert centres[:, 2].min() > top + 5
    dirs = np.stack([_view_dir(c) for c in cams])
    nadir = dirs[:, 2] < -math.cos(math.radians(10))
    n_nadir = int(nadir.sum())
    assert n_nadir >= 100 and nadir[:n_nadir].all()  # the lawnmower flight comes first
    steps = np.linalg.norm(np.diff(centres[:n_nadir, :2], axis=0), axis=1)
    assert steps.max() < 30  # consecutive nadir views are neighbours (serpentine lines)
    span = centres[:n_nadir, :2].max(axis=0) - centres[:n_nadir, :2].min(axis=0)
    assert (span > 200).all()
    oblique = dirs[n_nadir:]
    elevation = np.degrees(np.arcsin(-oblique[:, 2]))
    assert (elevation > 15).all() and (elevation < 50).all()
    radial = centres[n_nadir:, :2] / np.linalg.norm(centres[n_nadir:, :2], axis=1, keepdims=True)
    horizontal = oblique[:, :2] / np.linalg.norm(oblique[:, :2], axis=1, keepdims=True)
    assert ((radial * horizontal).sum(axis=1) < -0.9).all()  # looking inward
    assert (np.linalg.norm(centres[n_nadir:, :2], axis=1) > scene.streets.end).all()  # from the perimeter
    # Every view looks at the ground square.
    t = -centres[:, 2] / dirs[:, 2]
    target = centres[:, :2] + t[:, None] * dirs[:, :2]
    assert (np.abs(target) < scene.ground_half).all()


def test_city_renders_and_tracks_a_few_views(tmp_path):
    scene, cams = synthetic_scene("city", 0), synthetic_cameras("city", 0)
    views = [cams[i] for i in (0, 70, 150, 200, 300)]
    for cam in views[:3]:
        image = render(scene, cam)
        assert image.shape == (120, 160, 3) and image.dtype == np.uint8
        assert image.std() > 20
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 2000
    views = [
        Camera(k, f"{k:04d}.png", c.width, c.height, c.fx, c.fy, c.cx, c.cy, c.R, c.t) for k, c in enumerate(views)
    ]
    spec = writer._Spec(sample_every=1, sample_stride=12, voxel=1.3, max_track=12)
    summary = writer._write(tmp_path / "city", scene, views, spec)
    cameras, images, points = read_model(tmp_path / "city" / "sparse" / "0")
    assert summary.n_points == len(points) > 100
    row = {int(pid): k for k, pid in enumerate(points.ids)}
    for img in images.values():
        fx, fy, cx, cy = cameras[img.camera_id].params
        x = points.xyz[[row[int(p)] for p in img.point3D_ids]] @ qvec_to_rotmat(img.qvec).T + img.tvec
        uv = np.stack([fx * x[:, 0] / x[:, 2] + cx, fy * x[:, 1] / x[:, 2] + cy], axis=1)
        assert np.abs(uv - img.xys).max(initial=0.0) < 1e-3
