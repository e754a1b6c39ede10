"""A browser viewer of a model (viser, the ``viewer`` extra): the Gaussians a budget allows
(:mod:`grendel_py.view_splats`), the training cameras as frusta (a batch's in colour; the view opens from the
first one), a few scalars, and the pictures of the distributed work of the last evaluation
(:mod:`grendel_py.pictures`: tile ownership per view, the shards' boxes in 3D).

viser serves from its own thread; this class only sends it what changed. Nothing is encoded for the browser
while nobody is connected (:attr:`Viewer.clients`), and a browser that connects later gets the last model
shown.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from grendel_py.data.cameras import Camera
from grendel_py.errors import InputError
from grendel_py.pictures import rank_colours
from grendel_py.view_splats import ViewSplats

CAMERA_COLOUR = (160, 160, 160)
BATCH_COLOUR = (230, 60, 40)
BACK_OFF = 0.5  # the view opens this far behind the first camera, as a fraction of its distance to the target


def _viser():
    try:
        import viser
    except ImportError:
        raise InputError(None, "the viewer needs viser: pip install 'grendel_py[viewer]'") from None
    return viser


class Viewer:
    """A viser server at ``host:port`` (port 0: any free one; see :attr:`port`) showing ``cameras``; the default
    host, 127.0.0.1, lets in this machine only (viser has no access control: anyone who reaches the port sees
    the model)."""

    def __init__(self, port: int, cameras: list[Camera], host: str = "127.0.0.1"):
        viser = _viser()
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self._splats: Any = None
        self._frusta: dict[int, Any] = {}
        self._batch: list[int] = []
        self._numbers: dict[str, Any] = {}
        self._work: list[Any] = []  # what show_work added last: GUI and scene handles
        if cameras:
            self._add_cameras(viser, cameras)
            self._open_from(cameras[0], cameras)

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def clients(self) -> int:
        """Browsers connected now."""
        return len(self.server.get_clients())

    def _add_cameras(self, viser, cameras: list[Camera]) -> None:
        spread = _spread(cameras)
        ups = np.stack([-c.R.numpy()[1] for c in cameras])  # the cameras' up (-y of OpenCV) in the world
        up = ups.mean(axis=0)
        if np.linalg.norm(up) > 1e-6:
            self.server.scene.set_up_direction(tuple(float(v) for v in up / np.linalg.norm(up)))
        for cam in cameras:
            c2w = cam.R.numpy().T
            self._frusta[cam.uid] = self.server.scene.add_camera_frustum(
                f"/cameras/{cam.uid:05d}",
                fov=2.0 * math.atan(cam.height / (2.0 * cam.fy)),
                aspect=cam.width / cam.height,
                scale=0.05 * spread,
                thickness=1.5,
                thickness_units="screen",
                color=CAMERA_COLOUR,
                wxyz=viser.transforms.SO3.from_matrix(c2w).wxyz,
                position=cam.center.numpy(),
            )

    def _open_from(self, camera: Camera, cameras: list[Camera]) -> None:
        """Open the browser's view looking as ``camera`` looks, from a little behind it (``BACK_OFF`` of the
        way to what it looks at, so that the cameras near it do not fill the view), orbiting the point of its
        optical axis nearest to where the cameras look (their axes' least-squares meeting point; for cameras
        that all look one way, a point as far ahead as the cameras are spread)."""
        centre, forward = camera.center.numpy(), camera.R.numpy()[2]
        ahead = _focus_depth(cameras, centre, forward)
        self.server.initial_camera.position = tuple(float(v) for v in centre - BACK_OFF * ahead * forward)
        self.server.initial_camera.look_at = tuple(float(v) for v in centre + ahead * forward)
        self.server.initial_camera.up = tuple(float(v) for v in -camera.R.numpy()[1])
        self.server.initial_camera.fov = 2.0 * math.atan(camera.height / (2.0 * camera.fy))

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

    def show_work(self, folder: Path, images: int) -> None:
        """Show the pictures of the distributed work in ``folder`` (written by an evaluation after ``images``
        images: ``*_tiles.png``, ``shards.json``; see :func:`grendel_py.train.evaluate.evaluate_sharded`) in
        place of the last ones: the tile pictures in the panel, the shards' boxes as wireframes in the
        ranks' colours."""
        from PIL import Image

        for handle in reversed(self._work):  # the panel's images before the panel
            handle.remove()
        self._work = []
        folder = Path(folder)
        tiles = sorted(folder.glob("*_tiles.png"))
        boxes = folder / "shards.json"
        if not tiles and not boxes.exists():
            return
        panel = self.server.gui.add_folder(f"Work after {images:,} images")
        self._work.append(panel)
        with panel:
            for path in tiles:
                with Image.open(path) as picture:
                    self._work.append(
                        self.server.gui.add_image(np.asarray(picture.convert("RGB")), label=path.stem, format="png")
                    )
        if boxes.exists():
            ranks = json.loads(boxes.read_text())["ranks"]
            colours = rank_colours(len(ranks))
            for r in ranks:
                if r["low"] is None:  # an empty shard
                    continue
                low, high = np.array(r["low"]), np.array(r["high"])
                self._work.append(
                    self.server.scene.add_box(
                        f"/shards/rank{r['rank']:03d}",
                        color=tuple(int(c) for c in colours[r["rank"]]),
                        dimensions=tuple(float(v) for v in np.maximum(high - low, 1e-6)),
                        wireframe=True,
                        position=tuple(float(v) for v in (low + high) / 2.0),
                    )
                )

    def close(self) -> None:
        self.server.stop()


def _focus_depth(cameras: list[Camera], centre: np.ndarray, forward: np.ndarray) -> float:
    """How far along ``forward`` from ``centre`` the point nearest to the cameras' optical axes lies (least
    squares over the axes); the cameras' spread when their axes do not meet ahead (parallel or diverging)."""
    a, b = np.zeros((3, 3)), np.zeros(3)
    for cam in cameras:
        d = cam.R.numpy()[2]
        m = np.eye(3) - np.outer(d, d)
        a, b = a + m, b + m @ cam.center.numpy()
    if len(cameras) > 1 and np.linalg.cond(a) < 1e6:
        depth = float((np.linalg.solve(a, b) - centre) @ forward)
        if depth > 0:
            return depth
    return _spread(cameras)


def _spread(cameras: list[Camera]) -> float:
    """The cameras' median distance from their median centre (1 for a single camera or cameras at one place)."""
    centres = np.stack([c.center.numpy() for c in cameras])
    spread = float(np.median(np.linalg.norm(centres - np.median(centres, axis=0), axis=1)))
    return spread if spread > 0 else 1.0
