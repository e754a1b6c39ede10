"""The ``grendel`` command: synth, info, init, render, train, eval, export, view, simulate and plan.

Every command that reads user input turns :class:`InputError` into one line ``error: <file>: <problem>``
on stderr and exit status 2; outputs are written atomically (nothing half-written is left behind).
``train`` exits with 75 when SIGTERM or SIGUSR1 stopped it after a checkpoint, 130 after Ctrl-C (with a
checkpoint, unless pressed twice), 3 when another rank was lost, 74 when a write failed (no space left, quota
exceeded, an I/O error: one line naming the folder, what was being written and the last complete checkpoint)
and 73 when another job trains in the run folder (:mod:`grendel_py.errors`); any command interrupted by
Ctrl-C outside training prints one line and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

from grendel_py.config import Config, load_config
from grendel_py.errors import (
    EXIT_BUSY,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    EXIT_WRITE,
    FolderBusy,
    InputError,
    WriteError,
)
from grendel_py.model.splat_formats import FORMATS


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
    from grendel_py.synth.writer import write_synthetic

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
    scene = _scene(cfg)
    gaussians = initial_gaussians(cfg.model, scene.points, scene.cameras, scene.extent, cfg.seed)
    write_ply(args.out, gaussians)
    print(f"wrote {args.out}: {len(gaussians)} Gaussians, SH degree {gaussians.sh_degree}")
    return 0


RENDER_OUTPUTS = ("rgb", "alpha", "depth")


def _render_outputs(text: str) -> tuple[str, ...]:
    """``--outputs``: a comma-separated subset of :data:`RENDER_OUTPUTS`, in that order, without repeats."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RENDER_OUTPUTS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a comma-separated list of {', '.join(RENDER_OUTPUTS)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return tuple(n for n in RENDER_OUTPUTS if n in names)


def cmd_render(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from grendel_py.model.ply import read_ply
    from grendel_py.outputs import depth_preview, save_gray_png, save_png, staged_dir
    from grendel_py.render import render, resolve_backend

    cfg = _config(args, args.data)
    scene = _scene(cfg)
    backend = resolve_backend(cfg.render.backend, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device("cuda" if backend == "cupy" else "cpu")
    gaussians = read_ply(args.model).to(device)
    cameras = {"train": scene.train_cameras, "test": scene.test_cameras, "all": scene.cameras}[args.split]
    background = torch.tensor(cfg.render.background, device=device)
    with staged_dir(args.out) as tmp, torch.no_grad():
        for cam in tqdm(cameras, desc="render", unit="view", disable=None):
            result = render(
                gaussians,
                cam,
                background,
                backend=backend,
                depth="depth" in args.outputs,
                antialiased=cfg.render.antialiased,
            )
            name = f"{cam.uid:05d}_{Path(cam.name).stem}"
            if "rgb" in args.outputs:
                save_png(result.image, tmp / f"{name}.png")
            if "alpha" in args.outputs:
                save_gray_png(result.alpha, tmp / f"{name}_alpha.png")
            if "depth" in args.outputs:
                np.save(tmp / f"{name}_depth.npy", result.depth.cpu().numpy().astype(np.float32))
                save_gray_png(depth_preview(result.depth), tmp / f"{name}_depth.png")
    print(f"wrote {', '.join(args.outputs)} of {len(cameras)} views to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from grendel_py.parallel.runtime import init_distributed, shutdown
    from grendel_py.parallel.watchdog import Watchdog
    from grendel_py.train.checkpoint import complete_checkpoints, find_checkpoint, run_dir_of
    from grendel_py.train.loop import train
    from grendel_py.train.preempt import Preempted
    from grendel_py.train.run_lock import locked_run_dir

    resume = None
    if args.resume is not None:
        if args.auto_resume:
            raise InputError(
                args.resume, "give either --resume RUN or --auto-resume (which resumes train.out), not both"
            )
        resume = find_checkpoint(args.resume)
        run = run_dir_of(resume)
        config = args.config or run / "config.yaml"
        cfg = load_config(config, [*args.overrides, f"train.out={json.dumps(str(run))}"])
    else:
        cfg = _config(args)
    if not cfg.data.path:
        raise InputError(args.config, "data.path is not set: give the scene folder, e.g. data.path=out/demo/scene")
    if not cfg.train.out:
        raise InputError(None, "train.out is not set: give the run's output folder, e.g. train.out=runs/demo")
    out = Path(cfg.train.out)
    ctx = init_distributed(cfg.dist.timeout_s, device=cfg.train.device, share_gpus=cfg.dist.share_gpus)
    stopped = None
    try:
        with Watchdog(ctx, cfg.dist.lost_rank_timeout_s), locked_run_dir(out, ctx):
            if args.auto_resume:  # looked for under the lock: no other job writes one meanwhile
                found = complete_checkpoints(out)
                resume = found[-1] if found else None
            try:
                result = train(cfg, ctx, resume, restart=args.auto_resume)
            except Preempted as e:
                stopped = e
    except WriteError as e:
        then = "; ".join(filter(None, [e.then, _left_behind(out)]))
        raise WriteError(e.path, e.what, e.reason, then) from None
    finally:
        shutdown(ctx)
    if stopped is not None:
        if ctx.is_main:
            print(
                f"{stopped}; continue with: grendel train --resume {cfg.train.out} (or the same command with --auto-resume)",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED if stopped.signal_name == "SIGINT" else EXIT_PREEMPTED
    if ctx.is_main:
        test = result["test"]
        summary = f"test PSNR {test['psnr']:.2f} dB, SSIM {test['ssim']:.4f}" if test else "no test cameras"
        print(
            f"trained {result['images']} images on {ctx.world_size} rank(s) in {result['train_seconds']:.0f} s, "
            f"{result['num_gaussians']} Gaussians, {summary}"
        )
        print(f"wrote {cfg.train.out}")
    return 0


def _left_behind(out: Path) -> str:
    """What a run that could not write leaves in ``out`` and how to go on."""
    from grendel_py.train.checkpoint import complete_checkpoints

    found = complete_checkpoints(out)
    if not found:
        return "no checkpoint was complete yet: free space, then run again with --auto-resume (it starts over)"
    return f"the last complete checkpoint, {found[-1].folder}, is intact: free space, then run again with --auto-resume"


def cmd_eval(args: argparse.Namespace) -> int:
    from grendel_py.train.evaluate import run_eval

    result = run_eval(args.model, _config(args, args.data), args.split, args.exposure)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        from grendel_py.fileio import atomic_open

        with atomic_open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from grendel_py.model.splat_formats import read_model
    from grendel_py.parallel.export import write_merged
    from grendel_py.parallel.runtime import single_process

    if args.out.resolve() == args.model.resolve():
        raise InputError(args.out, "is the model being read; give another --out")
    model = read_model(args.model)
    write_merged(args.out, model, single_process("cpu"), args.format, args.antialiased)
    print(f"wrote {args.out}: {len(model)} Gaussians, {args.format}, {args.out.stat().st_size:,} bytes")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    import time

    from grendel_py.model.splat_formats import read_model
    from grendel_py.view_splats import select_for_view, view_splats
    from grendel_py.viewer import Viewer

    model = read_model(args.model)
    cameras = _scene(_config(args, args.data)).cameras if args.data is not None else []
    shown = select_for_view(model, args.budget)
    viewer = Viewer(args.port, cameras, args.host)
    try:
        viewer.show_model(view_splats(shown))
        evaluations = sorted(d for d in (args.model.parent / "work").glob("[0-9]" * 8) if d.is_dir())  # a run folder's
        if evaluations:
            viewer.show_work(evaluations[-1], int(evaluations[-1].name))
            print(f"showing the pictures of the distributed work in {evaluations[-1]}")
        stop = "" if args.seconds is None else f" for {args.seconds:g} s"
        print(
            f"viewing {args.model}: {len(shown)} of {len(model)} Gaussians at http://{args.host}:{viewer.port}{stop} "
            "(Ctrl-C stops)",
            flush=True,
        )
        end = math.inf if args.seconds is None else time.monotonic() + args.seconds
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
    return values


def _tolerance_list(text: str) -> list[float | None]:
    out: list[float | None] = []
    for v in text.split(","):
        try:
            out.append(None if v == "auto" else float(v))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{v!r} is neither a number nor 'auto'") from None
        if out[-1] is not None and not out[-1] >= 0:
            raise argparse.ArgumentTypeError(f"tolerance {v} must be >= 0")
    return out


def cmd_simulate(args: argparse.Namespace) -> int:
    from grendel_py import simulate as sim

    scenes = []
    for name in args.scenes.split(","):
        if name == "city":
            scenes.append(sim.city_scene(args.city_gaussians, args.city_scale, args.seed))
        elif name == "fox":
            if not args.fox.exists():
                print(f"simulate: skipping fox: {args.fox} not found", file=sys.stderr)
                continue
            if args.fox_model is not None and not args.fox_model.exists():
                raise InputError(args.fox_model, "model PLY not found")
            scenes.append(sim.captured_scene(args.fox, args.fox_model, args.fox_downscale, args.seed))
        else:
            raise InputError(None, f"--scenes: unknown scene {name!r}; choose from city, fox")
    rows = sim.sweep(
        scenes,
        args.worlds,
        args.batch_factors,
        args.tolerances,
        args.images,
        args.intersection_ns * 1e-9,
        args.link_gbps * 1e9 / 8,
        args.seed,
        args.pictures,
    )
    print(sim.rows_to_json(rows) if args.json else sim.rows_to_markdown(rows))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from grendel_py.model.initialize import initial_gaussians
    from grendel_py.model.ply import read_ply
    from grendel_py.pictures import save_picture
    from grendel_py.plan.links import LINKS, Fabric
    from grendel_py.plan.picture import plan_picture
    from grendel_py.plan.planner import plan, summary
    from grendel_py.plan.profile import Profile
    from grendel_py.simulate import SimScene

    cfg = _config(args, args.data)
    profile = Profile.load(args.profile)
    if args.gaussians is not None and args.gaussians <= 0:
        raise InputError(None, f"--gaussians must be > 0, got {args.gaussians}")
    scene = _scene(cfg)
    if args.model is not None:
        model = read_ply(args.model)
    else:
        model = initial_gaussians(cfg.model, scene.points, scene.cameras, scene.extent, cfg.seed)
    sim = SimScene(Path(cfg.data.path).name, model, scene.train_cameras)
    links = {**LINKS, **profile.links}
    if args.link not in links:
        raise InputError(args.profile, f"no link {args.link!r}: choose from {', '.join(sorted(links))}")
    if args.devices is not None and args.devices <= 0:
        raise InputError(None, f"--devices must be > 0, got {args.devices}")
    if args.nodes_of is not None and args.nodes_of <= 0:
        raise InputError(None, f"--nodes-of must be > 0, got {args.nodes_of}")
    link = links[args.link] if args.nodes_of is None else Fabric(LINKS["nvlink4"], links[args.link], args.nodes_of)
    rows = plan(sim, cfg, args.gpus, profile, link, args.images, args.gaussians, args.devices, args.grow)
    best = summary(rows)
    if args.picture is not None:
        save_picture(plan_picture(rows, profile.memory_bytes, f"{sim.name}: {profile.device}, {link}"), args.picture)
    if args.json:
        print(json.dumps({"profile": str(args.profile), "link": str(link), **best, "rows": rows}, indent=1))
        return 0
    print(f"plan: {sim.name}, {len(sim.cameras)} training cameras, batch {cfg.train.batch_size}; profile "
          f"{args.profile} ({profile.device}, {profile.backend}); link {link}")  # fmt: skip
    print("| W | Gaussians | s / iteration | s / epoch | speedup | balance | link MB / iteration | peak GB / rank |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['world_size']} | {r['gaussians']:,} | {r['seconds_per_iteration']:.4g} | "
            f"{r['seconds_per_epoch']:.4g} | {r['speedup'] or float('nan'):.2f} | {r['balance']:.2f} | "
            f"{r['link_bytes_per_iteration'] / 1e6:.2f} | {r['peak_bytes_per_rank']['peak'] / 1e9:.3g}"
            f"{'' if r['fits'] else ' (does not fit)'} |"
        )
    print(f"smallest W that fits: {best['smallest_world_that_fits']}; fastest: W = {best['fastest_world']}")
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
    p.add_argument(
        "--outputs",
        type=_render_outputs,
        default=("rgb",),
        metavar="LIST",
        help="comma-separated, any of rgb (NAME.png), alpha (NAME_alpha.png, 8-bit), depth (NAME_depth.npy: "
        "float32 expected depth along the camera axis, 0 where nothing is drawn; NAME_depth.png: inverse depth "
        "to look at); default rgb",
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("train", help="train a model on a scene (one process, or W under torchrun / mpiexec / srun)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue the run folder RUN from its newest checkpoint (or RUN/checkpoints/images_N from that one), "
        "on any number of ranks; its config.yaml applies, then overrides",
    )
    p.add_argument(
        "--auto-resume",
        action="store_true",
        help="continue train.out from its newest complete checkpoint if it has one, else start it afresh "
        "(for jobs that are requeued: the same command every time)",
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="PSNR and SSIM of a PLY on a dataset's cameras, as JSON")
    p.add_argument("model", type=Path, help="Gaussians PLY")
    p.add_argument("--data", type=Path, required=True, help="scene folder whose cameras and photos to use")
    p.add_argument("--split", choices=("train", "test", "all"), default="test")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    p.add_argument(
        "--exposure",
        choices=("identity", "fit-left"),
        default="identity",
        help="identity: compare the renders as they are; fit-left: INRIA's train_test_exp split, an affine colour "
        "transform fitted on the left half of each view, metrics on the right half",
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a model in a format web viewers read (or convert between formats)")
    p.add_argument("model", type=Path, help="the model: PLY (INRIA or gsplat layout, or compressed), .splat or .spz")
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="splat: antimatter15's .splat (colour only); spz: Niantic's SPZ v3; ply-compressed: SuperSplat / "
        "PlayCanvas compressed PLY; ply: the INRIA layout",
    )
    p.add_argument("--out", type=Path, required=True, help="output file (written atomically)")
    p.add_argument(
        "--antialiased",
        action="store_true",
        help="mark the model as trained with render.antialiased (SPZ's flag, the compressed PLY's render mode)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("view", help="show a model in the browser (viser; the `viewer` extra)")
    p.add_argument(
        "model",
        type=Path,
        help="the model: PLY (INRIA, gsplat or compressed layout), .splat or .spz; in a run folder, the pictures of "
        "its last evaluation's distributed work (work/) are shown too",
    )
    p.add_argument("--port", type=int, default=8080, help="port to serve on (0: any free one; busy: the next free one)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default: this machine only, reach it from elsewhere through an SSH tunnel; "
        "0.0.0.0: every interface, with no access control)",
    )
    p.add_argument(
        "--budget",
        type=int,
        default=1_000_000,
        help="Gaussians sent to the browser at most, largest opacity x footprint first",
    )
    p.add_argument("--data", type=Path, help="scene folder whose cameras to show as frusta")
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: at Ctrl-C)")
    _add_config_args(p)
    p.set_defaults(func=cmd_view)

    p = sub.add_parser(
        "simulate",
        help="W virtual ranks in one process: bytes exchanged, balance and modelled time of each tile assignment",
    )
    p.add_argument(
        "--scenes", default="city,fox", help="comma-separated: city (synthetic), fox (--fox; skipped if absent)"
    )
    p.add_argument("--worlds", type=_int_list, default=[4, 8, 16, 32, 64], help="world sizes")
    p.add_argument("--batch-factors", type=_int_list, default=[1, 4], help="batch sizes as multiples of W")
    p.add_argument(
        "--tolerances",
        type=_tolerance_list,
        default=[0.0, 0.04, 0.1, 0.2, None],
        help="locality tolerances to try with spatial ownership ('auto': the cost model picks)",
    )
    p.add_argument(
        "--images", type=int, default=336, help="images per configuration (iterations = images / batch, >= 1)"
    )
    p.add_argument("--intersection-ns", type=float, default=1.0, help="modelled rasterize time per intersection")
    p.add_argument("--link-gbps", type=float, default=100.0, help="modelled per-rank link bandwidth, Gbit/s")
    p.add_argument("--city-gaussians", type=int, default=300_000)
    p.add_argument("--city-scale", type=int, default=6, help="city images are 160x120 times this")
    p.add_argument("--fox", type=Path, default=Path("../shared/data/fox"), help="captured scene folder")
    p.add_argument(
        "--fox-model", type=Path, help="trained PLY for the captured scene (default: its random initial model)"
    )
    p.add_argument("--fox-downscale", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help='print {"rows": [...]} instead of markdown tables')
    p.add_argument(
        "--pictures",
        type=Path,
        metavar="DIR",
        help="also write, for every configuration, the tiles of its first camera coloured by rank with each "
        "rank's work (DIR/{scene}_w{W}_b{batch}_{ownership}_{sampler}_{assignment}.png)",
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "plan",
        help="predict a run's seconds per iteration for W ranks from a device's calibrated cost profile",
    )
    _add_config_args(p)
    p.add_argument("--data", type=Path, required=True, help="scene folder (as train's data.path)")
    p.add_argument("--model", type=Path, help="a trained PLY (default: the model the run starts from)")
    p.add_argument("--gaussians", type=int, help="plan for a model this large (the counts scaled: see --grow)")
    p.add_argument(
        "--grow",
        choices=["density", "area"],
        default="density",
        help="how --gaussians grows the scene: denser (every count scaled) or larger in area (only each rank's "
        "Gaussians: what a batch sees stays the scene's)",
    )
    p.add_argument("--gpus", type=_int_list, default=[1, 2, 4, 8], help="world sizes, comma separated")
    p.add_argument("--profile", type=Path, required=True, help="the device's cost profile (bench/calibrate.py)")
    p.add_argument(
        "--link", default="nvlink4", help="the ranks' link: nvlink4, ndr, 100gbe, or one measured in the profile"
    )
    p.add_argument(
        "--nodes-of",
        type=int,
        help="ranks per node, joined by NVLink 4 within a node; --link then joins the nodes",
    )
    p.add_argument("--devices", type=int, help="devices the ranks share (CPU cores, GPUs; default: one each)")
    p.add_argument("--images", type=int, default=32, help="images of the epoch's start the counts average over")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--picture", type=Path, help="also draw predicted speedup and memory per rank against W (PNG)")
    p.set_defaults(func=cmd_plan)
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
    except (InputError, WriteError, FolderBusy) as e:
        print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)  # one line, always
        return {InputError: EXIT_INPUT, WriteError: EXIT_WRITE, FolderBusy: EXIT_BUSY}[type(e)]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
