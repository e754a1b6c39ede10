"""What the training run's browser viewer costs: the same run without a viewer, with ``train.viewer_port`` and
nobody connected, and with a client connected that receives everything viser sends (a Python websocket client
that speaks viser's protocol as a browser does; it decodes nothing, so it is a lower bound on a browser's own
work, which runs on another machine anyway).

    python bench/viewer_overhead.py [--images 300] [--every 10] [--repeats 2] [--world 1] [--gaussians 0]

The ranks are ``grendel train`` processes started with the torchrun variables (one thread each); the demo's
synthetic object scene at downscale 2. ``--gaussians N``: start from N random Gaussians and keep N (MCMC
densification with budget N, so the model's size is fixed), else the default densification grows the
model. Prints each run's training loop seconds (``metrics.json``) and the slowdowns.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import viser
from viser import _messages  # private: the message a browser sends first (viser counts a client after it)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from grendel_py.synth.writer import write_synthetic


class Browser(threading.Thread):
    """Connects to ``port`` once the server is up and receives until :meth:`stop`; counts bytes received."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.received, self._done = port, 0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                ws = connect(f"ws://127.0.0.1:{self.port}", subprotocols=[f"viser-v{viser.__version__}"], max_size=None)
                break
            except OSError:
                time.sleep(0.2)
        else:
            return
        camera = _messages.ViewerCameraMessage(
            wxyz=(1.0, 0.0, 0.0, 0.0),
            position=(0.0, 0.0, -3.0),
            fov=1.0,
            near=0.01,
            far=100.0,
            image_height=480,
            image_width=640,
            look_at=(0.0, 0.0, 0.0),
            up_direction=(0.0, 0.0, 1.0),
        )
        with ws:
            ws.send(msgspec.msgpack.encode(camera.as_serializable_dict()))
            while not self._done.is_set():
                try:
                    self.received += len(ws.recv(timeout=0.2))
                except TimeoutError:
                    pass
                except ConnectionClosed:  # the run ended and its viewer with it
                    return

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(scene: Path, out: Path, args: argparse.Namespace, mode: str) -> dict:
    port = _free_port()
    overrides = [
        f"data.path={scene}",
        "data.downscale=2",
        f"train.out={out}",
        f"train.images={args.images}",
        "train.eval_every=0",
        "train.eval_renders=0",
        "train.checkpoint_every=0",
        f"train.viewer_every={args.every}",
    ]
    if args.gaussians:
        overrides += [
            "model.init=random",
            f"model.random_points={args.gaussians}",
            "densify.strategy=mcmc",
            f"densify.budget={args.gaussians}",
            "densify.start_images=50",
            "densify.every_images=50",
            f"densify.stop_images={args.images}",
        ]
    else:
        overrides += ["densify.start_images=50", "densify.every_images=50", f"densify.stop_images={args.images}"]
    if mode != "off":
        overrides.append(f"train.viewer_port={port}")
    master = str(_free_port())
    procs = []
    for rank in range(args.world):
        env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        if args.world > 1:
            env.update(
                RANK=str(rank),
                WORLD_SIZE=str(args.world),
                LOCAL_RANK=str(rank),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=master,
            )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "grendel_py", "train", *overrides],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    browser = Browser(port) if mode == "watched" else None
    if browser is not None:
        browser.start()
    try:
        errors = [p.communicate()[1] for p in procs]
    finally:
        if browser is not None:
            browser.stop()
    if any(p.returncode for p in procs):
        sys.exit(f"a rank failed: {errors[0][-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "mode": mode,
        "world": args.world,
        "train_seconds": metrics["train_seconds"],
        "gaussians": metrics["num_gaussians"],
        "received_bytes": 0 if browser is None else browser.received,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--every", type=int, default=10, help="train.viewer_every")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--world", type=int, default=1, help="ranks")
    p.add_argument("--gaussians", type=int, default=0, help="a fixed-size model of this many random Gaussians")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene"
        write_synthetic(scene, "object", seed=0)
        rows = []
        for r in range(args.repeats):
            for mode in ("off", "unwatched", "watched"):
                rows.append(run(scene, Path(tmp) / f"{mode}{r}", args, mode))
                print(json.dumps(rows[-1]), flush=True)
    best = {m: min(r["train_seconds"] for r in rows if r["mode"] == m) for m in ("off", "unwatched", "watched")}
    print(
        json.dumps(
            {
                "best_seconds": best,
                "unwatched_slowdown": best["unwatched"] / best["off"] - 1,
                "watched_slowdown": best["watched"] / best["off"] - 1,
            }
        )
    )


if __name__ == "__main__":
    main()
