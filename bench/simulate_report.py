"""Tables and the bytes-vs-balance plot from ``grendel simulate --json`` output.

    grendel simulate --json --fox-model out/fox/run/model.ply > bench/results/simulate.json
    python bench/simulate_report.py bench/results/simulate.json   # writes simulate.md and simulate_pareto.png beside it

Needs matplotlib (``pip install matplotlib``; not a dependency of the package).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from grendel_py.fileio import atomic_open
from grendel_py.simulate import Row, rows_to_markdown


def label(r: Row) -> str:
    if r.assignment != "locality":
        return r.assignment
    return "locality (auto)" if r.tolerance is None else f"locality {r.tolerance:g}"


def plot(rows: list[Row], out: Path) -> None:
    panels = [(8, 8), (8, 32)]
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 4.8))
    markers = {"rows": "s", "balanced": "D", "majority": "^"}
    for ax, (w, b) in zip(axes, panels):
        sel = [r for r in rows if r.scene == "city" and r.world_size == w and r.batch_size == b]
        base = next((r.bytes_per_iter for r in sel if r.ownership == "array-order" and r.assignment == "rows"), None)
        if not sel or not base:
            continue
        for r in sel:
            colour = (
                "tab:red" if r.ownership == "array-order" else ("tab:blue" if r.sampler == "random" else "tab:green")
            )
            ax.scatter(r.balance, r.bytes_per_iter / base, c=colour, marker=markers.get(r.assignment, "o"), s=40)
            if r.ownership != "kd" or r.sampler == "random":
                ax.annotate(
                    label(r),
                    (r.balance, r.bytes_per_iter / base),
                    fontsize=7,
                    xytext=(4, 2),
                    textcoords="offset points",
                )
        ax.axvline(1.05, color="grey", ls=":", lw=1)
        ax.axhline(0.5 if b == w else 1 / 3, color="grey", ls=":", lw=1)
        ax.set_xlabel("balance (max / mean intersections per rank)")
        ax.set_ylabel("bytes / bytes of array-order + rows")
        ax.set_title(f"city, W={w}, batch {b}")
        ax.set_xscale("log")
    handles = [
        plt.Line2D([], [], ls="", marker="o", c=c, label=t)
        for c, t in [
            ("tab:red", "array-order ownership"),
            ("tab:blue", "kd, random batches"),
            ("tab:green", "kd, owner-aware batches"),
        ]
    ]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)


def main(path: str) -> None:
    src = Path(path)
    rows = [Row(**r) for r in json.loads(src.read_text())["rows"]]
    with atomic_open(src.with_suffix(".md"), "w") as f:
        f.write(f"# grendel simulate: tile assignments compared\n\nFrom `{src.name}`.\n\n{rows_to_markdown(rows)}\n")
    plot(rows, src.with_name(src.stem + "_pareto.png"))


if __name__ == "__main__":
    main(sys.argv[1])
