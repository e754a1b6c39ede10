"""Tests for grendel_py.config: defaults, precedence, type and range checks, error messages, saving."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from grendel_py.config import Config, ConfigValueError, DataConfig, config_to_dict, load_config, save_config
from grendel_py.errors import InputError

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_and_default_yaml_agree() -> None:
    assert load_config(None, []) == Config()
    assert load_config(DEFAULT_YAML, []) == Config()
    # The shipped file sets every key explicitly.
    assert yaml.safe_load(DEFAULT_YAML.read_text()) == config_to_dict(Config())


def test_precedence_override_over_file_over_default(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  sh_degree: 2\n  init: random\nseed: 7\n")
    from_file = load_config(path, [])
    assert (from_file.model.sh_degree, from_file.model.init, from_file.seed) == (2, "random", 7)
    assert from_file.model.random_points == 100_000 and from_file.data == DataConfig()
    cfg = load_config(path, ["model.sh_degree=1", "render.background=[1, 0.5, 0]", "data.path=/scenes/garden"])
    assert (cfg.model.sh_degree, cfg.model.init) == (1, "random")
    assert cfg.render.background == (1.0, 0.5, 0.0) and cfg.data.path == "/scenes/garden"
    assert load_config(path, ["model={init: points}"]).model == load_config(path, ["model.init=points"]).model


def test_value_conversions() -> None:
    cfg = load_config(None, ["data.downscale=2", "model.init_opacity=1e-2", "data.test_every=0"])
    assert cfg.data.downscale == 2.0 and isinstance(cfg.data.downscale, float)
    assert cfg.model.init_opacity == 0.01
    assert isinstance(cfg.render.background, tuple)


def test_empty_file_and_empty_section(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, ""), []) == Config()
    assert load_config(_write(tmp_path, "model:\n# sh_degree: 1\n"), []) == Config()


def test_unknown_key_in_file_names_key_file_and_valid_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  sh_degre: 2\n")
    with pytest.raises(InputError) as info:
        load_config(path, [])
    assert info.value.path == path
    message = str(info.value)
    assert "run.yaml" in message and "model.sh_degre" in message
    assert "sh_degree, init, random_points, init_opacity" in message


def test_unknown_section_in_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"trainer: unknown key; valid keys at the top level: seed, data, model"):
        load_config(_write(tmp_path, "trainer: {steps: 3}\n"), [])


@pytest.mark.parametrize(
    ("override", "key"), [("model.colour=1", "model.colour"), ("optimizer.lr=1", "optimizer"), ("seed.x=1", "seed")]
)
def test_unknown_key_in_override(tmp_path: Path, override: str, key: str) -> None:
    path = _write(tmp_path, "seed: 1\n")
    with pytest.raises(InputError) as info:
        load_config(path, [override])
    assert info.value.path is None
    assert f"override {override!r}" in str(info.value) and f"{key}:" in str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed=true", "seed: expected an integer, got True (bool)"),
        ("seed=1.5", "seed: expected an integer, got 1.5"),
        ("model.sh_degree=two", "model.sh_degree: expected an integer, got 'two'"),
        ("data.downscale=abc", "data.downscale: expected a number, got 'abc'"),
        ("data.downscale=true", "data.downscale: expected a number, got True"),
        ("data.downscale=.inf", "data.downscale: expected a finite number"),
        ("data.path=3", "data.path: expected a string, got 3 (int)"),
        ("model.init=mesh", "model.init: expected one of 'points', 'random', got 'mesh'"),
        ("render.backend=cuda", "render.backend: expected one of 'torch'"),
        ("render.background=[0, 0]", "render.background: expected a list of 3 items, got [0, 0]"),
        ("render.background=0.5", "render.background: expected a list of 3 items"),
        ("render.background=[0, x, 0]", "render.background[1]: expected a number, got 'x'"),
        ("model=3", "model: expected a mapping of keys, got 3"),
    ],
)
def test_wrong_type(override: str, expected: str) -> None:
    with pytest.raises(InputError) as info:
        load_config(None, [override])
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed=-1", "seed: expected an integer >= 0, got -1"),
        ("data.downscale=0.5", "data.downscale: expected a number >= 1, got 0.5"),
        ("data.test_every=-2", "data.test_every: expected an integer >= 0"),
        ("model.sh_degree=4", "model.sh_degree: expected an integer in 0..3, got 4"),
        ("model.random_points=1", "model.random_points: expected an integer >= 2, got 1"),
        ("model.init_opacity=1", "model.init_opacity: expected a number in (0, 1), got 1.0"),
        ("render.background=[0, 0, 1.5]", "render.background: expected 3 numbers in [0, 1], got (0.0, 0.0, 1.5)"),
    ],
)
def test_out_of_range(override: str, expected: str) -> None:
    with pytest.raises(InputError) as info:
        load_config(None, [override])
    assert expected in str(info.value) and override in str(info.value)


def test_out_of_range_in_file_names_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  sh_degree: 9\n")
    with pytest.raises(InputError) as info:
        load_config(path, ["seed=3"])
    assert info.value.path == path and "model.sh_degree: expected an integer in 0..3, got 9" in str(info.value)


def test_direct_construction_checks_ranges() -> None:
    with pytest.raises(ConfigValueError, match="downscale"):
        DataConfig(downscale=0.0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("model: [1, 2\n", "invalid YAML"), ("- 1\n- 2\n", "expected a mapping"), (b"\xff\xfe", "cannot read config")],
)
def test_bad_files(tmp_path: Path, text: str | bytes, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError) as info:
        load_config(path, [])
    assert info.value.path == path and problem in info.value.problem


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such config file") as info:
        load_config(tmp_path / "nope.yaml", [])
    assert info.value.path == tmp_path / "nope.yaml"


@pytest.mark.parametrize("override", ["model.sh_degree", "=3", "model..sh_degree=3", "seed=[1"])
def test_malformed_override(override: str) -> None:
    with pytest.raises(InputError) as info:
        load_config(None, [override])
    assert info.value.path is None and repr(override) in str(info.value)


def test_save_and_reload(tmp_path: Path) -> None:
    cfg = load_config(None, ["seed=5", "model.sh_degree=1", "render.background=[1, 1, 1]", "data.path=x y"])
    out = tmp_path / "runs" / "r1" / "config.yaml"
    save_config(cfg, out)
    assert load_config(out, []) == cfg
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]
    assert config_to_dict(cfg)["render"]["background"] == [1.0, 1.0, 1.0]


@dataclass(frozen=True)
class _Extra:
    out: str | None = None
    steps: list[int] = field(default_factory=list)
    weights: tuple[float, ...] = ()
    flag: bool = False


def test_generic_types_for_new_sections() -> None:
    """Types later sections may use: optional path-as-str, variable-length lists, bools."""
    from grendel_py.config import _build, _KeyError

    built = _build(_Extra, {"out": None, "steps": [1, 2], "weights": [1, 0.5], "flag": True}, "extra.")
    assert built == _Extra(None, [1, 2], (1.0, 0.5), True)
    assert _build(_Extra, {"out": "a/b"}, "extra.").out == "a/b"
    for data, message in [
        ({"out": 3}, "extra.out: expected a string"),
        ({"steps": [1, 2.5]}, "extra.steps[1]: expected an integer"),
        ({"steps": 3}, "extra.steps: expected a list"),
        ({"flag": 1}, "extra.flag: expected true or false, got 1"),
    ]:
        with pytest.raises(_KeyError, match=message.replace("[", r"\[")):
            _build(_Extra, data, "extra.")


def test_an_older_runs_config_still_loads(tmp_path: Path) -> None:
    """densify.max_gaussians (before the MCMC strategy) is read as densify.budget; giving both is an error."""
    old = tmp_path / "config.yaml"
    old.write_text("densify:\n  max_gaussians: 1234\n")
    assert load_config(old, []).densify.budget == 1234
    assert load_config(old, ["densify.max_gaussians=77"]).densify.budget == 77
    with pytest.raises(InputError, match="densify.max_gaussians is the old name of densify.budget"):
        load_config(old, ["densify.budget=5"])
