"""The picture of a plan: predicted speedup against W (with the ideal line) and the busiest rank's peak memory
against W (with the device's memory), side by side; W on a log2 axis."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

SIZE = (360, 240)
MARGIN = 40


def _chart(
    xs: list[int], series: list[tuple[list[float], tuple[int, int, int]]], label: str, limit: float | None
) -> Image.Image:
    """Lines of ``series`` (values, colour) over ``xs`` (log2), from 0 to their largest value (or ``limit``,
    drawn dashed, when larger), with ``label`` above."""
    font = ImageFont.load_default()
    width, height = SIZE
    chart = Image.new("RGB", SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(chart)
    top = max([v for values, _ in series for v in values if math.isfinite(v)] + [limit or 0.0, 1e-30])
    lo, hi = math.log2(xs[0]), math.log2(xs[-1]) if len(xs) > 1 else math.log2(xs[0]) + 1

    def at(x: float, y: float) -> tuple[float, float]:
        return (MARGIN + (width - 2 * MARGIN) * (math.log2(x) - lo) / (hi - lo),
                height - MARGIN - (height - 2 * MARGIN) * y / top)  # fmt: skip

    draw.text((8, 6), label, fill=(0, 0, 0), font=font)
    draw.line([at(xs[0], 0), (width - MARGIN, at(xs[0], 0)[1])], fill=(0, 0, 0))
    draw.text((4, MARGIN - 6), f"{top:.3g}", fill=(0, 0, 0), font=font)
    for x in xs:
        px, py = at(x, 0)
        draw.text((px - 4, py + 4), str(x), fill=(0, 0, 0), font=font)
    if limit is not None:
        y = at(xs[0], limit)[1]
        for x0 in range(MARGIN, width - MARGIN, 8):
            draw.line([(x0, y), (x0 + 4, y)], fill=(200, 0, 0))
    for values, colour in series:
        points = [at(x, v) for x, v in zip(xs, values) if math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    draw.text((8, height - 16), "W (ranks)", fill=(0, 0, 0), font=font)
    return chart


def plan_picture(rows: list[dict], memory_bytes: int, title: str) -> Image.Image:
    """Speedup over the first W's time (blue; grey: W, the ideal) and peak GB per rank (blue; red dashes: the device's memory) of the
    plan's ``rows`` (:func:`grendel_py.plan.planner.plan`), under ``title``."""
    xs = [r["world_size"] for r in rows]
    # against the first W, taken as ideal (W = 1: the plain speedup)
    speedup = [xs[0] * rows[0]["seconds_per_iteration"] / r["seconds_per_iteration"] for r in rows]
    peak = [r["peak_bytes_per_rank"]["peak"] / 1e9 for r in rows]
    panels = [
        _chart(xs, [([float(x) for x in xs], (170, 170, 170)), (speedup, (30, 90, 200))], "predicted speedup", None),
        _chart(xs, [(peak, (30, 90, 200))], "peak GB per rank", memory_bytes / 1e9 if memory_bytes else None),
    ]
    font = ImageFont.load_default()
    out = Image.new("RGB", (sum(p.width for p in panels), SIZE[1] + 20), (255, 255, 255))
    ImageDraw.Draw(out).text((6, 4), title, fill=(0, 0, 0), font=font)
    for i, p in enumerate(panels):
        out.paste(p, (i * SIZE[0], 20))
    return out
