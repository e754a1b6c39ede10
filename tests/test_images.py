"""Ground-truth photos for training (grendel_py.train.images): 8-bit from the node's photo cache, decoded
once, prefetched on a background thread in the sampler's order, read region by region on the rank's device."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from grendel_py.data.dataset import load_scene
from grendel_py.data.photo_cache import PhotoCache
from grendel_py.errors import InputError
from grendel_py.train.images import GroundTruth, to_float, to_uint8
from grendel_py.train.sampler import CameraSampler
from tests.decode_counter import count_decodes


@pytest.fixture(scope="module")
def scene(object_scene_seed2: Path):
    return load_scene(object_scene_seed2, downscale=2)


def test_uint8_round_trip() -> None:
    levels = torch.arange(256, dtype=torch.uint8).view(16, 16, 1).expand(16, 16, 3)
    assert torch.equal(to_uint8(to_float(levels)), levels)
    x = torch.tensor([0.0, 0.5 / 255 - 1e-6, 1.0, -0.2, 1.3])
    assert to_uint8(x).tolist() == [0, 0, 255, 0, 255]


def test_regions_are_the_8bit_photos_decoded_once(scene, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    decoded = count_decodes(scene, monkeypatch)
    cams = scene.train_cameras[:3]
    images = GroundTruth(PhotoCache(tmp_path, scene), torch.device("cpu"), torch.zeros(3))
    images.prefetch(cams[:2])  # decodes ahead, on the background thread
    photos = images.batch(cams)
    assert decoded == [c.uid for c in cams[:2]]
    exact = {c.uid: scene.load_image(c) for c in cams}
    decoded.clear()
    for cam, photo in zip(cams, photos):
        assert photo.shape == (cam.height, cam.width, 3)
        for ys, xs in [(slice(0, cam.height), slice(0, cam.width)), (slice(3, 20), slice(7, 8))]:
            got = photo[ys, xs]
            assert got.dtype == torch.float32
            assert float((got - exact[cam.uid][ys, xs]).abs().max()) <= 0.5 / 255 + 1e-7
            assert torch.equal(got, to_float(to_uint8(exact[cam.uid][ys, xs])))
            assert photo[ys, xs] is got  # the loss and the metrics read it once
    assert decoded == [cams[2].uid]  # the one photo not prefetched, decoded on first read
    images.close()


def test_prefetch_follows_the_sampler(scene, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The background thread warms the cameras of ``peek_batch`` in its order, and they are the next batch."""
    warmed: list[tuple[int, str]] = []
    warm = PhotoCache.warm

    def recording(self, camera):
        warmed.append((camera.uid, threading.current_thread().name))
        return warm(self, camera)

    monkeypatch.setattr(PhotoCache, "warm", recording)
    images = GroundTruth(PhotoCache(tmp_path, scene), torch.device("cpu"), torch.zeros(3))
    sampler = CameraSampler(len(scene.train_cameras), 3, seed=4)
    for _ in range(4):
        ahead = [scene.train_cameras[i].uid for i in sampler.peek_batch()]
        images.prefetch([scene.train_cameras[i] for i in sampler.peek_batch()])
        batch = images.batch([scene.train_cameras[i] for i in sampler.next_batch()])
        assert [p.camera.uid for p in batch] == ahead
        assert [uid for uid, _ in warmed[-3:]] == ahead
        assert all(name.startswith("photos") for _, name in warmed)
    images.close()


def test_a_failed_prefetch_raises_in_the_training_thread(
    scene, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(self, camera):
        raise InputError(Path("photo.png"), "truncated")

    monkeypatch.setattr(PhotoCache, "warm", broken)
    images = GroundTruth(PhotoCache(tmp_path, scene), torch.device("cpu"), torch.zeros(3))
    images.prefetch(scene.train_cameras[:1])
    with pytest.raises(InputError, match="truncated"):
        images.batch(scene.train_cameras[:1])
    images.close()


def test_regions_land_on_the_rank_device(scene, tmp_path: Path) -> None:
    """On the meta device (not the CPU, no data) the pixels come out on the rank's device."""
    images = GroundTruth(PhotoCache(tmp_path, scene), torch.device("meta"), torch.zeros(3))
    assert {p[0:4, 0:5].device.type for p in images.batch(scene.train_cameras[:2])} == {"meta"}
    images.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_to_float_same_bits_on_the_gpu() -> None:
    levels = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    assert torch.equal(to_float(levels.cuda()).cpu(), to_float(levels))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_regions_uploaded_to_the_gpu(scene, tmp_path: Path) -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    cams = scene.train_cameras[:3]
    cache = PhotoCache(tmp_path, scene)
    host = GroundTruth(cache, torch.device("cpu"), torch.zeros(3)).batch(cams)
    images = GroundTruth(cache, device, torch.zeros(3))
    images.prefetch(cams)
    for cam, photo, ref in zip(cams, images.batch(cams), host):
        got = photo[2 : cam.height - 1, 5:40]
        assert got.device == device
        assert torch.equal(got.cpu(), ref[2 : cam.height - 1, 5:40])
    images.close()
