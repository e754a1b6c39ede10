"""Torch operations per forward + backward of ``render`` on the CPU A/B's scenes, by the module that issued them.

Usage: python bench/op_counts.py [--cases render,yardstick] [--out FILE.json]

A CPU shared with other jobs pays for every operation that torch runs on its thread pool: each such operation
ends at a barrier that waits for the thread the other job holds up (bench/results/ab_cpu/README.md). So
besides all aten operations this counts the ``parallel`` ones: those touching a tensor of more than 32,768
elements (torch's grain size, below which an element-wise CPU kernel runs on one thread), leaving out views
and allocations, which do no work. Each operation is credited to the innermost ``grendel_py`` function on the
Python stack (``autograd`` when none: torch's own backward formulas). Counts, not times: they do not depend on
the machine's load. The scenes are bench/ab_cpu.py's (20,000 Gaussians, 256 x 256, after one warm-up step).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ab_cpu import REPO, _commit, _scene  # the A/B's scenes, so that both count the same work

GRAIN = 32768
_aten = torch.ops.aten
NO_WORK = {
    _aten.view, _aten.unsqueeze, _aten.select, _aten.slice, _aten.expand, _aten.t, _aten.transpose,
    _aten.permute, _aten.squeeze, _aten.as_strided, _aten.detach, _aten._unsafe_view, _aten.alias,
    _aten.empty, _aten.empty_like, _aten.new_empty, _aten.empty_strided,
}  # fmt: skip


class _Counter(TorchDispatchMode):
    """All aten operations, and the parallel-sized ones per issuing grendel_py function."""

    def __init__(self):
        super().__init__()
        self.all = 0
        self.parallel: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.all += 1
        sizes = [t.numel() for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        if func.overloadpacket not in NO_WORK and max(sizes, default=0) > GRAIN:
            frames = [f for f in traceback.extract_stack() if "/grendel_py/" in f.filename]
            where = f"{Path(frames[-1].filename).stem}.{frames[-1].name}" if frames else "autograd"
            self.parallel[where] += 1
        return out


def count(kind: str) -> dict:
    """Operations of one forward + backward of ``render`` on the scene ``kind``."""
    from grendel_py.render import render

    gaussians, camera = _scene(kind)
    params = [gaussians.means, gaussians.log_scales, gaussians.quats, gaussians.opacity_logits]
    params += [gaussians.sh0, gaussians.shN]
    for p in params:
        p.requires_grad_(True)

    def step() -> None:
        result = render(gaussians, camera)
        (result.image.sum() + result.alpha.sum()).backward()

    step()
    with _Counter() as counter:
        step()
    return {
        "all": counter.all,
        "parallel": sum(counter.parallel.values()),
        "parallel_by_function": dict(counter.parallel.most_common()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="render,yardstick")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = {
        "commit": _commit(REPO),
        "torch": torch.__version__,
        "grain": GRAIN,
        "cases": {kind: count(kind) for kind in args.cases.split(",")},
    }
    for kind, got in result["cases"].items():
        print(f"{kind}: {got['all']} operations, {got['parallel']} parallel-sized")
        for where, n in list(got["parallel_by_function"].items())[:8]:
            print(f"  {n:5d}  {where}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
