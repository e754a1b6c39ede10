"""The links between ranks the cost model knows: presets for GPU clusters (figures from vendors' datasheets, as
leads) and links measured on a machine (``bench/calibrate.py --link-world 2``, kept in its profile)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    """What a collective costs: ``latency`` seconds per call, ``bytes_per_s`` per rank and direction;
    ``source``: where the figures come from."""

    name: str
    latency: float
    bytes_per_s: float
    source: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Fabric:
    """Ranks in nodes of ``ranks_per_node``: ``inside`` joins the ranks of a node, ``across`` the nodes."""

    inside: Link
    across: Link
    ranks_per_node: int

    def __str__(self) -> str:
        return f"{self.inside.name} within nodes of {self.ranks_per_node}, {self.across.name} across"


LINKS = {
    "nvlink4": Link(
        "nvlink4",
        20e-6,
        450e9,
        "NVLink 4 (H100/H200 SXM): 18 links x 50 GB/s = 900 GB/s per GPU both directions together (NVIDIA H100 and "
        "H200 datasheets), 450 GB/s each way; about 20 us per NCCL all-to-all call within a node (nccl-tests' "
        "small-message times are of that order): leads, not measurements here",
    ),
    "ndr": Link(
        "ndr",
        30e-6,
        50e9,
        "NDR InfiniBand, one 400 Gb/s port per GPU (as in DGX H100/H200): 50 GB/s each way; about 30 us per "
        "NCCL call across nodes: leads, not measurements here",
    ),
    "100gbe": Link(
        "100gbe",
        50e-6,
        12.5e9,
        "100 Gb Ethernet: 12.5 GB/s each way; about 50 us per call over TCP: leads, not measurements here",
    ),
}
