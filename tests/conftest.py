"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from grendel_py.data.synthetic import write_synthetic


@pytest.fixture(scope="session")
def object_scene_seed2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic `object` scene of seed 2, generated once per test session (about 12 s)."""
    out = tmp_path_factory.mktemp("object_seed2") / "scene"
    write_synthetic(out, "object", seed=2)
    return out
