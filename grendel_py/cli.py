"""The ``grendel`` command: synth, info, init, render, train and eval.

Every command that reads user input turns :class:`InputError` into one line ``error: <file>: <problem>``
on stderr and exit status 2; outputs are written atomically (nothing half-written is left behind).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from grendel_py.config import Config, load_config
from grendel_py.errors import InputError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (configs/*.yaml); defaults apply when omitted")
    p.epilog = "Config overrides key.sub=value (e.g. data.downscale=2) may follow anywhere after the command."
    p.set_defaults(overrides=[])


def _config(args: argparse.Namespace, data: Path | None = None) -> Config:
    overrides = list(args.overrides)
    if data is not None:
        overrides.append(f"data.path={json.dumps(str(data))}")
    return load_config(args.config, overrides)


def _scene(cfg: Config):
    from grendel_py.data.dataset import scene_from_config

    return scene_from_config(cfg.data)


def cmd_synth(args: argparse.Namespace) -> int:
    from grendel_py.data.synthetic import write_synthetic

    summary = write_synthetic(args.out, preset=args.preset, seed=args.seed)
    print(f"wrote {args.out}: {summary.n_images} images {summary.width}x{summary.height}, {summary.n_points} points")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from grendel_py.data.dataset import describe

    scene = _scene(_config(args, args.data))
    scene.check_images()
    print(json.dumps(describe(scene), indent=2))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from grendel_py.model.initialize import initial_gaussians
    from grendel_py.model.ply import write_ply

    cfg = _config(args, args.data)
    gaussians = initial_gaussians(cfg.model, _scene(cfg), cfg.seed)
    write_ply(args.out, gaussians)
    print(f"wrote {args.out}: {len(gaussians)} Gaussians, SH degree {gaussians.sh_degree}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from grendel_py.model.ply import read_ply
    from grendel_py.outputs import save_png, staged_dir
    from grendel_py.render import render

    cfg = _config(args, args.data)
    scene = _scene(cfg)
    gaussians = read_ply(args.model)
    cameras = {"train": scene.train_cameras, "test": scene.test_cameras, "all": scene.cameras}[args.split]
    background = torch.tensor(cfg.render.background)
    with staged_dir(args.out) as tmp, torch.no_grad():
        for cam in tqdm(cameras, desc="render", unit="view", disable=None):
            image = render(gaussians, cam, background, backend=cfg.render.backend).image
            save_png(image, tmp / f"{cam.uid:05d}_{Path(cam.name).stem}.png")
    print(f"wrote {len(cameras)} images to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from grendel_py.dist.runtime import init_distributed, shutdown
    from grendel_py.train.checkpoint import find_checkpoint, run_dir_of
    from grendel_py.train.loop import train

    resume = None
    if args.resume is not None:
        resume = find_checkpoint(args.resume)
        run = run_dir_of(resume)
        config = args.config or run / "config.yaml"
        cfg = load_config(config, [*args.overrides, f"train.out={json.dumps(str(run))}"])
    else:
        cfg = _config(args)
    if not cfg.data.path:
        raise InputError(args.config, "data.path is not set: give the scene folder, e.g. data.path=out/demo/scene")
    ctx = init_distributed(cfg.dist.timeout_s)
    try:
        result = train(cfg, ctx, resume)
    finally:
        shutdown(ctx)
    if ctx.is_main:
        test = result["test"]
        summary = f"test PSNR {test['psnr']:.2f} dB, SSIM {test['ssim']:.4f}" if test else "no test cameras"
        print(f"trained {result['images']} images on {ctx.world_size} rank(s) in {result['train_seconds']:.0f} s, "
              f"{result['num_gaussians']} Gaussians, {summary}")
        print(f"wrote {cfg.train.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from grendel_py.train.evaluate import run_eval

    result = run_eval(args.model, _config(args, args.data), args.split)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        from grendel_py.fileio import atomic_open

        with atomic_open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grendel", description="Distributed 3D Gaussian Splatting.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic COLMAP scene rendered by an independent ray caster")
    p.add_argument("out", type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--preset", choices=("object", "city"), default="object")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("info", help="print a dataset summary as JSON")
    p.add_argument("data", type=Path, help="scene folder (COLMAP or transforms.json)")
    _add_config_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init", help="write the initial Gaussians of a scene as a PLY")
    p.add_argument("data", type=Path, help="scene folder")
    p.add_argument("out", type=Path, help="output PLY")
    _add_config_args(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("render", help="render a PLY from a dataset's cameras to PNGs")
    p.add_argument("model", type=Path, help="Gaussians PLY (INRIA or gsplat layout)")
    p.add_argument("--data", type=Path, required=True, help="scene folder whose cameras to render")
    p.add_argument("--out", type=Path, required=True, help="output folder for PNGs (must not exist or be empty)")
    p.add_argument("--split", choices=("train", "test", "all"), default="test")
    _add_config_args(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("train", help="train a model on a scene (one process, or W under torchrun / mpiexec)")
    p.add_argument(
        "--resume", type=Path, metavar="RUN",
        help="continue the run folder RUN from its newest checkpoint (or RUN/checkpoints/images_N from that one), "
        "on any number of ranks; its config.yaml applies, then overrides",
    )  # fmt: skip
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="PSNR and SSIM of a PLY on a dataset's cameras, as JSON")
    p.add_argument("model", type=Path, help="Gaussians PLY")
    p.add_argument("--data", type=Path, required=True, help="scene folder whose cameras and photos to use")
    p.add_argument("--split", choices=("train", "test", "all"), default="test")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    _add_config_args(p)
    p.set_defaults(func=cmd_eval)
    return parser


OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; words after the command that look like ``key.sub=value`` are config overrides."""
    argv = sys.argv[1:] if argv is None else list(argv)
    words = argv[1:]
    overrides = [w for w in words if OVERRIDE.match(w)]
    args = build_parser().parse_args(argv[:1] + [w for w in words if not OVERRIDE.match(w)])
    if overrides and not hasattr(args, "overrides"):
        build_parser().error(f"'{argv[0]}' takes no config overrides: {' '.join(overrides)}")
    if overrides:
        args.overrides = overrides
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
