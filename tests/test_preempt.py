"""Operations: a stop signal ends every rank with one consistent checkpoint and the requeue status, and the
resumed run continues the very same loss curve; a rank that dies makes the others stop within
``dist.lost_rank_timeout_s``, naming it, with the last checkpoint intact.

The ranks run as separate ``grendel train`` processes given the torchrun variables (as ``srun`` or a
scheduler would start them), so each one can be signalled or killed on its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grendel_py.cli import main
from grendel_py.errors import EXIT_INTERRUPTED, EXIT_LOST_RANK, EXIT_PREEMPTED
from grendel_py.parallel.runtime import single_process
from grendel_py.parallel.watchdog import looks_like_peer_loss
from grendel_py.train import preempt
from grendel_py.train.checkpoint import checkpoint_dir, complete_checkpoints, find_checkpoint, load_shards
from grendel_py.train.preempt import STOP_SIGNALS, StopSignals, agreed_signal
from tests.dist_util import finish_child, free_port, launch_env, start_child

TIMEOUT_S = 180  # a whole job


@pytest.fixture(scope="module")
def scene(object_scene_seed2: Path) -> Path:
    return object_scene_seed2


def _args(scene: Path, out: Path, images: int, *extra: str) -> list[str]:
    """``grendel train`` words: batches of 2, a checkpoint every 10 images, the loss logged every batch,
    densification and redistribution on, equal speeds (runs repeat bit for bit)."""
    return [
        f"data.path={scene}",
        "data.downscale=4",
        f"train.out={out}",
        f"train.images={images}",
        "train.batch_size=2",
        "train.eval_every=0",
        "train.eval_renders=1",
        "train.log_every=2",
        "train.checkpoint_every=10",
        "train.keep_checkpoints=2",
        "train.sh_degree_every=10",
        "model.sh_degree=1",
        "densify.start_images=4",
        "densify.stop_images=30",
        "densify.every_images=6",
        "densify.reset_opacity_every=18",
        "dist.rebalance_threshold=1.0",
        "dist.calibrate=false",
        "dist.timeout_s=60",
        *extra,
    ]


def _start(world: int, args: list[str], cwd: Path) -> list[subprocess.Popen]:
    """``grendel train args`` as ``world`` rank processes (one plain process for world 1)."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        procs.append(
            start_child(
                [sys.executable, "-m", "grendel_py", "train", *args],
                cwd,
                launch_env(rank, world, port),
                preexec_fn=_default_interrupt,
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = TIMEOUT_S) -> list[tuple[int, str]]:
    """(exit status, stderr) of every rank; all are killed when one overruns ``timeout``."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            code, _, err = finish_child(p, max(1.0, deadline - time.monotonic()))
            results.append((code, err))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _run(world: int, args: list[str], cwd: Path) -> None:
    for rank, (code, err) in enumerate(_finish(_start(world, args, cwd))):
        assert code == 0, f"rank {rank} exit {code}:\n{err[-3000:]}"


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        ended = [p.returncode for p in procs if p.poll() is not None]
        if ended or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            pytest.fail(f"{path} never appeared (ranks ended: {ended}): {_finish(procs)[0][1][-3000:]}")
        time.sleep(0.02)


def _losses(run: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


def _assert_intact(run: Path, world: int) -> int:
    """The newest checkpoint of ``run`` is complete and every shard reads; returns its images seen."""
    manifest = find_checkpoint(run)
    assert manifest.world_size == world
    state = load_shards(manifest, single_process())  # reads and checks every rank's file
    assert len(state["optimizer"]["ids"]) == sum(manifest.shard_sizes) > 0
    return manifest.images_seen


def _default_interrupt() -> None:
    """In the child, before exec: Ctrl-C's default action, whatever the parent ignores (a shell's background job
    ignores SIGINT, and so would its children)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# (ranks, signal, which ranks get it, how often): SIGTERM to one rank only (all must agree to stop at the same
# iteration); Ctrl-C reaches every rank from the terminal and once more from torchrun, which forwards it
STOPS = {
    "sigterm-1": (1, signal.SIGTERM, [0], 1),
    "sigterm-2": (2, signal.SIGTERM, [1], 1),
    "ctrl-c-2": (2, signal.SIGINT, [0, 1], 2),
}


@pytest.mark.parametrize("case", list(STOPS))
def test_stop_signal_checkpoints_and_the_resumed_run_continues_the_loss_curve(
    scene: Path, tmp_path: Path, case: str
) -> None:
    world, sig, targets, times = STOPS[case]
    images = 40
    _run(world, _args(scene, tmp_path / "ref", images), tmp_path)

    run = tmp_path / "run"
    procs = _start(world, _args(scene, run, images, "--auto-resume"), tmp_path)
    _wait_for(checkpoint_dir(run, 10) / "manifest.json", procs)
    for _ in range(times):
        for rank in targets:
            procs[rank].send_signal(sig)
    results = _finish(procs)
    status = EXIT_INTERRUPTED if sig == signal.SIGINT else EXIT_PREEMPTED
    assert [code for code, _ in results] == [status] * world, results[0][1][-3000:]
    line = results[0][1].strip().splitlines()[-1]  # rank 0 says how to go on
    where = "" if 0 in targets else " on another rank"
    assert re.match(
        rf"stopped by {sig.name}{where} after \d+ images; checkpoint .*; continue with: grendel train "
        rf"--resume {run} ",
        line,
    ), line
    stopped_at = _assert_intact(run, world)
    assert 10 <= stopped_at < images and not (run / "model.ply").exists()

    _run(world, _args(scene, run, images, "--auto-resume"), tmp_path)  # the requeued job: the same command
    assert (run / "model.ply").read_bytes() == (tmp_path / "ref" / "model.ply").read_bytes()
    assert _losses(run) == _losses(tmp_path / "ref")  # steps before and after the stop
    assert [m.images_seen for m in complete_checkpoints(run)][-1] == images


def test_ctrl_c_outside_training_prints_one_line(tmp_path: Path) -> None:
    """Ctrl-C while a command works (here the synthetic city, about 40 s): one line, 130, no partial output."""
    proc = start_child(
        [sys.executable, "-m", "grendel_py", "synth", tmp_path / "city", "--preset", "city"],
        tmp_path,
        preexec_fn=_default_interrupt,
    )
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish_child(proc, TIMEOUT_S)
    assert (code, out, err) == (EXIT_INTERRUPTED, "", "interrupted\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("victim", [1, 0])
def test_a_lost_rank_stops_the_others_naming_it(scene: Path, tmp_path: Path, victim: int) -> None:
    run, timeout = tmp_path / "run", 2.0
    procs = _start(2, _args(scene, run, 100_000, f"dist.lost_rank_timeout_s={timeout}"), tmp_path)
    _wait_for(checkpoint_dir(run, 10) / "manifest.json", procs)
    procs[victim].kill()
    killed = time.monotonic()
    code, err = _finish([procs[1 - victim]])[0]
    waited = time.monotonic() - killed
    assert code == EXIT_LOST_RANK, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and f"rank {victim} " in line, err[-3000:]
    assert waited < timeout + 10, waited
    assert _assert_intact(run, 2) >= 10
    procs[victim].wait()


def test_auto_resume_starts_afresh_over_an_attempt_without_checkpoint(scene: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoints" / "images_000000010").mkdir(parents=True)  # interrupted: no manifest
    assert main(["train", *_args(scene, run, 10, "--auto-resume")]) == 0
    assert _assert_intact(run, 1) == 10 and (run / "model.ply").is_file()
    (run / "notes.txt").write_text("mine")  # not a leftover of a run: a new run there is refused
    assert main(["train", *_args(scene, run / "x", 10), f"train.out={run}"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["train", *_args(scene, run, 10), "--auto-resume", "--resume", str(run)]) == 2
    assert "not both" in capsys.readouterr().err


def test_stop_signals_raise_a_flag_and_restore_the_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert stop.received is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.received == "SIGUSR1"  # the first one
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.fixture
def foreground_interrupt():
    """SIGINT as a foreground process has it (Python's KeyboardInterrupt handler), also when the tests run as a
    shell's background job, which starts with SIGINT ignored (kept ignored by StopSignals, as tested below)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("foreground_interrupt")
def test_a_second_ctrl_c_aborts_unless_it_is_the_echo_of_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preempt, "REPEAT_S", 0.2)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a launcher forwarding the terminal's Ctrl-C: the same request
        time.sleep(0.01)
        assert stop.received == "SIGINT"
        time.sleep(0.25)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)


@pytest.mark.usefixtures("foreground_interrupt")
def test_ranks_agree_on_the_stop_signal() -> None:
    with StopSignals() as stop:
        assert agreed_signal(stop.flags()) is None
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        mine = stop.flags()
    other = [float(s == signal.SIGTERM) for s in STOP_SIGNALS]
    assert agreed_signal(mine) == "SIGINT"
    assert agreed_signal([a + b for a, b in zip(mine, other)]) == "SIGTERM"  # a preemption, whatever else: requeued


def test_an_ignored_interrupt_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert stop.received is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_peer_loss_errors_are_told_from_local_ones() -> None:
    assert looks_like_peer_loss(RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"))
    assert not looks_like_peer_loss(RuntimeError("The size of tensor a (3) must match the size of tensor b (4)"))
    assert not looks_like_peer_loss(ValueError("connection"))
