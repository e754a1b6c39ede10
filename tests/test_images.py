"""Ground-truth photos for training (grendel_py.train.images): 8-bit on the host, decoded once, converted on
the rank's device; on a GPU uploaded ahead on a side stream."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grendel_py.data.dataset import load_scene
from grendel_py.train.images import GroundTruth, to_float, to_uint8


@pytest.fixture(scope="module")
def scene(object_scene_seed2: Path):
    return load_scene(object_scene_seed2, downscale=2)


def _count_decodes(scene, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    decoded: list[int] = []
    load = type(scene).load_image

    def counting(self, camera):
        decoded.append(camera.uid)
        return load(self, camera)

    monkeypatch.setattr(type(scene), "load_image", counting)
    return decoded


def test_uint8_round_trip() -> None:
    levels = torch.arange(256, dtype=torch.uint8).view(16, 16, 1).expand(16, 16, 3)
    assert torch.equal(to_uint8(to_float(levels)), levels)
    x = torch.tensor([0.0, 0.5 / 255 - 1e-6, 1.0, -0.2, 1.3])
    assert to_uint8(x).tolist() == [0, 0, 255, 0, 255]


def test_batches_are_the_8bit_photos_decoded_once(scene, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = _count_decodes(scene, monkeypatch)
    cams = scene.train_cameras[:3]
    images = GroundTruth(scene, torch.device("cpu"))
    images.prefetch(cams[:2])  # decodes ahead
    assert decoded == [c.uid for c in cams[:2]]
    first = images.batch(cams)
    again = images.batch(cams[::-1])
    assert decoded == [c.uid for c in cams]  # each photo decoded once
    assert all(img.dtype == torch.uint8 for img in images.host.values())
    for cam, got, back in zip(cams, first, again[::-1]):
        assert got.dtype == torch.float32 and got.shape == (cam.height, cam.width, 3)
        assert torch.equal(got, back)
        exact = scene.load_image(cam)
        assert float((got - exact).abs().max()) <= 0.5 / 255 + 1e-7
        assert torch.equal(got, to_float(to_uint8(exact)))


def test_batches_land_on_the_rank_device(scene) -> None:
    """On the meta device (not the CPU, no data) the photos come out on the rank's device."""
    images = GroundTruth(scene, torch.device("meta"))
    assert {img.device.type for img in images.batch(scene.train_cameras[:2])} == {"meta"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_prefetched_uploads_on_the_gpu(scene) -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    cams = scene.train_cameras[:4]
    host = GroundTruth(scene, torch.device("cpu")).batch(cams)
    images = GroundTruth(scene, device)
    images.prefetch(cams[:2])
    assert set(images.pending) == {c.uid for c in cams[:2]}
    assert all(img.is_pinned() for img in images.host.values())
    images.prefetch(cams[2:3])  # a mispredicted camera: dropped at the next batch
    got = images.batch([cams[0], cams[1], cams[3]])
    assert not images.pending
    for cam_index, image in zip((0, 1, 3), got):
        assert image.device == device
        assert torch.equal(image.cpu(), host[cam_index])
