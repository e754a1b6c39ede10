"""Pictures of the distributed work: tiles tinted by rank with each rank's work, shard boxes over a view."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from grendel_py.data.cameras import Camera
from grendel_py.model.gaussians import Gaussians
from grendel_py.parallel.runtime import single_process
from grendel_py.pictures import (
    _clip_rect,
    rank_colours,
    save_boxes,
    save_picture,
    shard_boxes,
    shard_picture,
    tile_picture,
)
from partition.tiles import TileGrid
from tests.dist_util import run_ranks


def _camera(width: int = 64, height: int = 48) -> Camera:
    """Looks along +z from the origin (world = camera coordinates)."""
    f = 0.8 * width
    return Camera(
        0,
        "cam.png",
        width,
        height,
        f,
        f,
        width / 2,
        height / 2,
        torch.eye(3, dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
    )


def test_rank_colours_are_distinct_and_stable() -> None:
    for w in (1, 10, 11, 64):
        colours = rank_colours(w)
        assert colours.shape == (w, 3) and colours.dtype == np.uint8
        assert len({tuple(c) for c in colours}) == w
    assert np.array_equal(rank_colours(64)[:8], rank_colours(8))


def test_tile_picture_tints_each_tile_with_its_rank_and_draws_the_work() -> None:
    grid = TileGrid(64, 48)  # 4 x 3 tiles; the picture is scaled by ceil(360 / 48) = 8
    ranks = np.array([0, 0, 1, 1] * 3)
    image = np.full((48, 64, 3), 0.5)
    picture = np.asarray(tile_picture(image, grid, ranks, np.array([10.0, 30.0]), "view"))
    colours = rank_colours(2).astype(np.float64)
    band, s = 20, 8
    for rank, tx in ((0, 0), (1, 3)):
        centre = picture[band + 8 * s, (tx * 16 + 8) * s].astype(np.float64)
        assert np.abs(centre - (0.55 * 127.5 + 0.45 * colours[rank])).max() <= 1.0
    assert np.array_equal(picture[band + 8 * s, 32 * s], [0, 0, 0])  # the border between the two ranks
    assert not np.array_equal(picture[band + 8 * s, 16 * s], [0, 0, 0])  # none inside a rank's tiles
    # The chart: rank 1's bar (3x the work) is 3x as tall as rank 0's, each in its rank's colour.
    chart = picture[band:, 64 * s + 8 :]
    heights = [int(np.all(chart[:, 8 + r * 36 + 10] == colours[r].astype(np.uint8), axis=1).sum()) for r in (0, 1)]
    assert heights[1] == pytest.approx(3 * heights[0], abs=2)
    with pytest.raises(ValueError):
        tile_picture(image, grid, ranks[:-1], np.ones(2), "view")


def test_segments_are_clipped_to_the_picture() -> None:
    assert _clip_rect(np.array([-50.0, 5.0]), np.array([150.0, 5.0]), 100, 20) == [(-1.0, 5.0), (101.0, 5.0)]
    assert _clip_rect(np.array([-50.0, -5.0]), np.array([-10.0, -50.0]), 100, 20) is None
    a, b = _clip_rect(np.array([50.0, 10.0]), np.array([1e9, 10.0 + 1e9]), 100, 20)
    assert a == (50.0, 10.0) and b[1] == pytest.approx(21.0) and b[0] == pytest.approx(61.0)


def _coloured(picture: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.argwhere(np.all(picture == colour, axis=-1))


def test_shard_picture_draws_boxes_in_front_and_clips_those_behind() -> None:
    cam = _camera()
    image = np.zeros((48, 64, 3))
    colours = rank_colours(3)
    boxes = np.array(
        [
            [[-0.5, -0.5, 2.0], [0.5, 0.5, 3.0]],  # in front, in view
            [[-1.0, -1.0, -3.0], [1.0, 1.0, -2.0]],  # behind the camera: nothing
            [[-0.2, -0.2, -1.0], [0.2, 0.2, 1.0]],  # through the camera plane: clipped, no error
        ]
    )
    picture = np.asarray(shard_picture(image, cam, boxes, np.array([5, 6, 7]), "view"))[20:, : 64 * 8]
    front = _coloured(picture, colours[0])
    # The near face's corners (z = 2) project to u = 32 +- 0.8 * 64 * 0.25 = 32 +- 12.8 (x8 in the picture).
    assert front[:, 1].min() == pytest.approx((32 - 12.8) * 8, abs=2) and front[:, 1].max() == pytest.approx(
        (32 + 12.8) * 8, abs=2
    )
    assert len(_coloured(picture, colours[1])) == 0
    assert len(_coloured(picture, colours[2])) > 0


def test_shard_boxes_span_the_centre_quantiles(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(1001, 3, generator=gen)
    means[0] = 1e6  # a floater: outside the 1%-99% box
    shard = Gaussians.from_points(means, None, 0)
    boxes, counts = shard_boxes(shard, single_process("cpu"))
    assert counts.tolist() == [1001]
    ordered = np.sort(means.double().numpy(), axis=0)
    assert np.array_equal(boxes[0, 0], ordered[10]) and np.array_equal(boxes[0, 1], ordered[990])
    save_boxes(boxes, counts, tmp_path / "shards.json")
    saved = json.loads((tmp_path / "shards.json").read_text())
    assert saved["ranks"][0]["gaussians"] == 1001 and saved["ranks"][0]["high"] == ordered[990].tolist()
    save_picture(shard_picture(np.zeros((48, 64, 3)), _camera(), boxes, counts, "v"), tmp_path / "shards.png")
    assert Image.open(tmp_path / "shards.png").format == "PNG"


def _boxes_job(ctx) -> tuple[list, list]:
    """Rank r holds 3 + r points at x = 10 r, 10 r + 1, ...; rank 1's shard is empty."""
    n = 3 + ctx.rank
    shard = Gaussians.from_points(torch.tensor([[10.0 * ctx.rank + i, 0.0, 0.0] for i in range(n)]), None, 0)
    if ctx.rank == 1:
        shard = shard.select(torch.zeros(0, dtype=torch.int64))
    boxes, counts = shard_boxes(shard, ctx)
    return boxes.tolist(), counts.tolist()


def test_shard_boxes_are_gathered_from_every_rank() -> None:
    results = run_ranks(3, _boxes_job)
    boxes, counts = np.array(results[0][0]), results[0][1]
    for other in results[1:]:  # every rank gets every box
        assert np.array_equal(np.array(other[0]), boxes, equal_nan=True) and other[1] == counts
    assert counts == [3, 0, 5]
    assert boxes[0, 0, 0] == 0.0 and boxes[0, 1, 0] == 2.0 and boxes[2, 0, 0] == 20.0 and boxes[2, 1, 0] == 24.0
    assert np.all(np.isnan(boxes[1]))
