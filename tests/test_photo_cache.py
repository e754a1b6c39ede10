"""The node's photo cache (grendel_py.data.photo_cache): decoded once, reused by other runs and ranks,
rebuilt when a photo, an option or the entry itself changes, region reads, clear errors for a bad folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from grendel_py.data.dataset import load_scene
from grendel_py.data.photo_cache import BAND_ROWS, PhotoCache, to_uint8
from grendel_py.errors import InputError
from tests.decode_counter import count_decodes


@pytest.fixture
def scene_dir(object_scene_seed2: Path, tmp_path: Path) -> Path:
    """A private copy of the scene (the tests touch its photos)."""
    return Path(shutil.copytree(object_scene_seed2, tmp_path / "scene"))


def test_photos_are_decoded_once_per_node(scene_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scene = load_scene(scene_dir, downscale=2)
    decoded = count_decodes(scene, monkeypatch)
    cams = scene.train_cameras[:3]
    first = PhotoCache(tmp_path / "cache", scene)
    photos = [np.array(first.photo(c)) for c in cams]
    assert decoded == [c.uid for c in cams]
    for cam, photo in zip(cams, photos):
        assert photo.dtype == np.uint8 and photo.shape == (cam.height, cam.width, 3)
        assert np.array_equal(photo, to_uint8(scene.load_image(cam)).numpy())
    decoded.clear()
    again = PhotoCache(tmp_path / "cache", load_scene(scene_dir, downscale=2))  # another run or rank of the node
    assert all(np.array_equal(again.photo(c), p) for c, p in zip(cams, photos))
    assert decoded == []
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(first.path(c).name for c in cams)


def test_a_changed_photo_or_option_gets_a_new_entry(
    scene_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = load_scene(scene_dir, downscale=2)
    decoded = count_decodes(scene, monkeypatch)
    cam = scene.train_cameras[0]
    cache = PhotoCache(tmp_path / "cache", scene)
    old_path, old = cache.path(cam), np.array(cache.photo(cam))
    photo = scene.image_source(cam).path
    stat = photo.stat()
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the photo was replaced
    fresh = PhotoCache(tmp_path / "cache", scene)
    assert fresh.path(cam) != old_path
    assert np.array_equal(fresh.photo(cam), old) and decoded == [cam.uid, cam.uid]
    assert not old_path.exists()  # the stale entry is removed
    smaller = load_scene(scene_dir, downscale=4)  # another data option
    small_cam = smaller.train_cameras[0]
    assert PhotoCache(tmp_path / "cache", smaller).photo(small_cam).shape == (small_cam.height, small_cam.width, 3)


@pytest.mark.parametrize("damage", ["flipped pixel", "truncated", "bad header"])
def test_a_damaged_entry_is_rebuilt(
    damage: str, scene_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = load_scene(scene_dir, downscale=2)
    cam = scene.train_cameras[1]
    good = np.array(PhotoCache(tmp_path / "cache", scene).photo(cam))
    path = PhotoCache(tmp_path / "cache", scene).path(cam)
    data = bytearray(path.read_bytes())
    if damage == "flipped pixel":
        data[len(data) // 2] ^= 0x10
    elif damage == "truncated":
        data = data[: len(data) - 100]
    else:
        data[:4] = b"JUNK"
    path.write_bytes(bytes(data))
    decoded = count_decodes(scene, monkeypatch)
    assert np.array_equal(PhotoCache(tmp_path / "cache", scene).photo(cam), good)
    assert decoded == [cam.uid]
    assert path.read_bytes() != bytes(data)


def test_a_region_read_checks_only_its_bands(scene_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flipped byte in the last rows goes unnoticed by reads of the first rows (they neither read nor
    checksum it) and is caught, and the entry rebuilt, by the first read that reaches it."""
    scene = load_scene(scene_dir, downscale=2)
    cam = scene.train_cameras[0]
    cache = PhotoCache(tmp_path / "cache", scene)
    whole = cache.photo(cam)
    path = cache.path(cam)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # last row
    path.write_bytes(bytes(data))
    decoded = count_decodes(scene, monkeypatch)
    fresh = PhotoCache(tmp_path / "cache", scene)
    assert np.array_equal(fresh.region(cam, 0, BAND_ROWS, 0, cam.width), whole[:BAND_ROWS])
    assert decoded == []
    assert np.array_equal(fresh.region(cam, cam.height - 2, cam.height, 3, 9), whole[-2:, 3:9])
    assert decoded == [cam.uid]


def test_region_reads_equal_the_whole_photo(scene_dir: Path, tmp_path: Path) -> None:
    scene = load_scene(scene_dir, downscale=2)
    cam = scene.train_cameras[2]
    cache = PhotoCache(tmp_path / "cache", scene)
    whole = np.array(cache.photo(cam))
    for y0, y1, x0, x1 in [
        (0, 16, 0, 16),
        (5, 37, 11, 29),
        (-5, 8, -3, 4),
        (cam.height - 3, cam.height + 9, 0, cam.width),
    ]:
        assert np.array_equal(cache.region(cam, y0, y1, x0, x1), whole[max(y0, 0) : y1, max(x0, 0) : x1])


def test_a_bad_cache_folder_is_one_clear_error(
    scene_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = load_scene(scene_dir, downscale=2)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError) as err:
        PhotoCache(blocker / "cache", scene)
    assert "\n" not in str(err.value) and str(blocker) in str(err.value)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="not writable"):
            PhotoCache(locked, scene)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(InputError, match="GB free") as err:
        PhotoCache(tmp_path / "full", scene)
    assert "\n" not in str(err.value)
