"""COLMAP model reading and writing: exact round trips, pycolmap cross-checks, malformed input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from grendel_py.data.colmap import (
    CAMERA_MODELS,
    ColmapCamera,
    ColmapImage,
    ColmapPoints,
    qvec_to_rotmat,
    read_cameras_bin,
    read_cameras_txt,
    read_images_bin,
    read_images_txt,
    read_model,
    read_points3D_bin,
    read_points3D_txt,
    rotmat_to_qvec,
    write_model,
)
from grendel_py.errors import InputError


def make_model(seed: int = 0, n_images: int = 4, n_points: int = 6):
    """A small consistent model: every track element is a keypoint of its image that points back."""
    rng = np.random.default_rng(seed)
    cameras = {
        1: ColmapCamera(1, "OPENCV", 64, 48, rng.normal(size=8)),
        3: ColmapCamera(3, "PINHOLE", 32, 24, np.array([30.0, 31.0, 16.0, 12.0])),
        7: ColmapCamera(7, "THIN_PRISM_FISHEYE", 20, 10, rng.normal(size=12)),
    }
    cam_ids = list(cameras)
    point_ids = np.arange(n_points, dtype=np.int64) * 3 + 2
    tracks: dict[int, list[tuple[int, int]]] = {int(p): [] for p in point_ids}
    images = {}
    for k in range(n_images):
        image_id = 10 + k
        ids = np.full(n_points + 2, -1, dtype=np.int64)
        seen = rng.permutation(n_points)[: rng.integers(0, n_points + 1)]
        slots = rng.permutation(n_points + 2)[: len(seen)]
        ids[slots] = point_ids[seen]
        for slot, p in zip(slots, point_ids[seen]):
            tracks[int(p)].append((image_id, int(slot)))
        q = rng.normal(size=4)
        images[image_id] = ColmapImage(
            image_id,
            q / np.linalg.norm(q),
            rng.normal(size=3),
            cam_ids[k % len(cam_ids)],
            f"dir/im_{k:03d}.png",
            rng.uniform(0, 20, size=(n_points + 2, 2)),
            ids,
        )
    lengths = [len(tracks[int(p)]) for p in point_ids]
    flat = [e for p in point_ids for e in tracks[int(p)]]
    points = ColmapPoints(
        ids=point_ids,
        xyz=rng.normal(size=(n_points, 3)),
        rgb=rng.integers(0, 256, size=(n_points, 3)).astype(np.uint8),
        error=rng.uniform(size=n_points),
        track_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        track_image_ids=np.array([e[0] for e in flat], dtype=np.int64),
        track_point2D_idx=np.array([e[1] for e in flat], dtype=np.int64),
    )
    return cameras, images, points


def assert_models_equal(a, b) -> None:
    cams_a, imgs_a, pts_a = a
    cams_b, imgs_b, pts_b = b
    assert cams_a.keys() == cams_b.keys()
    for k, ca in cams_a.items():
        cb = cams_b[k]
        assert (ca.camera_id, ca.model, ca.width, ca.height) == (cb.camera_id, cb.model, cb.width, cb.height)
        np.testing.assert_array_equal(ca.params, cb.params)
    assert imgs_a.keys() == imgs_b.keys()
    for k, ia in imgs_a.items():
        ib = imgs_b[k]
        assert (ia.image_id, ia.camera_id, ia.name) == (ib.image_id, ib.camera_id, ib.name)
        for field in ("qvec", "tvec", "xys", "point3D_ids"):
            np.testing.assert_array_equal(getattr(ia, field), getattr(ib, field))
    for field in ("ids", "xyz", "rgb", "error", "track_offsets", "track_image_ids", "track_point2D_idx"):
        np.testing.assert_array_equal(getattr(pts_a, field), getattr(pts_b, field))
        assert getattr(pts_a, field).dtype == getattr(pts_b, field).dtype, field


@pytest.mark.parametrize("binary", [True, False])
def test_round_trip_exact(tmp_path: Path, binary: bool) -> None:
    model = make_model()
    write_model(tmp_path / "sparse" / "0", *model, binary=binary)
    ext = ".bin" if binary else ".txt"
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "sparse" / "0").iterdir()) == sorted(
        f"{s}{ext}" for s in ("cameras", "images", "points3D")
    )
    assert_models_equal(read_model(tmp_path / "sparse" / "0"), model)


def test_round_trip_empty_model(tmp_path: Path) -> None:
    for binary in (True, False):
        write_model(tmp_path / str(binary), {}, {}, ColmapPoints.empty(), binary=binary)
        cams, imgs, pts = read_model(tmp_path / str(binary))
        assert cams == {} and imgs == {} and len(pts) == 0
        assert pts.track_offsets.tolist() == [0]


def test_every_camera_model_round_trips(tmp_path: Path) -> None:
    cameras = {
        m.model_id + 1: ColmapCamera(m.model_id + 1, m.name, 10, 20, np.arange(m.num_params) + 0.5)
        for m in CAMERA_MODELS
    }
    for binary, reader in ((True, read_cameras_bin), (False, read_cameras_txt)):
        d = tmp_path / str(binary)
        write_model(d, cameras, {}, ColmapPoints.empty(), binary=binary)
        back = reader(d / ("cameras.bin" if binary else "cameras.txt"))
        assert [(c.model, c.params.tolist()) for c in back.values()] == [
            (c.model, c.params.tolist()) for c in cameras.values()
        ]


def test_bin_preferred_over_txt(tmp_path: Path) -> None:
    write_model(tmp_path, *make_model(seed=1), binary=False)
    write_model(tmp_path, *make_model(seed=2), binary=True)
    assert_models_equal(read_model(tmp_path), make_model(seed=2))


def test_missing_model_is_input_error(tmp_path: Path) -> None:
    write_model(tmp_path, *make_model(), binary=True)
    (tmp_path / "points3D.bin").unlink()
    with pytest.raises(InputError, match="no COLMAP model"):
        read_model(tmp_path)


def test_quaternion_conversions() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = rng.normal(size=4)
        q = q / np.linalg.norm(q) * np.sign(q[0])
        R = qvec_to_rotmat(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(rotmat_to_qvec(R), q, atol=1e-12)
    np.testing.assert_allclose(qvec_to_rotmat([1, 0, 0, 0]), np.eye(3))
    # 90 degrees about z maps x to y.
    np.testing.assert_allclose(qvec_to_rotmat([np.sqrt(0.5), 0, 0, np.sqrt(0.5)]) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


# ---------------------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("name", "reader"),
    [("cameras.bin", read_cameras_bin), ("images.bin", read_images_bin), ("points3D.bin", read_points3D_bin)],
)
def test_truncated_bin_is_input_error(tmp_path: Path, name: str, reader) -> None:
    write_model(tmp_path, *make_model(), binary=True)
    path = tmp_path / name
    data = path.read_bytes()
    for cut in (3, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match="truncated") as info:
            reader(path)
        assert info.value.path == path and name in str(info.value)
    path.write_bytes(data + b"\0")
    with pytest.raises(InputError, match="unexpected bytes"):
        reader(path)


def test_absurd_count_is_input_error(tmp_path: Path) -> None:
    path = tmp_path / "points3D.bin"
    path.write_bytes((10**15).to_bytes(8, "little") + b"\0" * 100)
    with pytest.raises(InputError, match="truncated"):
        read_points3D_bin(path)


def test_unknown_camera_model_is_input_error(tmp_path: Path) -> None:
    write_model(tmp_path, {1: ColmapCamera(1, "PINHOLE", 4, 4, np.ones(4))}, {}, ColmapPoints.empty())
    path = tmp_path / "cameras.bin"
    data = bytearray(path.read_bytes())
    data[12:16] = (99).to_bytes(4, "little", signed=True)  # model id follows count (8) and camera id (4)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="unknown camera model id 99") as info:
        read_cameras_bin(path)
    assert info.value.path == path

    txt = tmp_path / "cameras.txt"
    txt.write_text("# comment\n1 PINHOLE_XL 4 4 1 1 2 2\n")
    with pytest.raises(InputError, match="unknown camera model 'PINHOLE_XL'") as info:
        read_cameras_txt(txt)
    assert info.value.path == txt


@pytest.mark.parametrize(
    ("name", "reader", "text", "match"),
    [
        ("cameras.txt", read_cameras_txt, "1 PINHOLE 4 4 1 1 2\n", "needs 4 params"),
        ("cameras.txt", read_cameras_txt, "1 PINHOLE four 4 1 1 2 2\n", "line 1: malformed camera"),
        ("images.txt", read_images_txt, "1 1 0 0 0 0 0 0 1 a.png\n", "truncated"),
        ("images.txt", read_images_txt, "1 1 0 0 0 0 0 0 1 a.png\n1.0 2.0\n", "not a multiple of 3"),
        ("images.txt", read_images_txt, "1 1 0 0 0 x 0 0 1 a.png\n\n", "line 1: malformed image"),
        ("images.txt", read_images_txt, "1 1 0 0 0 0 0 0\n\n", "malformed image"),
        ("points3D.txt", read_points3D_txt, "1 0 0 0 1 2 3 0.5 1\n", "malformed point"),
        ("points3D.txt", read_points3D_txt, "1 0 0 0 1 2 300 0.5\n", "outside 0..255"),
        ("points3D.txt", read_points3D_txt, "# c\n\n1 0 0 nan? 1 2 3 0.5\n", "line 3: malformed point"),
    ],
)
def test_malformed_txt_is_input_error(tmp_path: Path, name: str, reader, text: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        reader(path)
    assert info.value.path == path


def test_names_with_spaces(tmp_path: Path) -> None:
    cameras, images, points = make_model()
    images[10].name = "my photo.png"
    write_model(tmp_path, cameras, images, points, binary=True)
    assert read_model(tmp_path)[1][10].name == "my photo.png"
    with pytest.raises(ValueError, match="text model"):
        write_model(tmp_path / "txt", cameras, images, points, binary=False)
    pycolmap = pytest.importorskip("pycolmap")
    assert pycolmap.Reconstruction(str(tmp_path)).images[10].name == "my photo.png"


def test_images_txt_empty_keypoint_lines(tmp_path: Path) -> None:
    path = tmp_path / "images.txt"
    path.write_text("# header\n1 1 0 0 0 1 2 3 5 my image.jpg\n\n2 0 1 0 0 0 0 0 5 b.jpg\n1.5 2.5 -1 3 4 7\n")
    images = read_images_txt(path)
    assert [i.name for i in images.values()] == ["my image.jpg", "b.jpg"]
    assert images[1].xys.shape == (0, 2) and images[1].point3D_ids.shape == (0,)
    assert images[2].point3D_ids.tolist() == [-1, 7]
    np.testing.assert_array_equal(images[1].tvec, [1, 2, 3])


# ------------------------------------------------------------------------------------------------ pycolmap


def _cam_from_world(image):
    pose = image.cam_from_world
    return pose() if callable(pose) else pose


def test_pycolmap_reads_our_model(tmp_path: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    cameras, images, points = make_model()
    for binary in (True, False):
        d = tmp_path / str(binary)
        write_model(d, cameras, images, points, binary=binary)
        rec = pycolmap.Reconstruction(str(d))
        assert set(rec.cameras) == set(cameras)
        for cid, cam in cameras.items():
            theirs = rec.cameras[cid]
            assert theirs.model.name == cam.model and (theirs.width, theirs.height) == (cam.width, cam.height)
            np.testing.assert_array_equal(theirs.params, cam.params)
        assert set(rec.images) == set(images)
        for iid, img in images.items():
            theirs = rec.images[iid]
            assert theirs.name == img.name and theirs.camera_id == img.camera_id
            pose = _cam_from_world(theirs)
            x, y, z, w = pose.rotation.quat  # Eigen order
            np.testing.assert_allclose(np.array([w, x, y, z]) * np.sign(w), img.qvec * np.sign(img.qvec[0]), atol=1e-12)
            np.testing.assert_allclose(pose.translation, img.tvec, atol=1e-12)
            np.testing.assert_allclose(pose.rotation.matrix(), qvec_to_rotmat(img.qvec), atol=1e-12)
            xys = np.array([p.xy for p in theirs.points2D]).reshape(-1, 2)
            np.testing.assert_allclose(xys, img.xys, atol=1e-12)
            ids = [p.point3D_id if p.has_point3D() else -1 for p in theirs.points2D]
            assert ids == img.point3D_ids.tolist()
        assert set(rec.points3D) == set(points.ids.tolist())
        for p, pid in enumerate(points.ids.tolist()):
            theirs = rec.points3D[pid]
            np.testing.assert_allclose(theirs.xyz, points.xyz[p], atol=1e-12)
            assert theirs.color.tolist() == points.rgb[p].tolist()
            track = sorted((e.image_id, e.point2D_idx) for e in theirs.track.elements)
            lo, hi = points.track_offsets[p], points.track_offsets[p + 1]
            assert track == sorted(
                zip(points.track_image_ids[lo:hi].tolist(), points.track_point2D_idx[lo:hi].tolist())
            )


def test_we_read_pycolmap_model(tmp_path: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    model = make_model(seed=5)
    write_model(tmp_path / "ours", *model)
    rec = pycolmap.Reconstruction(str(tmp_path / "ours"))
    for d in ("bin", "txt"):
        (tmp_path / d).mkdir()
    rec.write(str(tmp_path / "bin"))
    rec.write_text(str(tmp_path / "txt"))
    for d in ("bin", "txt"):
        cams, imgs, pts = read_model(tmp_path / d)
        assert {k: (c.model, c.width, c.height) for k, c in cams.items()} == {
            k: (c.model, c.width, c.height) for k, c in model[0].items()
        }
        for k, c in cams.items():
            np.testing.assert_allclose(c.params, model[0][k].params, rtol=1e-15)
        assert imgs.keys() == model[1].keys()
        for k, img in imgs.items():
            ref = model[1][k]
            assert (img.name, img.camera_id) == (ref.name, ref.camera_id)
            np.testing.assert_allclose(img.qvec * np.sign(img.qvec[0]), ref.qvec * np.sign(ref.qvec[0]), atol=1e-12)
            np.testing.assert_allclose(img.tvec, ref.tvec, atol=1e-12)
            np.testing.assert_allclose(img.xys, ref.xys, atol=1e-12)
            np.testing.assert_array_equal(img.point3D_ids, ref.point3D_ids)
        order = np.argsort(pts.ids)
        np.testing.assert_array_equal(pts.ids[order], model[2].ids)
        np.testing.assert_allclose(pts.xyz[order], model[2].xyz, atol=1e-12)
        np.testing.assert_array_equal(pts.rgb[order], model[2].rgb)
        for p_ours, p_ref in zip(order, range(len(model[2]))):
            lo, hi = pts.track_offsets[p_ours], pts.track_offsets[p_ours + 1]
            rlo, rhi = model[2].track_offsets[p_ref], model[2].track_offsets[p_ref + 1]
            assert sorted(zip(pts.track_image_ids[lo:hi].tolist(), pts.track_point2D_idx[lo:hi].tolist())) == sorted(
                zip(model[2].track_image_ids[rlo:rhi].tolist(), model[2].track_point2D_idx[rlo:rhi].tolist())
            )
