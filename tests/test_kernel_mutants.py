"""Planted mutants: each kernel of cuda/ with one small change, built with the host runtime
(tests/host_runtime.py), must fail the spec test that covers it (tests/test_kernels.py, tests/test_loss_kernels.py). A test that a wrong
kernel passes checks nothing; this shows, kernel by kernel, that it would not.

A mutant is a text substitution in one source (which must occur exactly once) in a copy of cuda/; the
kernels that share the mutated function are all named. Mutants that would write out of bounds (counting
fewer keys than are written) are not planted: they would crash the test process instead of failing a check.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from grendel_py.render.cuda_kernels import CUDA_DIR, KERNELS
from grendel_py.render.kernel_backend import KernelBackend
from tests.host_runtime import RuntimeKernels, RuntimeLibrary, available

pytestmark = pytest.mark.skipif(not available(), reason="needs g++ on x86-64")


@dataclass(frozen=True)
class Mutant:
    kernels: tuple[str, ...]  # the kernels the mutated code runs in
    source: str  # file of cuda/
    original: str
    mutated: str
    check: str  # the spec test that must fail: "module.function" of tests/
    args: tuple = ()  # its arguments after the implementation


MUTANTS = [
    Mutant(
        ("project_forward",),
        "project.cuh",
        "footprint(cam, mean, quats + 4 * i, scale, opacities[i], width",
        "footprint(cam, mean, quats + 4 * i, scale, 0.5f * opacities[i], width",
        "test_kernels.test_projection_matches_spec",
        ("random", 1, False),
    ),
    Mutant(
        ("project_backward",),
        "project.cuh",
        "v_conics + 3 * i, v_depths[i], v_opacities_out[i]",
        "v_conics + 3 * i, 0.5f * v_depths[i], v_opacities_out[i]",
        "test_kernels.test_projection_matches_spec",
        ("random", 1, False),
    ),
    Mutant(
        ("project_visible",),
        "project.cuh",
        "return f.ex > 0 ? 1 : 0;",
        "return f.ex >= 0 ? 1 : 0;",
        "test_kernels.test_batch_projection_matches_spec",
        ("city", 3, False),
    ),
    Mutant(
        ("project_packed_forward",),
        "project.cuh",
        "write_splat(cam, f, mean, coeffs, D, j,",
        "write_splat(cam, f, mean, coeffs, D > 0 ? D - 1 : 0, j,",
        "test_kernels.test_batch_projection_matches_spec",
        ("random", 3, False),
    ),
    Mutant(
        ("project_packed_backward",),
        "project.cuh",
        "g_opacity_logits[i] += v_opacity",
        "g_opacity_logits[i] = v_opacity",
        "test_kernels.test_batch_projection_matches_spec",
        ("random", 3, False),
    ),
    Mutant(
        ("count_intersections", "emit_keys"),
        "bin.cuh",
        "return q_min <= s.log_reach + CULL_SLACK",
        "return q_min + 1.f <= s.log_reach + CULL_SLACK",
        "test_kernels.test_binning_matches_spec",
        ("random",),
    ),
    Mutant(
        ("count_tile_pairs", "route_splats", "count_intersections", "emit_keys"),
        "batch.cuh",
        "while (b + 1 < n_cams && cams[(b + 1) * GRID_FIELDS] <= i) ++b;",
        "while (b + 1 < n_cams && cams[(b + 1) * GRID_FIELDS] < i) ++b;",
        "test_kernels.test_pairs_match_spec",
    ),
    Mutant(
        ("route_splats",),
        "bin.cu",
        "reach[owners[tile] * n + i] = 1;",
        "reach[owners[tile - (tile > 0)] * n + i] = 1;",
        "test_kernels.test_pairs_match_spec",
    ),
    Mutant(
        ("emit_keys",),
        "bin.cuh",
        "keys[pos++] = ((i64)slot << SLOT_SHIFT) | depth_rank;",
        "keys[pos++] = ((i64)slot << SLOT_SHIFT) | (depth_rank ^ 1);",
        "test_kernels.test_binning_matches_spec",
        ("dense",),
    ),
    Mutant(
        ("tile_ranges",),
        "bin.cuh",
        "for (i64 s = prev + 1; s <= slot; ++s) offsets[s] = j;",
        "for (i64 s = prev + 1; s <= slot; ++s) offsets[s] = j + (j + 1 < m);",
        "test_kernels.test_binning_matches_spec",
        ("random",),
    ),
    Mutant(
        ("rasterize_forward", "rasterize_backward"),
        "batch.cuh",
        "while (b + 1 < n_cams && cams[(b + 1) * GRID_FIELDS + 4] <= tile) ++b;",
        "while (b + 1 < n_cams && cams[(b + 1) * GRID_FIELDS + 4] < tile) ++b;",
        "test_kernels.test_a_batch_of_cameras_matches_spec",
    ),
    Mutant(
        ("rasterize_forward",),
        "rasterize.cu",
        "out_rgb[3 * out + ch] = st.rgb[ch] + st.T * background[ch];",
        "out_rgb[3 * out + ch] = st.rgb[ch] + background[ch];",
        "test_kernels.test_rasterize_matches_spec",
        ("random",),
    ),
    Mutant(
        ("rasterize_backward",),
        "rasterize.cu",
        "atomicAdd(v_opacities + id, s[5]);",
        "atomicAdd(v_opacities + id, s[4]);",
        "test_kernels.test_rasterize_matches_spec",
        ("random",),
    ),
    Mutant(
        ("loss_forward",),
        "loss.cu",
        "const int centre = 3 * ((threadIdx.y + HALO) * PATCH + threadIdx.x + HALO);",
        "const int centre = 3 * ((threadIdx.y + HALO) * PATCH + threadIdx.x + HALO - 1);",
        "test_loss_kernels.test_loss_matches_spec",
        ("batch", 0.2),
    ),
    Mutant(
        ("loss_backward",),
        "loss.cu",
        "const int r = y0 - 2 * HALO + k / PATCH, c = x0 - 2 * HALO + k % PATCH;",
        "const int r = y0 - 2 * HALO + 1 + k / PATCH, c = x0 - 2 * HALO + k % PATCH;",
        "test_loss_kernels.test_loss_matches_spec",
        ("batch", 0.2),
    ),
]


def test_every_kernel_has_a_mutant() -> None:
    assert {k for m in MUTANTS for k in m.kernels} == set(KERNELS)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[f"{m.kernels[-1]}-{m.source}" for m in MUTANTS])
def test_planted_mutant_fails_its_spec_test(mutant: Mutant, tmp_path: Path) -> None:
    for path in CUDA_DIR.glob("*.cu*"):
        shutil.copy(path, tmp_path)
    target = tmp_path / mutant.source
    text = target.read_text()
    assert text.count(mutant.original) == 1, f"{mutant.source}: the mutant's original text must occur once"
    target.write_text(text.replace(mutant.original, mutant.mutated))
    signatures: dict[Path, dict[str, tuple[str, ...]]] = {}
    for name, kernel in KERNELS.items():
        signatures.setdefault(tmp_path / kernel.source, {})[name] = kernel.args
    impl = (
        KernelBackend(RuntimeKernels(seed=1, workers=2, library=RuntimeLibrary(signatures)).launch),
        torch.device("cpu"),
    )
    module, name = mutant.check.split(".")
    check = getattr(importlib.import_module(f"tests.{module}"), name)
    check(
        (KernelBackend(RuntimeKernels(seed=1, workers=2).launch), torch.device("cpu")), *mutant.args
    )  # unmutated: passes
    with pytest.raises(AssertionError):
        check(impl, *mutant.args)
