"""What watches a training run without taking part in its algorithm: the progress bar, the TensorBoard scalars
and the browser viewer. The loop tells each :class:`Observer` what every iteration did (:class:`StepReport`),
each evaluation's metrics and the final result, and closes it however the run ends.

An observer may need every rank to act after a step (the viewer gathers the model from all ranks when a
browser watches): its :meth:`Observer.request` rides in the step's statistics all-reduce, so every rank learns
of it with no extra collective, and the sum reaches every rank's observers as ``StepReport.requested``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from grendel_py.config import TrainConfig
from grendel_py.data.cameras import Camera
from grendel_py.model.gaussians import Gaussians
from grendel_py.model.schedule import crossed
from grendel_py.parallel.runtime import DistContext
from grendel_py.train.event_file import EventFile
from grendel_py.view_splats import gather_view_splats
from grendel_py.viewer import Viewer


@dataclass
class StepReport:
    """One iteration: the images seen ``before`` and after it (``images``), its ``cameras``, its ``stats``
    (loss, psnr, gaussians, exchange_bytes, moved_gaussians, balance, step_seconds; data_seconds, this rank's
    own), the images per second since the run (re)started (``rate``), whether a redistribution moved
    Gaussians, this rank's ``shard``, and whether an observer on some rank requested the ranks' part."""

    before: int
    images: int
    cameras: list[Camera]
    stats: dict[str, float]
    rate: float
    redistributed: bool
    shard: Gaussians
    requested: bool


class Observer:
    """Does nothing; subclasses take the calls they need. Every rank's observers see every call."""

    def request(self) -> float:
        """Before the step's statistics all-reduce: > 0 to ask every rank for its part after this step."""
        return 0.0

    def on_step(self, report: StepReport) -> None:
        """After an iteration (before a stop signal ends the run, and before an evaluation)."""

    def on_evaluation(self, images: int, metrics: dict, pictures: Path) -> None:
        """After an evaluation during training at ``images``, its ``metrics`` and its pictures' folder."""

    def on_end(self, images: int, result: dict) -> None:
        """After the final outputs were written, with the run's metrics."""

    def close(self) -> None:
        """However the run ends."""


class ProgressBar(Observer):
    """tqdm's bar on rank 0 (off elsewhere, and where stdout is not a terminal): images, and the loss, PSNR,
    Gaussians, bytes exchanged, balance and images per second of the last step."""

    def __init__(self, total: int, initial: int, ctx: DistContext):
        self.distributed = ctx.distributed
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc="train",
            unit="img",
            disable=None if ctx.is_main else True,
            dynamic_ncols=True,
        )

    def on_step(self, report: StepReport) -> None:
        self.bar.update(len(report.cameras))
        stats = report.stats
        shown = {"loss": f"{stats['loss']:.4f}", "psnr": f"{stats['psnr']:.2f}", "n": int(stats["gaussians"])}
        if self.distributed:
            shown["xfer"] = f"{stats['exchange_bytes'] / 2**20:.2f}MiB"
            shown["bal"] = f"{stats['balance']:.2f}"
        shown["img_s"] = f"{report.rate:.1f}"
        self.bar.set_postfix(shown)

    def close(self) -> None:
        self.bar.close()


class ProgressLines(Observer):
    """Plain progress lines for a log that is not a terminal (a batch job's output file, nohup, a pipe), where
    tqdm's bar switches itself off: one line every ``every`` images or every ``seconds``, whichever comes
    later, to ``out``: images, loss, PSNR, Gaussians, images per second and the time left at that rate."""

    def __init__(
        self,
        total: int,
        initial: int,
        every: int,
        out: TextIO = sys.stdout,
        clock: Callable[[], float] = time.monotonic,
        seconds: float = 60.0,
    ):
        self.total, self.every, self.out, self.clock, self.seconds = total, every, out, clock, seconds
        self.last_images, self.last_time = initial, clock()

    def on_step(self, report: StepReport) -> None:
        now = self.clock()
        if report.images - self.last_images < self.every or now - self.last_time < self.seconds:
            return
        self.last_images, self.last_time = report.images, now
        s = report.stats
        left = (self.total - report.images) / report.rate if report.rate > 0 else math.inf
        print(
            f"train: {report.images}/{self.total} images, loss {s['loss']:.4f}, PSNR {s['psnr']:.2f} dB, "
            f"{int(s['gaussians']):,} Gaussians, {report.rate:.1f} images/s, {_duration(left)} left",
            file=self.out,
            flush=True,
        )


def _duration(seconds: float) -> str:
    """``seconds`` as 1h02m, 3m05s or 42s."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Scalars(Observer):
    """TensorBoard scalars in ``folder`` (rank 0 only: make it there; :class:`EventFile`): every step's statistics every
    ``log_every`` images (``train/``), the Gaussians moved by redistributions (``dist/``), the evaluations'
    PSNR and SSIM (``test/``); events after ``seen`` images, from a run that stopped, are dropped."""

    def __init__(self, folder: Path, seen: int, log_every: int):
        self.writer = EventFile(folder, purge_step=seen + 1)
        self.log_every = log_every

    def on_step(self, report: StepReport) -> None:
        if crossed(report.before, report.images, self.log_every):
            for key, value in {**report.stats, "images_per_s": report.rate}.items():
                self.writer.scalar(f"train/{key}", value, report.images)
            self.writer.flush()
        if report.redistributed:
            self.writer.scalar("dist/moved_gaussians", report.stats["moved_gaussians"], report.images)

    def on_evaluation(self, images: int, metrics: dict, pictures: Path) -> None:
        self._test(images, metrics)

    def on_end(self, images: int, result: dict) -> None:
        if result["test"]:
            self._test(images, result["test"])

    def _test(self, images: int, metrics: dict) -> None:
        self.writer.scalar("test/psnr", metrics["psnr"], images)
        self.writer.scalar("test/ssim", metrics["ssim"], images)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ViewerFeed(Observer):
    """The browser viewer of a run (``train.viewer_port`` on ``train.viewer_host``), on every rank: rank 0 serves
    it (its training ``cameras`` as frusta) and prints where; while a browser is connected, every rank sends its share of
    ``train.viewer_budget`` Gaussians when one connects and every ``train.viewer_every`` images, and rank 0
    shows the batch, the scalars and each evaluation's pictures of the work."""

    def __init__(self, t: TrainConfig, cameras: list[Camera], ctx: DistContext):
        self.viewer = Viewer(t.viewer_port, cameras, t.viewer_host) if ctx.is_main else None
        if self.viewer is not None:  # viser takes the next free port when another job holds this one
            moved = "" if self.viewer.port == t.viewer_port else f" (port {t.viewer_port} is taken: another job's?)"
            print(f"viewer: http://{t.viewer_host}:{self.viewer.port}{moved}", file=sys.stderr, flush=True)
        self.every, self.budget, self.ctx = t.viewer_every, t.viewer_budget, ctx
        self.was_watched = False

    def request(self) -> float:
        return float(self.viewer is not None and self.viewer.clients > 0)  # rank 0 tells the others

    def on_step(self, report: StepReport) -> None:
        watched = report.requested
        if watched and (not self.was_watched or crossed(report.before, report.images, self.every)):
            # every rank sends its share; a new browser sees the model at once
            splats = gather_view_splats(report.shard, int(report.stats["gaussians"]), self.budget, self.ctx)
            if self.viewer is not None:
                self.viewer.show_model(splats)
        self.was_watched = watched
        if self.viewer is not None and watched:
            self.viewer.show_batch([c.uid for c in report.cameras])
            stats = report.stats
            self.viewer.show_scalars(
                {"images": report.images, "gaussians": stats["gaussians"], "loss": stats["loss"], "psnr": stats["psnr"]}
            )

    def on_evaluation(self, images: int, metrics: dict, pictures: Path) -> None:
        if self.viewer is not None:
            self.viewer.show_work(pictures, images)

    def close(self) -> None:
        if self.viewer is not None:
            self.viewer.close()
