"""Ground-truth photos for training: decoded once into uint8 on the host, uploaded per batch to the rank's device.

A photo is kept as uint8 [H, W, 3] (a quarter of float32; INRIA 3DGS trains on 8-bit photos too), in pinned
memory when the rank trains on a GPU, and converted to float32 in [0, 1] on the device. On a GPU,
:meth:`GroundTruth.prefetch` starts the next batch's copies on a side stream while the current step computes;
:meth:`GroundTruth.batch` makes the compute stream wait for them. On the CPU the same calls only decode ahead.
Decoding runs on the calling thread (streaming photos from a disk cache, and only each rank's regions, is the
large-scene image pipeline's job).
"""

from __future__ import annotations

import torch

from grendel_py.data.cameras import Camera
from grendel_py.data.dataset import Scene


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A float image in [0, 1] as uint8, rounded to the nearest level."""
    return image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def to_float(image: torch.Tensor) -> torch.Tensor:
    """A uint8 image as float32 in [0, 1]."""
    return image.to(torch.float32).div_(255.0)


class GroundTruth:
    """The training photos of ``scene`` for a rank whose tensors live on ``device``."""

    def __init__(self, scene: Scene, device: torch.device):
        self.scene, self.device = scene, device
        self.host: dict[int, torch.Tensor] = {}
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.pending: dict[int, torch.Tensor] = {}

    def _host(self, camera: Camera) -> torch.Tensor:
        if camera.uid not in self.host:
            image = to_uint8(self.scene.load_image(camera))
            self.host[camera.uid] = image.pin_memory() if self.cuda else image
        return self.host[camera.uid]

    def prefetch(self, cameras: list[Camera]) -> None:
        """Decode the photos of ``cameras`` if needed and, on a GPU, start copying them to the device."""
        for cam in cameras:
            image = self._host(cam)
            if self.cuda and cam.uid not in self.pending:
                with torch.cuda.stream(self.stream):
                    self.pending[cam.uid] = image.to(self.device, non_blocking=True)

    def batch(self, cameras: list[Camera]) -> list[torch.Tensor]:
        """The photos of ``cameras`` on the device, float32 [H, W, 3] in [0, 1]."""
        self.prefetch(cameras)
        if not self.cuda:
            return [to_float(self.host[cam.uid].to(self.device)) for cam in cameras]
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        out = []
        for cam in cameras:
            image = self.pending.pop(cam.uid)
            image.record_stream(current)  # allocated on the side stream, used and freed on this one
            out.append(to_float(image))
        self.pending.clear()  # copies for cameras the sampler did not draw after all (its affinity changed)
        return out
