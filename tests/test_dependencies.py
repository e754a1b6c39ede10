"""Every third-party module the project imports is provided by a requirement declared in pyproject.toml, so
README's install commands bring everything the code needs, on any machine, dirty or clean.

Two checks, both independent of what happens to be installed by hand:
- static: the imports written in grendel_py/, partition/, tests/ and bench/ (read with ``ast``). A module-level
  import of the package must come from a core dependency (an ``import`` of the package would fail without
  it); imports inside functions (optional backends, MPI) and those of the tests and benchmarks may come from
  an extra.
- dynamic: a fresh interpreter imports every module of the package and every module the code names
  (``torch.utils.tensorboard`` too), and each third-party distribution that got loaded along the way must be
  declared or required, directly or through other requirements, by a declared one. This is what catches a
  library that a dependency only loads on demand (TensorBoard behind ``torch.utils.tensorboard``).
"""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grendel_py", "partition")
FIRST_PARTY = {*PACKAGES, "tests", "bench"}
CORE = "core"  # the group name of [project].dependencies


def _normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1))


def declared() -> dict[str, set[str]]:
    """Distribution name -> the groups declaring it: "core" and the extras' names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {CORE: project.get("dependencies", []), **project.get("optional-dependencies", {})}
    found: dict[str, set[str]] = {}
    for group, specs in groups.items():
        for spec in specs:
            found.setdefault(_requirement_name(spec), set()).add(group)
    return found


def required_closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they require, transitively, as far as they are installed (requirements
    of the requirements' own extras are not followed)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            marker = spec.partition(";")[2]
            if "extra" not in marker:
                todo.append(_requirement_name(spec))
    return seen


def written_imports(folder: Path) -> list[tuple[str, Path, bool]]:
    """(dotted module, file, at module level) for every absolute import in the .py files under ``folder``;
    ``from a.b import c`` gives both ``a.b`` and ``a.b.c`` (c may be a submodule)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names if a.name != "*")]
            else:
                continue
            found += [(name, path, id(node) in top) for name in names]
    return found


def _third_party(module: str) -> bool:
    top = module.partition(".")[0]
    return top not in FIRST_PARTY and top not in sys.stdlib_module_names and top != "__future__"


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    """Top-level module -> the installed distributions providing it (scans every distribution: cached)."""
    return metadata.packages_distributions()


def _providers(top: str, declared_names: dict[str, set[str]]) -> set[str] | None:
    """The distributions that provide the top-level module ``top``: from the installed metadata, or, when
    it is not installed here, the declared requirements named like it (``cupy`` -> ``cupy-cuda13x``)."""
    installed = _distributions().get(top)
    if installed:
        return {_normalize(d) for d in installed}
    n = _normalize(top)
    like = {d for d in declared_names if d == n or d.startswith(n + "-")}
    return like or None


def test_written_imports_are_declared() -> None:
    groups = declared()
    problems = []
    for folder in sorted(FIRST_PARTY):
        for module, path, module_level in written_imports(ROOT / folder):
            if not _third_party(module):
                continue
            top = module.partition(".")[0]
            providers = _providers(top, groups)
            where = path.relative_to(ROOT)
            if providers is None:
                problems.append(f"{where}: imports {top}, which no requirement in pyproject.toml provides")
                continue
            allowed = {g for d in providers for g in groups.get(d, ())}
            if folder in PACKAGES and module_level:
                if CORE not in allowed:
                    wanted = ", ".join(sorted(providers))
                    problems.append(
                        f"{where}: imports {top} at module level; {wanted} must be a core dependency"
                        + (f" (declared only in the extras {sorted(allowed)})" if allowed else "")
                    )
            elif not allowed:
                problems.append(
                    f"{where}: imports {top} (distribution {', '.join(sorted(providers))}), "
                    "declared neither as a dependency nor in an extra"
                )
    assert not problems, "\n".join(sorted(set(problems)))


# Run in a fresh interpreter: import each module, note which top-level modules appeared, name their files.
_PROBE = r"""
import importlib, json, pkgutil, sys
wanted = json.loads(sys.argv[1])
for package in ("grendel_py", "partition"):
    modules = pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")
    wanted += [m.name for m in modules if not m.name.endswith(".__main__")]  # __main__ would run the CLI
result = {}
for name in wanted:
    before = {m.partition(".")[0] for m in list(sys.modules)}
    try:
        importlib.import_module(name)
        error = None
    except ModuleNotFoundError as e:
        error = None if e.name == name else f"{type(e).__name__}: {e}"  # "a.b.c" may be a class, not a module
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    new = {m.partition(".")[0] for m in list(sys.modules)} - before
    files = {m: getattr(sys.modules.get(m), "__file__", None) for m in new}
    result[name] = {"error": error, "loaded": files}
print(json.dumps(result))
"""


def _installed_top_level(file: Path) -> str | None:
    """The top-level name under which ``file`` lies in a site-packages folder (``scipy`` for a Cython module
    that scipy registers as ``_cyutility``), or None when it lies in none."""
    file = file.resolve()
    for entry in map(Path, sys.path):
        if entry.name in ("site-packages", "dist-packages") and entry.resolve() in file.parents:
            return file.relative_to(entry.resolve()).parts[0].split(".")[0]
    return None


def test_loaded_distributions_are_declared() -> None:
    groups = declared()
    closure = required_closure(set(groups))
    wanted = sorted({m for f in PACKAGES for m, _, _ in written_imports(ROOT / f) if _third_party(m)})
    # modules of uninstalled optional backends (cupy, the extra for CUDA) are covered by the static check
    wanted = [m for m in wanted if _distributions().get(m.partition(".")[0])]
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(wanted)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    ).stdout
    problems = []
    for name, seen in json.loads(out).items():
        if seen["error"]:
            problems.append(f"import {name} fails: {seen['error']}")
        for module, file in seen["loaded"].items():
            if module in FIRST_PARTY or module in sys.stdlib_module_names or file is None:
                continue
            top = _installed_top_level(Path(file))
            if top is None or top in FIRST_PARTY:
                continue  # the interpreter's own, or this checkout's
            dists = _distributions().get(top)
            if dists is None:
                problems.append(f"import {name} loads {module} ({file}), which belongs to no installed distribution")
            elif not {_normalize(d) for d in dists} & closure:
                problems.append(
                    f"import {name} loads {module} (distribution {', '.join(dists)}), which no "
                    "requirement in pyproject.toml declares or requires"
                )
    assert not problems, "\n".join(sorted(set(problems)))
