"""Plain progress lines where stdout is not a terminal (issue 39): one every ``train.log_every`` images or every
minute, whichever comes later, with images, loss, PSNR, Gaussians, images per second and the time left."""

from __future__ import annotations

import io

from grendel_py.train.observers import ProgressLines, StepReport


def _report(before: int, images: int, rate: float) -> StepReport:
    stats = {"loss": 0.0312, "psnr": 27.456, "gaussians": 60_000.0}
    return StepReport(before, images, [], stats, rate, False, None, False)


def test_a_line_every_log_every_images_or_minute_whichever_later() -> None:
    now = [0.0]
    out = io.StringIO()
    lines = ProgressLines(3000, 0, 100, out=out, clock=lambda: now[0])
    for images, t in ((50, 70.0), (100, 30.0), (150, 90.0), (200, 100.0), (300, 130.0), (400, 200.0)):
        now[0] = t
        lines.on_step(_report(images - 50, images, 2.0))
    # 50 images at 70 s: too few images; 100 at 30 s: too soon; 150 at 90 s: both passed; 200 at 100 s: too
    # soon after 90; 300 at 130 s: too soon; 400 at 200 s: both
    assert out.getvalue().splitlines() == [
        "train: 150/3000 images, loss 0.0312, PSNR 27.46 dB, 60,000 Gaussians, 2.0 images/s, 23m45s left",
        "train: 400/3000 images, loss 0.0312, PSNR 27.46 dB, 60,000 Gaussians, 2.0 images/s, 21m40s left",
    ]


def test_a_resumed_run_counts_from_where_it_stood() -> None:
    now = [0.0]
    out = io.StringIO()
    lines = ProgressLines(10_000, 5_000, 100, out=out, clock=lambda: now[0])
    now[0] = 61.0
    lines.on_step(_report(5_050, 5_060, 0.0))  # 60 images since the resume: not yet
    lines.on_step(_report(5_090, 5_100, 0.0))
    assert (
        out.getvalue()
        == "train: 5100/10000 images, loss 0.0312, PSNR 27.46 dB, 60,000 Gaussians, 0.0 images/s, ? left\n"
    )
