"""Two models of one scene compared Gaussian by Gaussian: the W-equivalence check of a training run on W ranks
against one rank, shared by tests/test_dist_train.py and bench/gpu_check.py (its ``share`` step).

The short training job that check runs (:data:`EQUIVALENCE_OVERRIDES`: 40 images with densification, pruning
and an opacity reset) is the one whose bounds (:data:`BOUNDS`) were measured; a longer run drifts further (float
noise decides densification thresholds), so the bounds hold for this job, not for any run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from grendel_py.parallel.runtime import single_process
from grendel_py.train.checkpoint import Manifest, find_checkpoint, load_shards

FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")

EQUIVALENCE_OVERRIDES = (
    "data.downscale=4",
    "train.images=40",
    "train.batch_size=2",
    "train.eval_every=0",
    "train.eval_renders=1",
    "train.sh_degree_every=20",
    "model.sh_degree=1",
    "densify.start_images=5",
    "densify.stop_images=35",
    "densify.every_images=10",
    "densify.reset_opacity_every=30",
    "dist.ownership=kd",
    "dist.rebalance_threshold=1.0",
    "dist.calibrate=false",
)
"""The training job of the W-equivalence check (after ``data.path`` and ``train.out``)."""


@dataclass(frozen=True)
class Bounds:
    """How far two runs of :data:`EQUIVALENCE_OVERRIDES` may differ, per field, in differences relative to
    max(1, the field's largest magnitude): the bulk (``quantile`` of the Gaussians) within ``bulk``; at most
    one Gaussian in ``few_per`` beyond ``few``; none beyond ``worst``; test PSNRs within ``psnr_db``."""

    quantile: float = 0.99
    bulk: float = 1e-4
    few: float = 1e-3
    few_per: int = 2000
    worst: float = 1e-2
    psnr_db: float = 0.05


BOUNDS = Bounds()
"""Float error: the bulk within 1e-4. A few faint Gaussians (opacity ~0.01 after the reset) have pixels whose
alpha sits at the 1/255 cutoff, where float noise decides whether the pixel counts, and Adam turns that into
a step of a different size: at most 0.05% of them beyond 1e-3, none beyond 1e-2."""


def checkpoint_model(manifest: Manifest) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The Gaussians of a checkpoint, every rank's shard together, rows by global id: (ids, {field: values})."""
    state = load_shards(manifest, single_process())["optimizer"]
    order = torch.argsort(state["ids"])
    return state["ids"][order], {f: state["params"][f][order] for f in FIELDS}


def differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per field, each Gaussian's largest difference between the models ``a`` and ``b`` (fields of the same
    Gaussians in the same order), relative to max(1, the field's largest magnitude in ``a``): float64 [N]."""
    out = {}
    for field in FIELDS:
        x, y = a[field].double(), b[field].double()
        out[field] = (x - y).abs().reshape(len(x), -1).amax(dim=1) / max(1.0, float(x.abs().max()))
    return out


def compare_runs(run_a: Path, run_b: Path, bounds: Bounds = BOUNDS) -> dict:
    """The final models of the run folders ``run_a`` and ``run_b`` (their last checkpoints), Gaussian by
    Gaussian through their global ids, which do not depend on the ranks (:mod:`grendel_py.parallel.ids`),
    judged by ``bounds``: the counts, per field the bulk quantile, the number beyond ``few``, the worst
    difference and its Gaussian's id; ``ok``, with the failed checks in ``failures`` (PSNRs are the caller's)."""
    (ids_a, a), (ids_b, b) = (checkpoint_model(find_checkpoint(r)) for r in (run_a, run_b))
    report: dict = {"gaussians": [len(ids_a), len(ids_b)], "fields": {}, "failures": []}
    if not torch.equal(ids_a, ids_b):
        report["failures"].append(
            f"different Gaussians: {len(ids_a)} and {len(ids_b)}, "
            f"{len(set(ids_a.tolist()) ^ set(ids_b.tolist()))} ids in one only"
        )
        return {**report, "ok": False}
    for field, diff in differences(a, b).items():
        row = {
            "bulk": float(diff.quantile(bounds.quantile)),
            "beyond_few": int((diff > bounds.few).sum()),
            "worst": float(diff.max()),
            "worst_id": int(ids_a[diff.argmax()]),
        }
        report["fields"][field] = row
        if row["bulk"] > bounds.bulk:
            report["failures"].append(
                f"{field}: {bounds.quantile:.0%} of Gaussians within {row['bulk']:.3g} > {bounds.bulk:g}"
            )
        if row["beyond_few"] > len(ids_a) // bounds.few_per:
            report["failures"].append(
                f"{field}: {row['beyond_few']} Gaussians beyond {bounds.few:g} (at most {len(ids_a) // bounds.few_per})"
            )
        if row["worst"] > bounds.worst:
            report["failures"].append(f"{field}: worst {row['worst']:.3g} > {bounds.worst:g}")
    return {**report, "ok": not report["failures"]}
