"""The load balancer: a cost model calibrated online, and the tile assignment it picks every iteration.

Modelled time of rank r in an iteration:

    seconds_per_work[r] * work_r  +  bytes_per_remote * remote_r / link_bytes_per_s

``work_r`` is the work of its tiles (intersections + ``base_cost`` per tile, exact before rasterizing, from the
all-reduced :class:`~partition.assign.TileTable`); ``remote_r`` the intersections of its tiles whose splats it
did not own (so the exchange has to bring them). Two constants are calibrated from what ranks measure, with
exponential smoothing:

- ``seconds_per_work[r]``: rank r's measured rasterize seconds / its work (ranks may differ in speed);
- ``bytes_per_remote``: bytes the exchange moved / remote intersections of the plan (a splat that covers
  several tiles of one rank crosses the wire once, so this is below the bytes of one splat).

Every rank feeds the same all-gathered measurements, so every rank holds the same model and computes the same
assignment. With ``tolerance=None`` the ``locality`` strategy tries every tolerance of ``TOLERANCES`` and keeps
the plan of least modelled iteration time (max over ranks): balance traded for locality only when the link is
slow enough for it to pay.
"""

from __future__ import annotations

import numpy as np

from partition.assign import (
    STRATEGIES,
    Assignment,
    TileTable,
    balanced_assignment,
    locality_assignments,
    majority_assignment,
    rows_assignment,
)

TOLERANCES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
SPLAT_BYTES = 56  # one splat on the wire: 12 float32 + 1 int64 (grendel_py.parallel.exchange)
_PRIOR_BYTES_PER_REMOTE = SPLAT_BYTES / 4.0  # before the first measurement: a splat covers about 4 tiles


class TileBalancer:
    """Strategy ``strategy`` (one of :data:`partition.assign.STRATEGIES`) for ``world_size`` ranks.

    ``tolerance``: ``locality``'s cap on work above the fair share (None: chosen per iteration by the model).
    ``link_bytes_per_s``: the per-rank link bandwidth of the model. ``seconds_per_work``: the prior speed of
    every rank. ``calibrate``: False keeps both constants at their priors, which makes the assignment a
    function of the model and batch alone, so runs (and resumed runs) repeat bit for bit. ``smoothing``:
    weight of a new measurement.
    """

    def __init__(
        self,
        strategy: str,
        world_size: int,
        tolerance: float | None = None,
        link_bytes_per_s: float = 12.5e9,
        seconds_per_work: float = 1e-8,
        calibrate: bool = True,
        base_cost: float = 1.0,
        smoothing: float = 0.2,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"tile assignment {strategy!r} is not one of {', '.join(STRATEGIES)}")
        if tolerance is not None and not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0 or None (automatic), got {tolerance}")
        if not (link_bytes_per_s > 0 and seconds_per_work > 0 and 0 < smoothing <= 1):
            raise ValueError("link bandwidth and seconds per work must be > 0, smoothing in (0, 1]")
        self.strategy, self.world_size, self.tolerance = strategy, world_size, tolerance
        self.link_bytes_per_s, self.calibrate, self.base_cost, self.smoothing = (
            link_bytes_per_s,
            calibrate,
            base_cost,
            smoothing,
        )
        self.seconds_per_work = np.full(world_size, float(seconds_per_work))
        self.bytes_per_remote = _PRIOR_BYTES_PER_REMOTE
        self.chosen_tolerance: float | None = None

    def work(self, table: TileTable) -> np.ndarray:
        """Work of every tile, flat float64."""
        return table.intersections + self.base_cost

    def rank_seconds(self, plan: Assignment, table: TileTable) -> np.ndarray:
        """Modelled seconds of each rank, float64 [W]."""
        compute = plan.work(self.work(table)) * self.seconds_per_work
        return compute + plan.remote(table) * self.bytes_per_remote / self.link_bytes_per_s

    def plan(self, table: TileTable) -> Assignment:
        """This iteration's assignment."""
        w, s = self.world_size, self.seconds_per_work
        if self.strategy == "rows":
            return rows_assignment(list(table.grids), w)
        if self.strategy == "balanced":
            return balanced_assignment(table, w, s, self.base_cost)
        if self.strategy == "majority":
            return majority_assignment(table, w, self.base_cost)
        tolerances = TOLERANCES if self.tolerance is None else (self.tolerance,)
        plans = locality_assignments(table, w, list(tolerances), s, self.base_cost)
        times = [float(self.rank_seconds(p, table).max()) for p in plans]
        best = int(np.argmin(times))  # first minimum: the tightest balance among equals
        self.chosen_tolerance = tolerances[best]
        return plans[best]

    def observe(
        self, plan: Assignment, table: TileTable, bytes_moved: float, raster_seconds: np.ndarray | None
    ) -> None:
        """Calibrate (unless ``calibrate`` is False) from one iteration: the bytes the exchange moved (all
        ranks) and every rank's measured rasterize seconds [W] (None: timing not measured)."""
        if not self.calibrate:
            return
        a = self.smoothing
        remote = float(plan.remote(table).sum())
        if remote > 0 and bytes_moved > 0:
            self.bytes_per_remote = (1 - a) * self.bytes_per_remote + a * bytes_moved / remote
        if raster_seconds is not None:
            work = plan.work(self.work(table))
            ok = (work > 0) & (np.asarray(raster_seconds) > 0)
            rate = np.where(ok, np.asarray(raster_seconds) / np.maximum(work, 1e-30), self.seconds_per_work)
            self.seconds_per_work = (1 - a) * self.seconds_per_work + a * rate
