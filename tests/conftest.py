"""Fixtures shared by several test modules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grendel_py.synth.writer import write_synthetic

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
"""The project's shared folder, beside the checkout (``../shared``): data that a user's clone does not have."""


@pytest.fixture(scope="session")
def fox() -> Path:
    """The captured fox scene, ``../shared/data/fox`` beside the checkout; the test skips when it is absent
    (a user's clone), and only then."""
    path = SHARED / "data" / "fox"
    if not path.is_dir():
        pytest.skip(f"the captured fox scene is not at {path} (../shared/data/fox beside the checkout)")
    return path


@pytest.fixture(scope="session")
def object_scene_seed2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic `object` scene of seed 2, generated once per test session (about 12 s)."""
    out = tmp_path_factory.mktemp("object_seed2") / "scene"
    write_synthetic(out, "object", seed=2)
    return out


SKIP_REPORT = "GRENDEL_SKIP_REPORT"
"""Environment variable: a file to which the session writes why each skipped test skipped (JSON lines of
``{"test": node id, "reason": ...}``); .ci/run reads it to fail on any skip outside its allow-list. Taken out
of the environment at start, so that the pytest runs which some tests start as children do not write to it."""


class _SkipReport:
    """pytest plugin: every skip of the session (at collection, set-up or call) with its reason, into ``path``."""

    def __init__(self, path: str):
        self.path, self.skips = Path(path), []

    def _record(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            self.skips.append({"test": report.nodeid, "reason": reason.removeprefix("Skipped: ")})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    def pytest_sessionfinish(self) -> None:
        self.path.write_text("".join(json.dumps(s) + "\n" for s in self.skips))


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.pop(SKIP_REPORT, None)
    if path:
        config.pluginmanager.register(_SkipReport(path), "grendel_skip_report")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``mpi`` run only inside ``mpiexec -n 2 pytest --with-mpi`` (which
    tests/test_mpi_launch.py starts itself); in any other session they are deselected, not skipped."""
    if config.getoption("with_mpi", default=False):
        return
    mpi = [item for item in items if item.get_closest_marker("mpi")]
    if mpi:
        config.hook.pytest_deselected(items=mpi)
        items[:] = [item for item in items if not item.get_closest_marker("mpi")]
