"""bench/gpu_check.sh on a machine without a GPU: its dry run parses its arguments, looks up the modules the
GPU machine may lack, runs the measurements at tiny sizes on the CPU and writes its JSON report; a missing
module without a wheel stops it with a line saying how to fetch one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.dist_util import REPO, child_env

SCRIPT = REPO / "bench" / "gpu_check.sh"


def _run(*args: str, shadow: Path | None = None) -> subprocess.CompletedProcess:
    """The script with ``args``; ``shadow``: a folder put first on PYTHONPATH (modules that fail to import)."""
    env = child_env()
    if shadow is not None:
        env["PYTHONPATH"] = f"{shadow}:{env['PYTHONPATH']}"
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_dry_run_writes_its_report(tmp_path: Path) -> None:
    res = _run("--dry-run", "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr + (tmp_path / "gpu_check.log").read_text()[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert [s["step"] for s in report["steps"]] == ["facts", "wheels", "synth", "pytest", "racecheck", "memcheck", "parity", "demo", "share", "step", "fox"]
    assert report["mode"] == "dry" and steps["facts"]["result"]["torch"]
    assert {steps[n]["status"] for n in ("pytest", "racecheck", "memcheck", "parity", "share", "fox")} == {"skipped"}
    demo = steps["demo"]["result"]
    assert demo["images"] == 8 and demo["cpu_reference"]["test_psnr"] > 28
    assert report["demo_psnr_minus_cpu_reference"] == demo["test_psnr"] - demo["cpu_reference"]["test_psnr"]
    runs = steps["step"]["result"]["runs"]
    assert [r["batch"] for r in runs] == [1, 2] and all(r["host_syncs_per_iteration"] > 0 for r in runs)
    assert "=== demo\n$ " in (tmp_path / "gpu_check.log").read_text()  # each step's log, in order


def test_only_runs_the_named_steps(tmp_path: Path) -> None:
    res = _run("--dry-run", "--out", str(tmp_path), "--only", "synth")
    assert res.returncode == 0, res.stdout + res.stderr
    steps = {s["step"]: s for s in json.loads((tmp_path / "gpu_check.json").read_text())["steps"]}
    assert steps["facts"]["status"] == steps["wheels"]["status"] == steps["synth"]["status"] == "passed"
    assert steps["demo"]["result"] == steps["step"]["result"] == {"reason": "not in --only"}


def test_a_missing_module_is_looked_up_in_the_wheels(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pytest.py").write_text("raise ImportError('not on this machine')\n")  # as if pytest were missing
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    res = _run("--dry-run", "--out", str(tmp_path / "a"), "--wheels", str(wheels), shadow=shadow)
    assert res.returncode == 1
    assert "no wheel in" in res.stdout and "--fetch-wheels" in res.stdout
    steps = json.loads((tmp_path / "a" / "gpu_check.json").read_text())["steps"]
    assert [s["step"] for s in steps] == ["facts", "wheels"] and steps[1]["result"]["missing"] == ["pytest"]
    (wheels / "pytest-8.0.0-py3-none-any.whl").write_bytes(b"")  # found: a dry run only looks it up
    res = _run("--dry-run", "--out", str(tmp_path / "b"), "--wheels", str(wheels), shadow=shadow)
    steps = {s["step"]: s for s in json.loads((tmp_path / "b" / "gpu_check.json").read_text())["steps"]}
    assert steps["wheels"]["status"] == "passed" and steps["wheels"]["result"]["wheels"][0].endswith("pytest-8.0.0-py3-none-any.whl")


def test_bad_arguments() -> None:
    res = _run("--frobnicate")
    assert res.returncode == 2 and "unknown argument '--frobnicate'" in res.stderr
