"""Typed run configuration: a tree of frozen dataclasses, loaded from YAML plus ``a.b=value`` overrides.

Precedence is overrides > file > defaults. Field types come from the dataclass annotations and are checked
on load (int, float, bool, str, ``Literal[...]``, ``X | None``, ``tuple[X, ...]`` / ``tuple[X, Y]`` /
``list[X]``, nested sections); range checks live in each section's ``__post_init__`` and raise
:class:`ConfigValueError`. Every problem reaches the user as an :class:`InputError` naming the key.

To add a section: write a frozen dataclass with defaults, give it a field in :class:`Config` (or in a parent
section) with ``field(default_factory=...)``, and add its keys to ``configs/default.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from grendel_py.errors import InputError, one_line
from grendel_py.fileio import atomic_open


class ConfigValueError(ValueError):
    """A field value out of range: ``key`` is the field name within its section."""

    def __init__(self, key: str, value: object, expected: str):
        self.key = key
        self.value = value
        self.expected = expected
        super().__init__(f"{key}: expected {expected}, got {value!r}")


def _require(ok: bool, key: str, value: object, expected: str) -> None:
    """Raise :class:`ConfigValueError` unless ``ok``."""
    if not ok:
        raise ConfigValueError(key, value, expected)


@dataclass(frozen=True)
class DataConfig:
    """Where the scene is and how its images are used."""

    path: str = ""
    downscale: float = 1.0
    test_every: int = 8
    images_dir: str = "images"
    cache_dir: str = ""  # decoded photos (grendel_py.data.photo_cache); "": grendel_py_photos in the node's temp folder
    cache_map_gb: float = 4.0  # photo cache entries a rank keeps mapped at most

    def __post_init__(self) -> None:
        _require(self.downscale >= 1.0, "downscale", self.downscale, "a number >= 1")
        _require(self.test_every >= 0, "test_every", self.test_every, "an integer >= 0 (0: no test split)")
        _require(self.cache_map_gb > 0, "cache_map_gb", self.cache_map_gb, "a number > 0")


@dataclass(frozen=True)
class ModelConfig:
    """How the Gaussians are initialised."""

    sh_degree: int = 3
    init: Literal["points", "random"] = "points"
    random_points: int = 100_000
    init_opacity: float = 0.1

    def __post_init__(self) -> None:
        _require(0 <= self.sh_degree <= 3, "sh_degree", self.sh_degree, "an integer in 0..3")
        _require(self.random_points >= 2, "random_points", self.random_points, "an integer >= 2")
        _require(0.0 < self.init_opacity < 1.0, "init_opacity", self.init_opacity, "a number in (0, 1)")


@dataclass(frozen=True)
class RenderConfig:
    """Rasteriser choice and background colour (RGB in [0, 1]): photos with alpha are composited over it, and
    so is the render. ``random_background``: in training, each photo of a batch gets a random background
    instead (the same colour behind the render and the photo's transparent pixels, drawn from the seed and
    the image's number in the run, so it does not depend on the ranks), which keeps the model from
    explaining a constant background with Gaussians; evaluation uses ``background``. ``antialiased``: the
    Mip-Splatting 2D filter (gsplat's ``antialiased`` mode): each splat's opacity is scaled by
    sqrt(det(cov2d) / det(cov2d + 0.3 I)), in training, evaluation and ``grendel render``; a model trained
    with it should be rendered with it."""

    backend: Literal["torch", "cupy", "auto"] = "auto"
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    random_background: bool = False
    antialiased: bool = False

    def __post_init__(self) -> None:
        _require(all(0.0 <= c <= 1.0 for c in self.background), "background", self.background, "3 numbers in [0, 1]")


@dataclass(frozen=True)
class OptimConfig:
    """Adam learning rates per parameter group (INRIA 3DGS defaults). The position rate is multiplied by
    the scene extent and decays exponentially from ``position_lr_init`` to ``position_lr_final`` over the
    run's images. ``exposure_lr``: per-photo exposure compensation, a learned affine colour transform per
    training photo applied to the render before the loss (Adam, decaying log-linearly to a tenth over the
    run, as INRIA's 0.01 -> 0.001); 0: off."""

    position_lr_init: float = 1.6e-4
    position_lr_final: float = 1.6e-6
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20
    opacity_lr: float = 5e-2
    scaling_lr: float = 5e-3
    rotation_lr: float = 1e-3
    eps: float = 1e-15
    exposure_lr: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "exposure_lr":
                _require(value >= 0.0, f.name, value, "a number >= 0 (0: no exposure compensation)")
            else:
                _require(value > 0.0, f.name, value, "a number > 0")


@dataclass(frozen=True)
class DensifyConfig:
    """Adaptive density control. Schedules count training images, not steps. ``strategy``: ``inria`` (clone,
    split, prune, opacity reset: INRIA's defaults) or ``mcmc`` (3DGS as MCMC: relocation of dead Gaussians,
    growth by ``growth_rate`` per refinement toward ``budget``, position noise, opacity and scale
    regularisers; gsplat's defaults). Both refine at multiples of ``every_images`` between ``start_images``
    and ``stop_images``, prune or relocate below ``min_opacity``, and never let the whole model (all ranks)
    hold more than ``budget`` Gaussians; the other fields belong to one of them, as named."""

    strategy: Literal["inria", "mcmc"] = "inria"
    budget: int = 5_000_000
    start_images: int = 500
    stop_images: int = 15_000
    every_images: int = 100
    grad_threshold: float = 2e-4
    percent_dense: float = 0.01
    min_opacity: float = 0.005
    reset_opacity_every: int = 3000
    max_screen_size: float = 20.0
    max_world_size: float = 0.1
    growth_rate: float = 1.05  # mcmc
    noise_lr: float = 5e5  # mcmc
    opacity_reg: float = 0.01  # mcmc
    scale_reg: float = 0.01  # mcmc

    def __post_init__(self) -> None:
        _require(self.start_images >= 0, "start_images", self.start_images, "an integer >= 0")
        _require(self.stop_images >= 0, "stop_images", self.stop_images, "an integer >= 0 (<= start: never)")
        _require(self.every_images > 0, "every_images", self.every_images, "an integer > 0")
        _require(self.grad_threshold > 0, "grad_threshold", self.grad_threshold, "a number > 0")
        _require(self.percent_dense > 0, "percent_dense", self.percent_dense, "a number > 0")
        _require(0 <= self.min_opacity < 1, "min_opacity", self.min_opacity, "a number in [0, 1)")
        _require(self.reset_opacity_every > 0, "reset_opacity_every", self.reset_opacity_every, "an integer > 0")
        _require(self.max_screen_size > 0, "max_screen_size", self.max_screen_size, "a number > 0 (pixels)")
        _require(self.max_world_size > 0, "max_world_size", self.max_world_size, "a number > 0 (x extent)")
        _require(self.budget > 0, "budget", self.budget, "an integer > 0")
        _require(self.growth_rate >= 1.0, "growth_rate", self.growth_rate, "a number >= 1")
        _require(self.noise_lr >= 0, "noise_lr", self.noise_lr, "a number >= 0")
        _require(self.opacity_reg >= 0, "opacity_reg", self.opacity_reg, "a number >= 0")
        _require(self.scale_reg >= 0, "scale_reg", self.scale_reg, "a number >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """The training run: length and batch in images, loss weight, logging, evaluation and outputs.
    ``export``: formats the final model is written in besides ``model.ply`` (see
    :mod:`grendel_py.model.splat_formats`): ``splat`` (model.splat), ``spz`` (model.spz), ``ply-compressed``
    (model.compressed.ply)."""

    out: str = ""
    images: int = 30_000
    batch_size: int = 1
    micro_batch: int = 0  # cameras per forward and backward pass (0: the whole batch); fewer need less memory
    sh_degree_every: int = 1000
    lambda_dssim: float = 0.2
    log_every: int = 100
    eval_every: int = 7000
    eval_renders: int = 4
    checkpoint_every: int = 5000
    keep_checkpoints: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int = (
        0  # torch's CPU threads per rank (0: as many as other jobs leave cores free; see grendel_py.train.cpu_threads)
    )
    export: tuple[Literal["splat", "spz", "ply-compressed"], ...] = ()
    viewer_port: int = 0  # rank 0 serves a browser viewer of the run here (0: none); see grendel_py.viewer
    viewer_host: str = "127.0.0.1"  # the interface it listens on (0.0.0.0: every one, with no access control)
    viewer_every: int = 100  # the viewer's model is refreshed every this many images, while a browser is connected
    viewer_budget: int = 1_000_000  # Gaussians the viewer gets at most, over all ranks

    def __post_init__(self) -> None:
        _require(self.images > 0, "images", self.images, "an integer > 0")
        _require(self.batch_size > 0, "batch_size", self.batch_size, "an integer > 0")
        _require(
            self.micro_batch >= 0, "micro_batch", self.micro_batch, "an integer >= 0 (0: the whole batch in one pass)"
        )
        _require(self.sh_degree_every > 0, "sh_degree_every", self.sh_degree_every, "an integer > 0")
        _require(0.0 <= self.lambda_dssim <= 1.0, "lambda_dssim", self.lambda_dssim, "a number in [0, 1]")
        _require(self.log_every > 0, "log_every", self.log_every, "an integer > 0")
        _require(self.eval_every >= 0, "eval_every", self.eval_every, "an integer >= 0 (0: only at the end)")
        _require(self.eval_renders >= 0, "eval_renders", self.eval_renders, "an integer >= 0")
        _require(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "an integer >= 0 (0: none)")
        _require(
            self.cpu_threads >= 0,
            "cpu_threads",
            self.cpu_threads,
            "an integer >= 0 (0: the cores other jobs leave free)",
        )
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "an integer >= 1")
        _require(0 <= self.viewer_port <= 65535, "viewer_port", self.viewer_port, "a port 1..65535, or 0 (no viewer)")
        _require(bool(self.viewer_host.strip()), "viewer_host", self.viewer_host, "an interface's address or name")
        _require(self.viewer_every > 0, "viewer_every", self.viewer_every, "an integer > 0")
        _require(self.viewer_budget > 0, "viewer_budget", self.viewer_budget, "an integer > 0")


@dataclass(frozen=True)
class DistConfig:
    """How the model is shared among ranks (ignored by a single process)."""

    ownership: Literal["kd", "morton", "array-order"] = "kd"
    assignment: Literal["locality", "balanced", "rows", "majority"] = "locality"
    tolerance: float | None = None
    link_gbps: float = 100.0
    calibrate: bool = True
    batch_sampling: Literal["random", "owner-aware"] = "random"
    rebalance_threshold: float | None = 1.1
    timeout_s: float = 600.0
    lost_rank_timeout_s: float = 60.0
    share_gpus: bool = False

    def __post_init__(self) -> None:
        tol = self.tolerance
        _require(
            tol is None or tol >= 0, "tolerance", tol, "a number >= 0 (work above the fair share), or null (automatic)"
        )
        _require(self.link_gbps > 0, "link_gbps", self.link_gbps, "a bandwidth in Gbit/s > 0")
        t = self.rebalance_threshold
        _require(t is None or t >= 1.0, "rebalance_threshold", t, "a number >= 1 (largest / mean shard), or null")
        _require(self.timeout_s > 0, "timeout_s", self.timeout_s, "a number of seconds > 0")
        lost = self.lost_rank_timeout_s
        _require(lost > 0, "lost_rank_timeout_s", lost, "a number of seconds > 0")


@dataclass(frozen=True)
class Config:
    """The whole run configuration."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", self.seed, "an integer >= 0")


class _KeyError(Exception):
    """A problem with the dotted config ``key`` (internal: load_config adds where the value came from)."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


def load_config(path: str | Path | None, overrides: list[str]) -> Config:
    """Defaults, updated by the YAML file at ``path`` (if any), updated by ``overrides`` ("a.b=value",
    value parsed as YAML). Raises :class:`InputError` naming the key (and the file or override) for
    unknown keys, wrong types and out-of-range values."""
    data = _read_yaml(Path(path)) if path is not None else {}
    override_sources: dict[str, str] = {}
    for text in overrides:
        key, value = _parse_override(text)
        _merge(data, key.split("."), value)
        override_sources[key] = text
    _rename_old_keys(data)
    try:
        return _build(Config, data, "")
    except _KeyError as e:
        source = _source_override(e.key, override_sources)
        if source is not None:
            raise InputError(None, f"override {source!r}: {e}") from None
        raise InputError(path, str(e)) from None


RENAMED = {("densify", "max_gaussians"): "budget"}
"""Keys of earlier versions (section, old name) -> new name: the config.yaml of an older run still loads."""


def _rename_old_keys(data: dict[str, Any]) -> None:
    for (section, old), new in RENAMED.items():
        values = data.get(section)
        if isinstance(values, dict) and old in values:
            if new in values:
                raise InputError(None, f"{section}.{old} is the old name of {section}.{new}; give only {section}.{new}")
            values[new] = values.pop(old)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config (or a section) as plain YAML-safe data: nested dicts, lists for tuples."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML to ``path`` atomically; :func:`load_config` reads it back equal."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    with atomic_open(path, "w") as f:
        f.write(text)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of the YAML file at ``path`` ({} for an empty file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "no such config file") from None
    except UnicodeDecodeError:
        raise InputError(path, "cannot read config: not UTF-8 text") from None
    except OSError as e:
        raise InputError(path, f"cannot read config: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(path, f"invalid YAML: {_yaml_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, f"expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: "line L, column C: <problem>"."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is None or problem is None:
        return one_line(str(error))
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    return f"{where}: {problem}" + (f" ({context})" if context else "")


def _parse_override(text: str) -> tuple[str, Any]:
    """("a.b", parsed value) from "a.b=value"."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not all(key.split(".")):
        raise InputError(None, f"override {text!r}: expected KEY=VALUE with KEY like 'model.sh_degree'")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise InputError(None, f"override {text!r}: value is not valid YAML: {_yaml_problem(e)}") from None


def _merge(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``data[keys[0]][keys[1]]...`` to ``value``, deep-merging mappings."""
    head, *rest = keys
    if rest:
        if not isinstance(data.get(head), dict):
            data[head] = {}
        _merge(data[head], rest, value)
    elif isinstance(value, dict) and isinstance(data.get(head), dict):
        for k, v in value.items():
            _merge(data[head], [str(k)], v)
    else:
        data[head] = value


def _source_override(key: str, sources: dict[str, str]) -> str | None:
    """The last override that set ``key``, a section containing it, or a key inside it; None if none did."""
    related = [
        text
        for set_key, text in sources.items()
        if set_key == key or key.startswith(f"{set_key}.") or set_key.startswith(f"{key}.")
    ]
    return related[-1] if related else None


def _build(cls: type, data: Any, prefix: str) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``data``, type-checked; ``prefix`` is the
    dotted path of this section ("" at the top)."""
    section = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise _KeyError(section, f"expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    where = f"in section '{section}'" if prefix else "at the top level"
    for key in data:
        if key not in names:
            raise _KeyError(f"{prefix}{key}", f"unknown key; valid keys {where}: {', '.join(names)}")
    kwargs = {key: _convert(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigValueError as e:
        raise _KeyError(f"{prefix}{e.key}", f"expected {e.expected}, got {e.value!r}") from None
    except ValueError as e:
        raise _KeyError(section, str(e)) from None


def _convert(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (and converted: int -> float, list -> tuple)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, {} if value is None else value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key)
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            _wrong(key, value, f"one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (tuple, list):
        return _convert_sequence(origin, args, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            _wrong(key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _wrong(key, value, "an integer")
        return value
    if tp is float:
        return _convert_float(value, key)
    if tp is str:
        if not isinstance(value, str):
            _wrong(key, value, "a string")
        return value
    raise TypeError(f"config key {key}: unsupported annotation {tp!r}")


def _convert_float(value: Any, key: str) -> float:
    """A finite float from a YAML number, or from a string such as "1e-3" (YAML 1.1 reads that as text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        _wrong(key, value, "a number")
    try:
        number = float(value)
    except ValueError:
        _wrong(key, value, "a number")
    if not math.isfinite(number):
        _wrong(key, value, "a finite number")
    return number


def _convert_sequence(origin: type, args: tuple[Any, ...], value: Any, key: str) -> tuple | list:
    """A tuple or list of checked items: ``tuple[X, ...]`` and ``list[X]`` any length, ``tuple[X, Y]`` fixed."""
    variable = origin is list or (len(args) == 2 and args[1] is Ellipsis)
    item_types = [args[0]] * len(value) if variable and isinstance(value, (list, tuple)) else list(args)
    if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
        expected = "a list" if variable else f"a list of {len(args)} items"
        _wrong(key, value, expected)
    items = [_convert(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(item_types, value))]
    return origin(items)


def _wrong(key: str, value: Any, expected: str) -> typing.NoReturn:
    raise _KeyError(key, f"expected {expected}, got {value!r} ({type(value).__name__})")
