"""Training on the kernel path equals training on the torch spec: a real ``train()`` on the synthetic object
scene, once with the torch backend and once with the CUDA kernels (projection of the batch, binning,
rasterization and the fused loss) on the host launcher of the kernel tests, with densification on. The
kernels compute in another order than torch (float rounding), and Adam's first steps move a parameter by
its learning rate whatever the size of its gradient, so the models are compared by what they render: each
test view's PSNR within 0.01 dB, and the same number of Gaussians after densification."""

from __future__ import annotations

from pathlib import Path

import pytest

from grendel_py.config import load_config
from grendel_py.parallel.runtime import single_process
from grendel_py.render.kernel_backend import KernelBackend
from grendel_py.train.loop import train
from tests.host_kernels import HostKernels, compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs a host C++ compiler (g++)")


def test_kernel_path_trains_as_the_spec(object_scene_seed2: Path, tmp_path: Path) -> None:
    runs = {}
    for name, renderer in (("torch", None), ("kernels", KernelBackend(HostKernels().launch))):
        cfg = load_config(
            None,
            [
                f"data.path={object_scene_seed2}",
                "data.downscale=2",
                f"train.out={tmp_path / name}",
                "train.images=60",
                "train.batch_size=2",
                "train.eval_every=0",
                "train.checkpoint_every=0",
                "render.backend=torch",
                "densify.start_images=20",
                "densify.every_images=20",
            ],
        )
        runs[name] = train(cfg, single_process("cpu"), renderer=renderer)
    spec, kernels = runs["torch"], runs["kernels"]
    assert kernels["num_gaussians"] == spec["num_gaussians"] != 4604  # densification happened, alike
    for a, b in zip(kernels["test"]["views"], spec["test"]["views"]):
        assert a["name"] == b["name"] and abs(a["psnr"] - b["psnr"]) < 0.01, (a, b)
