"""A screenshot of the live viewer during a 2-rank run (README's picture).

The run folder RUN (one with a checkpoint, e.g. a finished ``grendel train --config configs/fox.yaml``) is
copied and continued for ``--images`` more images on two CPU ranks (gloo; the ranks are started with the
torchrun variables, as a scheduler would) with ``train.viewer_port``. Headless Chromium (software WebGL) loads
the viewer until it shows the numbers of the run and an evaluation's pictures of the distributed work, then
takes the screenshot; the ranks are stopped with SIGTERM.

    python bench/viewer_screenshot.py out/fox/run bench/results/viewer_fox_w2.png --images 400
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = [
    "--headless=new",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--hide-scrollbars",
]


def _chromium(url: str, profile: Path, size: str, budget_ms: int, *args: str) -> str:
    cmd = [
        shutil.which("chromium") or "chromium",
        *CHROMIUM,
        f"--user-data-dir={profile}",
        f"--window-size={size}",
        f"--virtual-time-budget={budget_ms}",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a run folder with a checkpoint")
    ap.add_argument("out", type=Path, help="the screenshot (PNG)")
    ap.add_argument("--images", type=int, default=400, help="images to train beyond the checkpoint")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--size", default="1280,800", help="browser window, W,H")
    ap.add_argument("--budget-ms", type=int, default=20000, help="page time before the screenshot")
    args = ap.parse_args()

    from grendel_py.train.checkpoint import complete_checkpoints

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("tb", "renders", "work"))
        seen = complete_checkpoints(run)[-1].images_seen
        words = [
            sys.executable,
            "-m",
            "grendel_py",
            "train",
            "--resume",
            str(run),
            f"train.images={seen + args.images}",
            f"train.eval_every={args.eval_every}",
            "train.eval_renders=2",
            f"train.viewer_port={args.port}",
            "train.viewer_every=20",
            "train.checkpoint_every=0",
        ]
        procs = []
        for rank in range(2):
            env = dict(
                os.environ,
                RANK=str(rank),
                WORLD_SIZE="2",
                LOCAL_RANK=str(rank),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(args.port + 1),
                OMP_NUM_THREADS="1",
                CUDA_VISIBLE_DEVICES="",
            )
            procs.append(subprocess.Popen(words, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        url = f"http://127.0.0.1:{args.port}/"
        try:
            start = time.monotonic()
            while True:
                if any(p.poll() is not None for p in procs):
                    sys.exit(f"a rank ended early: {procs[0].stderr.read()[-3000:]}")
                try:
                    urllib.request.urlopen(url, timeout=5).close()
                    dom = _chromium(url, Path(tmp) / "profile", args.size, 8000, "--dump-dom")
                    if "Work after" in dom:
                        break
                except OSError:
                    pass
                time.sleep(5.0)
            print(f"viewer showing an evaluation's work after {time.monotonic() - start:.0f} s", flush=True)
            _chromium(url, Path(tmp) / "profile", args.size, args.budget_ms, f"--screenshot={args.out.resolve()}")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            codes = [p.wait(timeout=600) for p in procs]
        print(f"wrote {args.out}; ranks exited {codes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
