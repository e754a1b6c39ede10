"""A browser viewer of a model (viser, the ``viewer`` extra): the Gaussians a budget allows
(:mod:`grendel_py.view_splats`), the training cameras as frusta (a batch's in colour) and a few scalars.

viser serves from its own thread; this class only sends it what changed. Nothing is encoded for the browser
while nobody is connected (:attr:`Viewer.clients`), and a browser that connects later gets the last model
shown.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from grendel_py.data.cameras import Camera
from grendel_py.errors import InputError
from grendel_py.view_splats import ViewSplats

CAMERA_COLOUR = (160, 160, 160)
BATCH_COLOUR = (230, 60, 40)


def _viser():
    try:
        import viser
    except ImportError:
        raise InputError(None, "the viewer needs viser: pip install 'grendel_py[viewer]'") from None
    return viser


class Viewer:
    """A viser server at ``host:port`` (port 0: any free one; see :attr:`port`) showing ``cameras``."""

    def __init__(self, port: int, cameras: list[Camera], host: str = "0.0.0.0"):
        viser = _viser()
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self._splats: Any = None
        self._frusta: dict[int, Any] = {}
        self._batch: list[int] = []
        self._numbers: dict[str, Any] = {}
        if cameras:
            self._add_cameras(viser, cameras)

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def clients(self) -> int:
        """Browsers connected now."""
        return len(self.server.get_clients())

    def _add_cameras(self, viser, cameras: list[Camera]) -> None:
        centres = np.stack([c.center.numpy() for c in cameras])
        spread = float(np.median(np.linalg.norm(centres - np.median(centres, axis=0), axis=1))) if len(cameras) > 1 else 1.0
        ups = np.stack([-c.R.numpy()[1] for c in cameras])  # the cameras' up (-y of OpenCV) in the world
        up = ups.mean(axis=0)
        if np.linalg.norm(up) > 1e-6:
            self.server.scene.set_up_direction(tuple(float(v) for v in up / np.linalg.norm(up)))
        for cam in cameras:
            c2w = cam.R.numpy().T
            self._frusta[cam.uid] = self.server.scene.add_camera_frustum(
                f"/cameras/{cam.uid:05d}", fov=2.0 * math.atan(cam.height / (2.0 * cam.fy)), aspect=cam.width / cam.height,
                scale=0.05 * max(spread, 1e-6), color=CAMERA_COLOUR,
                wxyz=viser.transforms.SO3.from_matrix(c2w).wxyz, position=cam.center.numpy(),
            )  # fmt: skip

    def show_model(self, splats: ViewSplats) -> None:
        """Show these Gaussians (replacing the last ones shown)."""
        args = (splats["centers"], splats["covariances"], splats["rgbs"], splats["opacities"])
        if self._splats is None:
            self._splats = self.server.scene.add_gaussian_splats("/model", *args)
        else:
            self._splats.set_gaussians(*args)

    def show_batch(self, uids: list[int]) -> None:
        """Colour the frusta of the cameras ``uids`` (the current batch), the others grey."""
        for uid in self._batch:
            self._frusta[uid].color = CAMERA_COLOUR
        self._batch = [u for u in uids if u in self._frusta]
        for uid in self._batch:
            self._frusta[uid].color = BATCH_COLOUR

    def show_scalars(self, values: dict[str, float]) -> None:
        """One read-only number per name, updated in place."""
        for name, value in values.items():
            if name not in self._numbers:
                self._numbers[name] = self.server.gui.add_number(name, float(value), disabled=True)
            else:
                self._numbers[name].value = float(value)

    def close(self) -> None:
        self.server.stop()
