"""A device's cost profile: the seconds of each stage of the training step as a linear function of the counts
that drive it (the counts :class:`grendel_py.parallel.stage_clock.StageClock` takes, all per rank and
iteration), fitted to measured iterations (``bench/calibrate.py``) and kept as JSON.

A stage's seconds are ``fixed + sum(per[count] * counts[count])`` over its drivers (:data:`DRIVERS`), the
coefficients non-negative (least squares under that constraint: a stage never gets faster with more work).
The communication inside the exchange and halo stages is not part of these: on W > 1 ranks it is modelled
by the link (:mod:`grendel_py.plan.links`), so a profile measured on one device plans any number of them.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from grendel_py.errors import InputError
from grendel_py.fileio import atomic_open, os_problem
from grendel_py.plan.links import Link

DRIVERS: dict[str, tuple[str, ...]] = {
    "project": ("gaussian_cameras", "visible", "sh_terms"),
    "table": ("listed_pairs", "tiles"),
    "exchange": ("visible", "received"),
    "rasterize": ("pairs", "padded_pairs", "chunks", "pixels"),
    "halo": ("pixels", "halo_pixels"),
    "loss": ("loss_pixels",),
    "loss_backward": ("loss_pixels",),
    "rasterize_backward": ("pairs", "padded_pairs", "chunks", "pixels"),
    "exchange_backward": ("visible", "received"),
    "project_backward": ("gaussian_cameras", "visible", "sh_terms"),
    "adam": ("gaussians",),
}
"""Each stage of the step (:data:`grendel_py.parallel.stage_clock.FORWARD`, ``BACKWARD``, then Adam) and the
counts its seconds grow with."""


MEMORY_DRIVERS = ("visible", "received", "pairs", "chunk_pairs", "pixels", "loss_pixels", "halo_pixels", "bytes_sent")
"""The counts a rank's transient memory in a step grows with (its projected and received splats, their
intersections, the compositor's largest chunk, its pixels, its regions and the halo's, and the splats it
packs for others)."""


def state_bytes(sh_degree: int) -> int:
    """Bytes a Gaussian holds on its rank between steps and through them: its parameters (3 + 3 + 4 + 1
    floats and 3 per SH coefficient), their gradients and Adam's two moments (float32 each: 16 bytes a
    parameter), its id (int64) and densification's statistics (gradient sum, count, largest radius)."""
    floats = 3 + 3 + 4 + 1 + 3 * (sh_degree + 1) ** 2
    return 16 * floats + 8 + 12


PHOTO_BYTES = 12
"""Per pixel of a rank's regions: the photo's crop as float32 (3 channels) while the loss holds it."""


@dataclass(frozen=True)
class StageCost:
    """``fixed`` seconds plus ``per[count]`` seconds per unit of each driving count."""

    fixed: float
    per: dict[str, float]

    def seconds(self, counts: dict[str, float]) -> float:
        return self.fixed + sum(c * counts[name] for name, c in self.per.items())


@dataclass(frozen=True)
class Profile:
    """The stage costs of one device (``device``: its name, ``backend``: the renderer measured, ``threads``:
    the CPU threads of the process measured), with the commit and the samples' spread they were fitted at
    (``fit``: per stage, the largest relative error of the fit over its samples); ``links``: links measured
    on the same machine, by name; ``transient``: a step's transient bytes as a linear function of
    :data:`MEMORY_DRIVERS` (None: not measured); ``memory_bytes``: the device's memory."""

    device: str
    backend: str
    commit: str
    stages: dict[str, StageCost]
    fit: dict[str, float]
    threads: int = 0
    links: dict[str, Link] = field(default_factory=dict)
    transient: StageCost | None = None
    memory_bytes: int = 0

    def peak_bytes(self, counts: dict[str, float], sh_degree: int) -> dict[str, float]:
        """One rank's peak memory in a step, in its parts: the shard's state (:func:`state_bytes`), the
        step's transient bytes (the fitted ``transient`` cost, in bytes) and the photos' crops."""
        parts = {
            "state": counts["gaussians"] * state_bytes(sh_degree),
            "transient": self.transient.seconds(counts) if self.transient else math.nan,
            "photos": counts["loss_pixels"] * PHOTO_BYTES,
        }
        return {**parts, "peak": sum(parts.values())}

    def stage_seconds(self, counts: dict[str, float]) -> dict[str, float]:
        """Predicted seconds of every stage for one rank's ``counts``."""
        return {stage: cost.seconds(counts) for stage, cost in self.stages.items()}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    def save(self, path: Path) -> None:
        with atomic_open(path, "w") as f:
            f.write(self.to_json())

    @staticmethod
    def load(path: Path) -> Profile:
        """A profile written by :meth:`save`; :class:`InputError` naming the file and the problem otherwise."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except OSError as e:
            raise InputError(path, f"cannot read the profile: {os_problem(e)}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(path, f"not a JSON profile ({e})") from None
        try:
            stages = {name: StageCost(float(s["fixed"]), {k: float(v) for k, v in s["per"].items()})
                      for name, s in raw["stages"].items()}  # fmt: skip
            links = {name: Link(**link) for name, link in raw.get("links", {}).items()}
            t = raw.get("transient")
            transient = None if t is None else StageCost(float(t["fixed"]), {k: float(v) for k, v in t["per"].items()})
            profile = Profile(
                str(raw["device"]), str(raw["backend"]), str(raw["commit"]), stages, dict(raw["fit"]),
                int(raw.get("threads", 0)), links, transient, int(raw.get("memory_bytes", 0)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(path, f"not a cost profile (bench/calibrate.py writes them): {e!r}") from None
        missing = sorted(set(DRIVERS) - set(stages))
        if missing:
            raise InputError(path, f"the profile has no cost for the stages {', '.join(missing)}")
        for name, cost in stages.items():
            values = [cost.fixed, *cost.per.values()]
            if not all(math.isfinite(v) and v >= 0 for v in values):
                raise InputError(path, f"stage {name!r} has a negative or non-finite coefficient")
        return profile


def fit_stage(
    stage: str, samples: list[tuple[dict[str, float], dict[str, float]]], drivers: tuple[str, ...] | None = None
) -> tuple[StageCost, float]:
    """The stage's cost fitted to ``samples`` (each: counts, seconds per stage) by non-negative least squares,
    each sample weighted by 1 / its seconds (so that small and large sizes count alike: relative errors), and
    the largest relative error left. ``drivers``: the counts it grows with (default: :data:`DRIVERS`'s)."""
    drivers = DRIVERS[stage] if drivers is None else drivers
    # the samples that measured the stage and took its counts (a rank of several does not read its own
    # splats' pairs to the host: the table's fit takes one rank's samples)
    rows = [(c, s[stage]) for c, s in samples if stage in s and all(d in c for d in drivers)]
    if len(rows) < len(drivers) + 1:
        raise ValueError(f"stage {stage!r}: {len(rows)} samples cannot fit {len(drivers) + 1} coefficients")
    design = np.array([[1.0, *(counts[d] for d in drivers)] for counts, _ in rows])
    target = np.array([t for _, t in rows])
    weight = 1.0 / np.maximum(target, 1e-9)
    coef, _ = nnls(design * weight[:, None], target * weight)
    worst = float(np.max(np.abs(design @ coef - target) * weight))
    return StageCost(float(coef[0]), {d: float(c) for d, c in zip(drivers, coef[1:])}), worst


def fit_profile(
    samples: list[tuple[dict[str, float], dict[str, float]]],
    device: str | None,
    backend: str,
    commit: str,
    threads: int = 0,
    links: dict[str, Link] | None = None,
    memory_bytes: int = 0,
) -> Profile:
    """Every stage of :data:`DRIVERS` fitted to ``samples`` (:func:`fit_stage`); and, where samples measured
    it (a ``transient`` entry among their seconds, in bytes), the transient memory on :data:`MEMORY_DRIVERS`."""
    stages, fit = {}, {}
    for stage in DRIVERS:
        stages[stage], fit[stage] = fit_stage(stage, samples)
    transient = None
    if sum("transient" in s for _, s in samples) > len(MEMORY_DRIVERS):
        transient, fit["transient"] = fit_stage("transient", samples, MEMORY_DRIVERS)
    name = device or platform.processor() or platform.machine()
    return Profile(name, backend, commit, stages, fit, threads, dict(links or {}), transient, memory_bytes)


def fit_link(name: str, samples: list[tuple[float, float]], source: str) -> Link:
    """A link's latency and bandwidth fitted to (bytes, seconds) samples of one collective call each."""
    design = np.array([[1.0, b] for b, _ in samples])
    target = np.array([t for _, t in samples])
    weight = 1.0 / np.maximum(target, 1e-9)
    (latency, per_byte), _ = nnls(design * weight[:, None], target * weight)
    return Link(name, float(latency), float(1.0 / per_byte) if per_byte > 0 else math.inf, source)
