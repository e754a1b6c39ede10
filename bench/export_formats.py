"""Size and time of each export format for trained models: the model is read once (any format), then for each
of the formats ``grendel export`` writes, the seconds to write it (one process, as ``grendel export`` does;
best of ``--repeats``), its size, and the seconds to read it back.

    python bench/export_formats.py out/demo/run/model.ply out/fox/run/model.ply [--json F]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from grendel_py.model.splat_formats import FILE_NAMES, FORMATS, read_model
from grendel_py.parallel.export import write_merged
from grendel_py.parallel.runtime import single_process


def measure(model_path: Path, repeats: int) -> list[dict]:
    model = read_model(model_path)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            out = Path(tmp) / FILE_NAMES[fmt]
            writes, reads = [], []
            for _ in range(repeats):
                tic = time.perf_counter()
                write_merged(out, model, single_process("cpu"), fmt)
                writes.append(time.perf_counter() - tic)
                tic = time.perf_counter()
                back = read_model(out)
                reads.append(time.perf_counter() - tic)
                assert len(back) == len(model)
            rows.append(
                {
                    "model": str(model_path),
                    "gaussians": len(model),
                    "sh_degree": model.sh_degree,
                    "format": fmt,
                    "bytes": out.stat().st_size,
                    "write_seconds": min(writes),
                    "read_seconds": min(reads),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    rows = [row for path in args.models for row in measure(path, args.repeats)]
    print("| model | Gaussians | format | size | write s | read s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['gaussians']:,} | {r['format']} | {r['bytes'] / 1e6:.2f} MB | {r['write_seconds']:.3f} | {r['read_seconds']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
