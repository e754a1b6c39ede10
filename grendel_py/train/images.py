"""Ground-truth photos for training: read from the node's photo cache one region at a time, on the rank's device.

Photos come from :class:`grendel_py.data.photo_cache.PhotoCache` (decoded once per node into uint8 files on
local disk, memory-mapped), so what a rank holds does not grow with the number of photos. A batch is a list
of :class:`Photo`: a photo's shape and, once the iteration's tile plan says which pixels the rank owns, the
pixels of a region (its tiles plus the SSIM halo), copied out of the map (through pinned memory when the
rank trains on a GPU), converted to float32 in [0, 1] on the device and, for a photo with alpha, composited
over the background its camera is rendered on in that batch (:func:`~grendel_py.data.dataset.over_background`). :meth:`GroundTruth.prefetch` runs on
a background thread: for the next batch (the sampler's ``peek_batch``) it decodes the photos missing from
the cache and asks the OS to read them ahead, while the current step computes. ``wait_seconds`` adds up the
time the training thread spent waiting for photos (the prefetch it needed, and its region reads).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from grendel_py.counter_rng import hashed_uniform
from grendel_py.data.cameras import Camera
from grendel_py.data.dataset import over_background
from grendel_py.data.photo_cache import PhotoCache, to_uint8

__all__ = ["GroundTruth", "Photo", "random_backgrounds", "to_float", "to_uint8"]

BACKGROUND_STREAM = 0x6267
"""Mixed into the run's seed for the random backgrounds, apart from the other counter-based draws."""


def random_backgrounds(seed: int, first_image: int, count: int, device: torch.device) -> torch.Tensor:
    """Random RGB backgrounds, float32 [count, 3] in (0, 1) on ``device``, for the run's images
    ``first_image``, ``first_image + 1``, ...: counter-based draws from (seed, image number), so they do not
    depend on the ranks, and a resumed run draws those the uninterrupted one would have."""
    images = torch.arange(first_image, first_image + count, device=device)
    return hashed_uniform(images, seed ^ BACKGROUND_STREAM, 3).float()


def to_float(image: torch.Tensor) -> torch.Tensor:
    """A uint8 image as float32 in [0, 1], the same bits on every device: a multiplication by 1/255, since
    CUDA divides by a scalar that way (CPU divides, which differs in the last bit for some values); one
    operation (the bytes are converted to float32 as they are multiplied)."""
    return image.mul(1.0 / 255.0)


class Photo:
    """A training photo that reads its pixels when sliced: ``photo[y0:y1, x0:x1]`` is float32 [h, w, 3] on
    the rank's device (slices within the photo, steps of 1), over ``background`` [3] where the photo has
    alpha. The last region read is kept, since the loss and the logged metrics ask for the same one."""

    def __init__(self, source: GroundTruth, camera: Camera, background: torch.Tensor):
        self.source, self.camera, self.background = source, camera, background
        self.shape = (camera.height, camera.width, 3)
        self._last: tuple[tuple[int, int, int, int], torch.Tensor] | None = None

    def __getitem__(self, index: tuple[slice, slice]) -> torch.Tensor:
        ys, xs = index
        key = (
            ys.start or 0,
            self.shape[0] if ys.stop is None else ys.stop,
            xs.start or 0,
            self.shape[1] if xs.stop is None else xs.stop,
        )
        if self._last is None or self._last[0] != key:
            self._last = (key, over_background(self.source.read(self.camera, *key), self.background))
        return self._last[1]


class GroundTruth:
    """The training photos in ``cache`` for a rank whose tensors live on ``device``; those with alpha are
    composited over ``background`` (RGB in [0, 1]) unless a batch gives its own."""

    def __init__(self, cache: PhotoCache, device: torch.device, background: torch.Tensor):
        self.cache, self.device = cache, device
        self.background = background.to(device, torch.float32)
        self.cuda = device.type == "cuda"
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="photos")
        self.ahead: Future | None = None
        self.wait_seconds = 0.0

    def prefetch(self, cameras: list[Camera]) -> None:
        """Start making the photos of ``cameras`` ready on the background thread (decode if missing, read ahead)."""
        self.ahead = self.pool.submit(lambda: [self.cache.warm(c) for c in cameras])

    def batch(self, cameras: list[Camera], backgrounds: torch.Tensor | None = None) -> list[Photo]:
        """The photos of ``cameras``, after the prefetch in flight (if any) has finished; camera b's over
        ``backgrounds[b]`` ([B, 3] on the device) when given."""
        tic = time.perf_counter()
        if self.ahead is not None:
            self.ahead.result()  # raises what the background thread raised
            self.ahead = None
        self.wait_seconds += time.perf_counter() - tic
        if backgrounds is None:
            return [self.photo(cam) for cam in cameras]
        return [Photo(self, cam, bg) for cam, bg in zip(cameras, backgrounds)]

    def photo(self, camera: Camera) -> Photo:
        """The camera's photo over the default background, read a region at a time when sliced."""
        return Photo(self, camera, self.background)

    def read(self, camera: Camera, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        """Rows y0:y1, columns x0:x1 of the camera's cached photo as float32 [h, w, C] on the device (C = 4:
        premultiplied colour and alpha)."""
        tic = time.perf_counter()
        pixels = torch.from_numpy(self.cache.region(camera, y0, y1, x0, x1))
        if self.cuda:
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        out = to_float(pixels.to(self.device))
        self.wait_seconds += time.perf_counter() - tic
        return out

    def close(self) -> None:
        """Stop the background thread (after its current prefetch)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
