"""Seconds per iteration from every rank's counts (:mod:`grendel_py.plan.counts`), a device's stage costs
(:mod:`grendel_py.plan.profile`) and a link.

The step is a sequence of segments, each some stages of local work followed by a collective that no rank
leaves before every rank has entered it (bulk-synchronous): a segment takes its slowest rank's work, then the
collective's time on its busiest rank. An iteration is the sum of its segments (:data:`SEGMENTS`). A
collective takes the link's latency per call plus its busiest rank's bytes (the larger of those it sends and
those it receives) over the link's bandwidth; over a :class:`~grendel_py.plan.links.Fabric` of several nodes,
the link across nodes' latency and the longer of the bytes within nodes over the link inside and the bytes
across over the link across (the splat exchange's and its gradients' crossing bytes counted; the tile
table's and the halo's all taken as crossing, an upper bound). One rank runs no collective, and the stages that hold one
(:data:`INSIDE`: the exchange, the halo and the exchange's backward) do nothing there. Ranks that share fewer devices
than they are (CPU ranks on fewer cores, two ranks on one GPU) take at least their work spread over them.
"""

from __future__ import annotations

from dataclasses import dataclass

from grendel_py.plan.links import Fabric, Link
from grendel_py.plan.profile import Profile
from partition.balancer import SPLAT_BYTES

GRAD_BYTES = 36  # its gradient on the way back (9 float32)
HALO_BYTES = 12  # a halo pixel (3 float32), and its gradient back
TILE_TABLE_BYTES = 16  # per tile: the count and the majority key (int64 each), all-reduced


@dataclass(frozen=True)
class Segment:
    """Stages of local work, then a collective (None: none) whose bytes per rank the function gives."""

    stages: tuple[str, ...]
    collective: str | None
    calls: int = 1


SEGMENTS = (
    Segment(("project", "table"), "tile table", 2),  # two all-reduces: counts, then majority keys
    Segment(("exchange",), "splats", 2),  # the counts, then the splats
    Segment(("rasterize", "halo"), "halo", 1),
    Segment(("loss", "loss_backward"), "halo gradients", 1),
    Segment(("rasterize_backward",), "splat gradients", 1),
    Segment(("exchange_backward", "project_backward", "adam"), "statistics", 1),  # the logged numbers
)


def collective_bytes(name: str, counts: dict[str, float], world: int) -> float:
    """The larger of what a rank with ``counts`` sends and receives in the collective ``name``."""
    if name == "tile table":  # a ring all-reduce sends and receives 2 (W - 1) / W of the buffer
        return 2 * (world - 1) / world * counts["tiles"] * TILE_TABLE_BYTES
    if name == "splats":
        return max(counts["bytes_sent"], counts["bytes_received"])
    if name in ("halo", "halo gradients"):
        return counts["halo_pixels"] * HALO_BYTES  # a rank sends about what it receives
    if name == "splat gradients":
        return max(counts["bytes_sent"], counts["bytes_received"]) / SPLAT_BYTES * GRAD_BYTES
    return 0.0  # the statistics: a few numbers


@dataclass
class Prediction:
    """Seconds per iteration and where they go: per segment, its slowest rank's work and its collective;
    per rank, its local work; bytes on the links per iteration, summed over ranks."""

    seconds: float
    segments: list[dict]
    rank_seconds: list[float]
    link_bytes: float

    @property
    def balance(self) -> float:
        """The slowest rank's local work over the mean (1.0: perfectly balanced)."""
        mean = sum(self.rank_seconds) / len(self.rank_seconds)
        return max(self.rank_seconds) / mean if mean > 0 else 1.0


INSIDE = {"exchange": ("splats", 2), "halo": ("halo", 1), "exchange_backward": ("splat gradients", 1)}
"""The stages whose clock time holds a collective on W > 1 ranks besides their local work (the collective and
its calls): calibration takes the link's time out of them before fitting their local work."""


def crossing_bytes(name: str, counts: dict[str, float], world: int) -> float:
    """The part of :func:`collective_bytes` that crosses nodes (module docstring)."""
    if name == "splats":
        return max(counts["bytes_sent_across"], counts["bytes_received_across"])
    if name == "splat gradients":
        return max(counts["bytes_sent_across"], counts["bytes_received_across"]) / SPLAT_BYTES * GRAD_BYTES
    return collective_bytes(name, counts, world)


def collective_seconds(name: str, calls: int, counts: list[dict[str, float]], link: Link | Fabric) -> float:
    """Seconds of ``calls`` calls of the collective ``name`` among ranks with ``counts`` over ``link``: its
    busiest rank's bytes (module docstring)."""
    world = len(counts)
    inside = max(collective_bytes(name, c, world) for c in counts)
    if isinstance(link, Link):
        return calls * link.latency + inside / link.bytes_per_s
    if world <= link.ranks_per_node:
        return calls * link.inside.latency + inside / link.inside.bytes_per_s
    across = max(crossing_bytes(name, c, world) for c in counts)
    within = max(collective_bytes(name, c, world) - crossing_bytes(name, c, world) for c in counts)
    return calls * link.across.latency + max(within / link.inside.bytes_per_s, across / link.across.bytes_per_s)


def local_seconds(stage: str, seconds: float, counts: dict[str, float], world: int, link: Link) -> float:
    """A stage's clock ``seconds`` on a rank of ``world`` less its collective's modelled time (:data:`INSIDE`;
    never below 0)."""
    name, calls = INSIDE[stage]
    return max(0.0, seconds - calls * link.latency - collective_bytes(name, counts, world) / link.bytes_per_s)


def predict(
    counts: list[dict[str, float]], profile: Profile, link: Link | Fabric | None, devices: int | None = None
) -> Prediction:
    """The iteration of ``counts`` (one dict per rank) on devices of ``profile`` joined by ``link`` (None on
    one rank). ``devices``: how many devices the ranks share (default: one each); where fewer, a segment takes
    at least the ranks' work spread evenly over them (the ranks time-share a device: CPU cores taken in turn,
    or a GPU shared)."""
    world = len(counts)
    devices = world if devices is None else devices
    if world > 1 and link is None:
        raise ValueError("more than one rank needs a link to model their collectives")
    stage_seconds = [profile.stage_seconds(c) for c in counts]
    if world == 1:
        stage_seconds = [{k: 0.0 if k in INSIDE else v for k, v in s.items()} for s in stage_seconds]
    segments, total, link_bytes = [], 0.0, 0.0
    for seg in SEGMENTS:
        work = [sum(s[stage] for stage in seg.stages) for s in stage_seconds]
        comm = 0.0
        if world > 1 and seg.collective is not None:
            comm = collective_seconds(seg.collective, seg.calls, counts, link)
            link_bytes += sum(collective_bytes(seg.collective, c, world) for c in counts)
        slowest = max(max(work), sum(work) / devices)
        segments.append({"stages": list(seg.stages), "work": slowest, "collective": seg.collective, "comm": comm})
        total += slowest + comm
    return Prediction(total, segments, [sum(s.values()) for s in stage_seconds], link_bytes)
