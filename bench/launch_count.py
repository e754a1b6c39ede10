"""Torch operations and kernel launches per training iteration on the kernel path, counted on the CPU: the
count tests/test_launch_budget.py holds to its budget (a real ``train()`` with the CUDA kernels on the host
launcher, the step's pieces cut as at 1M Gaussians and 1080p), by site, with the commit it was measured at.

    python bench/launch_count.py [--batch 1,4] [--world W] [--out FILE.json]

``--world W``: W gloo ranks, each counting its own; the JSON gives every rank's total and the busiest rank's
sites. Also every rank's host synchronisations per iteration, and the busiest rank's sites of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import provenance  # noqa: E402
from grendel_py.synth.writer import write_synthetic  # noqa: E402
from tests.dist_util import run_ranks  # noqa: E402
from tests.test_launch_budget import Counts, _cut_as_at_scale, per_iteration  # noqa: E402


def _rank_count(ctx, scene: str, out: str, batch: int) -> Counts:
    """One rank's operations and launches, and host synchronisations, per iteration, the pieces cut in its own
    process."""
    with pytest.MonkeyPatch.context() as patch:
        _cut_as_at_scale(patch, Path(scene))
        return per_iteration(Path(scene), Path(out), batch, ctx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="1,4", help="batch sizes, comma-separated")
    ap.add_argument("--world", type=int, default=1, help="ranks (gloo processes)")
    ap.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene"
        write_synthetic(scene, "object", seed=2)
        for batch in (int(b) for b in args.batch.split(",")):
            if args.world == 1:
                with pytest.MonkeyPatch.context() as patch:
                    _cut_as_at_scale(patch, scene)
                    ranks = [per_iteration(scene, Path(tmp) / f"b{batch}", batch)]
            else:
                ranks = run_ranks(args.world, _rank_count, str(scene), str(Path(tmp) / f"b{batch}"), batch, timeout=900)
            busiest = max(ranks, key=lambda r: sum(r.work.values()))
            sites = busiest.work
            kernels = sum(n for site, n in sites.items() if site.startswith("kernel "))
            runs.append(
                {
                    "batch": batch,
                    "world_size": args.world,
                    "per_iteration_by_rank": [sum(r.work.values()) for r in ranks],
                    "per_iteration": sum(sites.values()),
                    "kernel_launches": kernels,
                    "torch_operations": sum(sites.values()) - kernels,
                    "host_syncs_by_rank": [sum(r.syncs.values()) for r in ranks],
                    "host_syncs_by_site": busiest.syncs,
                    "by_site": dict(sorted(sites.items(), key=lambda kv: -kv[1])),
                }
            )
            print(
                f"batch {batch}: {runs[-1]['per_iteration']:g} per iteration, host syncs {runs[-1]['host_syncs_by_rank']}",
                file=sys.stderr,
            )
    text = json.dumps({**provenance(), "runs": runs}, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
