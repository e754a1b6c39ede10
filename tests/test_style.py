"""The tree is formatted and linted as pyproject.toml configures ruff (the dev extra pins its version, since its
output is the tree's format): `ruff format --check` and `ruff check` over the repository pass."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.dist_util import REPO


@pytest.mark.parametrize("command", [["format", "--check", "--diff"], ["check"]], ids=["format", "lint"])
def test_ruff(command: list[str]) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, (
        f"ruff {' '.join(command)} found (fix with `ruff format .` / `ruff check --fix .`):\n{res.stdout[-6000:]}{res.stderr[-2000:]}"
    )
