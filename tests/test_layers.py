"""Nothing imports upward: every module of grendel_py/ and partition/ imports only from its own layer or the
layers below it (module-level and function-level imports alike), and partition/ is pure tensor code that
never imports grendel_py or torch.distributed."""

from __future__ import annotations

import ast

from tests.dist_util import REPO

LAYERS = (
    # the foundations: errors, files, outputs, config, counter-based draws, autograd state, sync counting;
    # partition/ (how the work is split among ranks) depends on nothing of the project
    ("grendel_py.errors", "grendel_py.fileio", "grendel_py.outputs", "grendel_py.config", "grendel_py.counter_rng",
     "grendel_py.backward_state", "grendel_py.host_syncs", "partition"),
    ("grendel_py.data",),  # cameras, scene readers, the photo cache
    ("grendel_py.model",),  # the Gaussians, their geometry, optimiser, densification, files
    ("grendel_py.render",),  # projection, binning, compositing: the two backends
    ("grendel_py.loss",),  # the photometric loss over a rank's regions
    ("grendel_py.parallel",),  # the distributed step: runtime, exchange, halo, redistribution
    ("grendel_py.train", "grendel_py.pictures", "grendel_py.view_splats", "grendel_py.viewer"),  # the loop and its observers
    ("grendel_py.synth", "grendel_py.simulate", "grendel_py.plan", "grendel_py.cli", "grendel_py.__main__",
     "grendel_py"),  # commands
)  # fmt: skip


def _layer(module: str) -> int | None:
    """The layer of ``module`` (by its longest listed prefix), None outside the project."""
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    return None if best is None else best[0]


def _imports(path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found += [
                (node.lineno, f"{base}.{a.name}" if _layer(f"{base}.{a.name}") is not None else base)
                for a in node.names
            ]
    return found


def _modules():
    for path in sorted([*(REPO / "grendel_py").rglob("*.py"), *(REPO / "partition").rglob("*.py")]):
        parts = path.relative_to(REPO).with_suffix("").parts
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_has_a_layer() -> None:
    assert [name for _, name in _modules() if _layer(name) is None] == []


def test_nothing_imports_upward() -> None:
    upward = []
    for path, name in _modules():
        for line, imported in _imports(path):
            target = _layer(imported)
            if target is not None and target > _layer(name):
                upward.append(f"{path.relative_to(REPO)}:{line} ({LAYERS[_layer(name)][0]}...) imports {imported}")
    assert upward == []


def test_partition_is_pure() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {imported}"
        for path, name in _modules()
        if name.startswith("partition")
        for line, imported in _imports(path)
        if imported.startswith(("grendel_py", "torch.distributed"))
    ]
    assert bad == []
