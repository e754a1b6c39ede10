"""What the training run's browser viewer costs: the same run without a viewer, with ``train.viewer_port`` and
nobody connected, and with a client connected that receives everything viser sends (a Python websocket client
that speaks viser's protocol as a browser does; it decodes nothing, so it is a lower bound on a browser's own
work, which runs on another machine anyway).

    python bench/viewer_overhead.py [--images 300] [--every 10] [--repeats 2]

Prints the training loop's seconds of each run and the slowdowns; one process, the demo's synthetic scene.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import viser
from viser import _messages  # private: the message a browser sends first (viser counts a client after it)
from websockets.sync.client import connect

from grendel_py.config import load_config
from grendel_py.data.synthetic import write_synthetic
from grendel_py.parallel.runtime import single_process
from grendel_py.train.loop import train


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
            wxyz=(1.0, 0.0, 0.0, 0.0), position=(0.0, 0.0, -3.0), fov=1.0, near=0.01, far=100.0,
            image_height=480, image_width=640, look_at=(0.0, 0.0, 0.0), up_direction=(0.0, 0.0, 1.0),
        )  # fmt: skip
        with ws:
            ws.send(msgspec.msgpack.encode(camera.as_serializable_dict()))
            while not self._done.is_set():
                try:
                    self.received += len(ws.recv(timeout=0.2))
                except TimeoutError:
                    pass

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(scene: Path, out: Path, images: int, every: int, mode: str) -> dict:
    port = _free_port()
    overrides = [
        f"data.path={scene}", "data.downscale=2", f"train.out={out}", f"train.images={images}", "train.eval_every=0",
        "train.eval_renders=0", "train.checkpoint_every=0", "densify.start_images=50", "densify.every_images=50",
        f"densify.stop_images={images}", f"train.viewer_every={every}",
    ]  # fmt: skip
    if mode != "off":
        overrides.append(f"train.viewer_port={port}")
    browser = Browser(port) if mode == "watched" else None
    if browser is not None:
        browser.start()
    try:
        result = train(load_config(None, overrides), single_process("cpu"))
    finally:
        if browser is not None:
            browser.stop()
    return {"mode": mode, "train_seconds": result["train_seconds"], "gaussians": result["num_gaussians"],
            "received_bytes": 0 if browser is None else browser.received}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--every", type=int, default=10, help="train.viewer_every")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene"
        write_synthetic(scene, "object", seed=0)
        rows = []
        for r in range(args.repeats):
            for mode in ("off", "unwatched", "watched"):
                rows.append(run(scene, Path(tmp) / f"{mode}{r}", args.images, args.every, mode))
                print(json.dumps(rows[-1]), flush=True)
    best = {m: min(r["train_seconds"] for r in rows if r["mode"] == m) for m in ("off", "unwatched", "watched")}
    print(json.dumps({"best_seconds": best, "unwatched_slowdown": best["unwatched"] / best["off"] - 1,
                      "watched_slowdown": best["watched"] / best["off"] - 1}))  # fmt: skip


if __name__ == "__main__":
    main()
