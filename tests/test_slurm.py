"""Real SLURM jobs: the slurm/ batch scripts run on a one-node cluster that this module starts on the machine
(scripts/slurm_local.sh: munged, slurmctld and slurmd as root, a generated slurm.conf in a temp folder).

Three jobs train a tiny scene on 2 CPU ranks, one per script: srun per task, torchrun on one node, and the
multi-node torchrun script on one node. The torchrun job gets SIGUSR1 after its first checkpoint (what
``--signal=B:USR1@120`` sends before the time limit), so it checkpoints, requeues itself and finishes on its
restart.

- :func:`test_batch_script_trains_on_two_ranks`: each job completes; its run folder holds the merged model of
  both ranks.
- :func:`test_launches_train_the_same_model`: the three give the same model, byte for byte, the requeued one
  included.
- :func:`test_preempted_torchrun_job_requeued_itself`: the torchrun job ran twice (torchrun exits 1 when its
  workers exit 75).
- :func:`test_preempted_srun_job_requeues_and_finishes`: the same with srun per task (srun exits 75).
- :func:`test_cancelled_job_is_not_requeued`: ``scancel`` ends the job, though its ranks checkpoint and exit
  with the requeue status.
- :func:`test_lost_task_stops_the_job_naming_it`: ``kill -9`` of one task; the other names it within
  ``dist.lost_rank_timeout_s`` and the job fails, its last checkpoint complete.

They skip, saying why, when not root or when SLURM or munge is not installed (``apt-get install -y
--no-install-recommends slurm-wlm munge``; .ci/run installs them). Installed daemons that do not start are a
failure, with their logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from grendel_py.model.ply import read_ply
from grendel_py.train.checkpoint import complete_checkpoints
from tests.dist_util import child_env

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER = REPO / "scripts" / "slurm_local.sh"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
JOB_TIMEOUT_S = 150  # a job from submission to its end, requeue included
# each script's sbatch options and environment for 2 ranks on the one node, one per GPU as on a GPU cluster (the
# node's 2 GPUs are a count only: the ranks train on its 2 cores)
SCRIPTS = {
    "train_srun.sbatch": ((), {}),  # its defaults: 2 tasks per node, a GPU per task
    "train_1node.sbatch": (("--gpus-per-node=2",), {}),  # 2 ranks: the GPUs allocated
    "train_multinode.sbatch": (("--nodes=1", "--gpus-per-node=2"), {}),
}
PREEMPTED = "train_1node.sbatch"  # its job gets SIGUSR1 after its first checkpoint
IMAGES = 30  # per job; a checkpoint every 10


def _cannot_run() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    if os.geteuid() != 0:
        return "needs root: starts munged, slurmctld and slurmd"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (
            f"SLURM or munge not installed ({', '.join(missing)} missing): "
            "apt-get install -y --no-install-recommends slurm-wlm munge (as .ci/run does)"
        )
    return None


@dataclass(frozen=True)
class Cluster:
    """The local cluster as its clients see it: ``env`` has SLURM_CONF and no launcher variables."""

    env: dict[str, str]

    def run(self, *cmd: str) -> str:
        """stdout of the SLURM client command ``cmd``; fails the test on exit != 0."""
        proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"exit {proc.returncode}: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    def submit(
        self,
        script: str,
        log_dir: Path,
        args: list[str],
        options: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> str:
        """``sbatch options slurm/script args`` from the repository root with ``env`` added to the job's
        environment, log in ``log_dir``; the job id."""
        cmd = ["sbatch", "--parsable", f"--output={log_dir}/%x-%j.out", *options, f"slurm/{script}", *args]
        job_env = {**self.env, **(env or {})}
        proc = subprocess.run(cmd, cwd=REPO, env=job_env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"sbatch failed: {' '.join(cmd)}\n{proc.stderr}"
        return proc.stdout.strip().split(";")[0]

    def job(self, job: str) -> dict[str, str]:
        """The fields of ``scontrol show job`` (JobState, Restarts, ExitCode, StdOut, ...)."""
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "show", "job", "-o", job)))

    def wait(self, job: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, str]:
        """The fields of ``job`` once it has ended (a requeued job ends after its last run)."""
        _poll(lambda: self.job(job)["JobState"] in FINAL_STATES, timeout, lambda: self._stuck(job))
        return self.job(job)

    def _stuck(self, job: str) -> str:
        fields = self.job(job)
        self.run("scancel", job)
        return f"job {job} still {fields['JobState']} ({fields.get('Reason')}):\n{_tail(Path(fields['StdOut']))}"


def _poll(done: Callable[[], object], timeout: float, why: Callable[[], str]) -> None:
    """Wait until ``done()`` is true; fail with ``why()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:.0f} s: {why()}")
        time.sleep(0.3)


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text()[-chars:] if path.is_file() else f"({path} not written)"


def _log(fields: dict[str, str]) -> str:
    """The whole log of the job with ``fields`` (its restarts append to it)."""
    return Path(fields["StdOut"]).read_text()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A one-node cluster for the session, always stopped at its end."""
    reason = _cannot_run()
    if reason is not None:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    local = ["bash", str(LOCAL_CLUSTER)]
    try:
        start = subprocess.run([*local, "start", str(folder)], capture_output=True, text=True, timeout=120)
        assert start.returncode == 0, f"the local SLURM cluster did not start:\n{start.stdout}{start.stderr}"
        yield Cluster(child_env(SLURM_CONF=str(folder / "slurm.conf"), PYTHON=sys.executable))
    finally:
        subprocess.run([*local, "stop", str(folder)], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def scene(object_scene_seed2: Path) -> Path:
    return object_scene_seed2


def _train_args(scene: Path, out: Path, images: int, *extra: str) -> list[str]:
    """Overrides for a few-second 2-rank run on 40x30 images with densification."""
    return [
        f"data.path={scene}",
        "data.downscale=4",
        f"train.out={out}",
        f"train.images={images}",
        "train.batch_size=2",
        "train.eval_every=0",
        "train.eval_renders=1",
        "train.sh_degree_every=10",
        "model.sh_degree=1",
        "densify.start_images=4",
        "densify.stop_images=16",
        "densify.every_images=6",
        "densify.reset_opacity_every=12",
        "dist.timeout_s=60",
        "dist.calibrate=false",
        *extra,
    ]


def _check_run(fields: dict[str, str], run: Path, images: int) -> str:
    """The job completed, and ``run`` holds the 2-rank model of ``images`` images; the job's log."""
    log = _log(fields)
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["images"]) == (2, images)
    assert len(read_ply(run / "model.ply")) == metrics["num_gaussians"]
    assert log.count(f"trained {images} images on 2 rank(s)") == 1, log[-4000:]  # rank 0 alone reports
    return log


def _first_checkpoint(cluster: Cluster, job: str, run: Path) -> None:
    """Wait until ``job`` has written a complete checkpoint of ``run``."""
    _poll(
        lambda: complete_checkpoints(run),
        JOB_TIMEOUT_S,
        lambda: f"no checkpoint in {run}:\n{_tail(Path(cluster.job(job)['StdOut']))}",
    )


def _preempt(cluster: Cluster, job: str, run: Path) -> None:
    """SIGUSR1 to the batch shell of ``job`` once it has written a checkpoint of ``run``."""
    _first_checkpoint(cluster, job, run)
    cluster.run("scancel", "--signal=USR1", "--batch", job)


@pytest.fixture(scope="module")
def trained(cluster: Cluster, scene: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path]]:
    """Each script's job, submitted all at once (the node runs them one after another), PREEMPTED's
    preempted: its fields once it ended, and its run folder."""
    root = tmp_path_factory.mktemp("slurm_runs")
    runs = {script: root / script.split(".")[0] for script in SCRIPTS}
    jobs = {
        script: cluster.submit(
            script, root, _train_args(scene, runs[script], IMAGES, "train.checkpoint_every=10"), options, env
        )
        for script, (options, env) in SCRIPTS.items()
    }
    _preempt(cluster, jobs[PREEMPTED], runs[PREEMPTED])
    return {script: (cluster.wait(job), runs[script]) for script, job in jobs.items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_batch_script_trains_on_two_ranks(trained: dict[str, tuple[dict, Path]], script: str) -> None:
    fields, run = trained[script]
    _check_run(fields, run, IMAGES)
    gpus = fields.get("TresPerTask") or fields.get("TresPerNode")  # the script's GPU line (or sbatch's option)
    assert gpus in ("gres:gpu:1", "gres:gpu:2"), fields
    assert complete_checkpoints(run)[-1].images_seen == IMAGES


def test_launches_train_the_same_model(trained: dict[str, tuple[dict, Path]]) -> None:
    models = {script: (run / "model.ply").read_bytes() for script, (_, run) in trained.items()}
    assert len(set(models.values())) == 1, {script: len(data) for script, data in models.items()}


def test_preempted_torchrun_job_requeued_itself(trained: dict[str, tuple[dict, Path]]) -> None:
    fields, _ = trained[PREEMPTED]
    log = _log(fields)
    assert fields["Restarts"] == "1", log[-4000:]
    assert "step stopped (status 1 after SIGUSR1): requeueing" in log, log[-4000:]


def test_preempted_srun_job_requeues_and_finishes(
    cluster: Cluster, scene: Path, tmp_path: Path, trained: dict[str, tuple[dict, Path]]
) -> None:
    """SIGUSR1 once the first checkpoint exists: the ranks exit 75, srun too, the job requeues itself and its
    restart finishes the run with the model of the uninterrupted job."""
    run = tmp_path / "run"
    job = cluster.submit("train_srun.sbatch", tmp_path, _train_args(scene, run, IMAGES, "train.checkpoint_every=10"))
    _preempt(cluster, job, run)
    fields = cluster.wait(job)
    log = _check_run(fields, run, IMAGES)
    assert fields["Restarts"] == "1", log[-4000:]
    assert "step stopped (status 75 after SIGUSR1): requeueing" in log, log[-4000:]
    assert complete_checkpoints(run)[-1].images_seen == IMAGES
    assert (run / "model.ply").read_bytes() == (trained["train_srun.sbatch"][1] / "model.ply").read_bytes()


def test_cancelled_job_is_not_requeued(cluster: Cluster, scene: Path, tmp_path: Path) -> None:
    """scancel sends SIGTERM to the batch shell too: the ranks checkpoint and exit 75, the job stays cancelled."""
    run = tmp_path / "run"
    job = cluster.submit("train_srun.sbatch", tmp_path, _train_args(scene, run, 200, "train.checkpoint_every=10"))
    _first_checkpoint(cluster, job, run)
    cluster.run("scancel", job)
    fields = cluster.wait(job)
    log = _log(fields)
    assert (fields["JobState"], fields["Restarts"]) == ("CANCELLED", "0"), log[-4000:]
    assert "step exited with status 75 as SLURM ends the job (not requeued" in log, log[-4000:]


def _task_pid(job: str, rank: int) -> int:
    """The process of task ``rank`` of ``job``'s step running grendel (found by its environment in /proc)."""
    want = {f"SLURM_JOB_ID={job}".encode(), f"SLURM_PROCID={rank}".encode(), b"SLURM_STEP_ID=0"}
    for proc in Path("/proc").iterdir():
        try:
            if b"grendel_py" in (proc / "cmdline").read_bytes() and want <= set(
                (proc / "environ").read_bytes().split(b"\0")
            ):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    pytest.fail(f"no process of task {rank} of job {job}")


def test_lost_task_stops_the_job_naming_it(cluster: Cluster, scene: Path, tmp_path: Path) -> None:
    """kill -9 of task 1 (the node's OOM killer, say): task 0 stops within dist.lost_rank_timeout_s naming rank
    1, the job fails without a requeue, and its last checkpoint is complete."""
    run = tmp_path / "run"
    args = _train_args(scene, run, 100_000, "train.checkpoint_every=10", "dist.lost_rank_timeout_s=3")
    job = cluster.submit("train_srun.sbatch", tmp_path, args)
    _first_checkpoint(cluster, job, run)
    os.kill(_task_pid(job, 1), 9)
    fields = cluster.wait(job, timeout=60)
    log = _log(fields)
    assert (fields["JobState"], fields["Restarts"]) == ("FAILED", "0"), log[-4000:]
    assert re.search(r"^error: rank 1 is lost: no heartbeat for \d+ s \(seen by rank 0\); stopping$", log, re.M), log[
        -4000:
    ]
    manifest = complete_checkpoints(run)[-1]
    assert manifest.images_seen >= 10 and all(manifest.shard_file(r).is_file() for r in range(2))
