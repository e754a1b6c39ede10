"""A space-filling curve through the tiles of an image: any run of consecutive tiles along it is a compact,
connected region, so a tile partitioner can cut 1-D ranges and still hand out 2-D regions.

The curve is the generalized Hilbert curve ("gilbert", J. Cervený) for any ``nx`` x ``ny`` grid: it starts
at tile (0, 0), ends at a corner on the longer side, and every step moves to a 4-neighbour, except for one
possible diagonal step when the grid's long side is odd and its short side even (then a range that spans that
step joins its two halves at a corner).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _walk(out: list[int], nx: int, x: int, y: int, ax: int, ay: int, bx: int, by: int) -> None:
    """Append row-major tile ids of the rectangle spanned from (x, y) by the major axis (ax, ay) and the minor
    axis (bx, by), in curve order."""
    w, h = abs(ax + ay), abs(bx + by)
    dax, day, dbx, dby = _sign(ax), _sign(ay), _sign(bx), _sign(by)
    if h == 1:
        for _ in range(w):
            out.append(y * nx + x)
            x, y = x + dax, y + day
        return
    if w == 1:
        for _ in range(h):
            out.append(y * nx + x)
            x, y = x + dbx, y + dby
        return
    ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
    w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
    if 2 * w > 3 * h:  # long rectangle: two halves along the major axis
        if w2 % 2 and w > 2:
            ax2, ay2 = ax2 + dax, ay2 + day
        _walk(out, nx, x, y, ax2, ay2, bx, by)
        _walk(out, nx, x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
        return
    if h2 % 2 and h > 2:
        bx2, by2 = bx2 + dbx, by2 + dby
    # Up the first half of the minor axis, across the whole major axis, back down.
    _walk(out, nx, x, y, bx2, by2, ax2, ay2)
    _walk(out, nx, x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
    _walk(out, nx, x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2))


@lru_cache(maxsize=64)
def _curve(nx: int, ny: int) -> np.ndarray:
    out: list[int] = []
    if nx >= ny:
        _walk(out, nx, 0, 0, nx, 0, 0, ny)
    else:
        _walk(out, nx, 0, 0, 0, ny, nx, 0)
    order = np.asarray(out, dtype=np.int64)
    order.setflags(write=False)
    return order


def curve_order(nx: int, ny: int) -> np.ndarray:
    """Row-major tile ids of an ``nx`` x ``ny`` grid in curve order, int64 [nx * ny] (read-only, cached)."""
    if nx < 1 or ny < 1:
        raise ValueError(f"curve_order needs a grid of at least 1 x 1 tiles, got {nx} x {ny}")
    return _curve(nx, ny)
