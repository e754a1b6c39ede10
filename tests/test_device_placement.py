"""One device per rank: the training path keeps its tensors on the rank's device, checked without a GPU.

The rank's device here is ``meta``: tensors with shapes and no data, on which torch raises for any
operation that mixes them with CPU tensors (as with a GPU) and autograd works. So the functions whose work
does not depend on data values (projection, loss, the exchange's packing, densification statistics, the
optimizer step, loading a checkpoint) run here with every tensor they make checked for its device, forward
and backward. (``FakeTensorMode`` on a fake ``cuda`` device was tried first: with CPU-only torch 2.13 its
views raise "not linked with support for cuda devices" and its autograd aborts the process.) Data-dependent
steps (binning, routing, halos: nonzero, unique) and copies back to the host cannot run without data; the
GPU check (bench/gpu_check.sh) covers them. The rank's device choice is tested with CUDA's queries patched.
"""

from __future__ import annotations

import pytest
import torch

from grendel_py.config import DensifyConfig, OptimConfig
from grendel_py.errors import InputError
from grendel_py.loss.pixels import HALO, region_loss
from grendel_py.model.densify import DensifyStrategy, screen_grad_norms
from grendel_py.model.gaussians import TRAINABLE, Gaussians
from grendel_py.model.optim import GaussianOptimizer
from grendel_py.parallel import runtime
from grendel_py.parallel.exchange import send_splats
from grendel_py.parallel.step import _Stopwatch
from grendel_py.render import project
from grendel_py.render.projection import pixel_radii
from tests.render_scenes import small_camera

DEV = torch.device("meta")  # the rank's device: not the CPU, and without data
CPU = torch.device("cpu")
CAMERA = small_camera()  # as the scene gives it: float64 on the CPU


def _model(n: int = 64, sh_degree: int = 2, device: torch.device = DEV) -> Gaussians:
    """Gaussians on ``device`` (on the meta device: no values, only devices and shapes)."""
    k = (sh_degree + 1) ** 2 - 1
    return Gaussians(
        means=torch.rand(n, 3, device=device),
        log_scales=torch.rand(n, 3, device=device),
        quats=torch.rand(n, 4, device=device),
        opacity_logits=torch.rand(n, device=device),
        sh0=torch.rand(n, 1, 3, device=device),
        shN=torch.rand(n, k, 3, device=device),
        ids=torch.arange(n, device=device),
    )


def _devices(*tensors: torch.Tensor) -> set[torch.device]:
    return {t.device for t in tensors}


def test_the_stand_in_device_catches_mixed_devices() -> None:
    with pytest.raises(RuntimeError, match="not on the expected device"):
        torch.zeros(3, device=DEV) + torch.zeros(3)


def test_projection_and_sending_stay_on_the_device() -> None:
    g = _model()
    for name in TRAINABLE:
        getattr(g, name).requires_grad_(True)
    splats = project(g, CAMERA, 2, "torch")
    assert _devices(*vars(splats).values()) == {DEV}
    rows = torch.arange(64, device=DEV)
    sent = send_splats(splats, rows, [64], [64], rows, runtime.DistContext(0, 1, 0, DEV, "none", "single"))
    assert _devices(*vars(sent).values()) == {DEV} and len(sent) == 64
    (sent.means2d.sum() + sent.conics.sum() + sent.opacities.sum() + sent.colors.sum()).backward()
    assert _devices(*(getattr(g, n).grad for n in TRAINABLE)) == {DEV}


def test_region_loss_on_the_device() -> None:
    h, w = 20, 24
    canvas = torch.rand(h + 2 * HALO, w + 2 * HALO, 3, device=DEV, requires_grad=True)
    gt = torch.rand(h + 2 * HALO, w + 2 * HALO, 3, device=DEV)
    owned = torch.ones(h, w, dtype=torch.bool, device=DEV)
    loss = region_loss(canvas, gt, 0.2, 100 * 100, owned)
    loss.backward()
    assert loss.device == DEV and canvas.grad.device == DEV


def test_densification_statistics_on_the_device() -> None:
    g = _model()
    splats = project(g, CAMERA, 2, "torch")
    densify = DensifyStrategy(DensifyConfig(), extent=1.0, seed=0)
    rows = torch.arange(64, device=DEV)
    norms = screen_grad_norms(torch.rand(64, 2, device=DEV), 37, 29)
    assert norms.device == DEV
    densify.observe(pixel_radii(splats.extents), norms, rows, 64)
    densify.observe(pixel_radii(splats.extents), None, rows, 64)
    assert _devices(*densify.state_dict().values()) == {DEV}


def _moments(state: dict) -> list[torch.Tensor]:
    return [v for f in TRAINABLE for k, v in state["adam"][f].items() if k != "step"]


def test_optimizer_step_on_the_device() -> None:
    opt = GaussianOptimizer(_model(), OptimConfig(), extent=1.0, batch_size=4)
    for name in TRAINABLE:
        getattr(opt.gaussians, name).grad = torch.rand_like(getattr(opt.gaussians, name))
    opt.update_lr(10, 100)
    opt.step()
    live = opt.state_dict()
    assert _devices(*live["params"].values(), live["ids"], *_moments(live)) == {DEV}


def test_a_checkpoint_goes_to_and_comes_back_from_the_host() -> None:
    """Saved: copies on the CPU, not views of the live state; loaded: onto the model's device."""
    host = GaussianOptimizer(_model(device=CPU), OptimConfig(), extent=1.0)
    for name in TRAINABLE:
        getattr(host.gaussians, name).grad = torch.ones_like(getattr(host.gaussians, name))
    host.step()
    saved = host.state_dict(CPU)
    assert _devices(*saved["params"].values(), *_moments(saved)) == {CPU}
    assert saved["params"]["means"].data_ptr() != host.gaussians.means.data_ptr()
    rank = GaussianOptimizer(_model(), OptimConfig(), extent=1.0, batch_size=4)
    rank.load_state_dict(saved)
    assert _devices(*(getattr(rank.gaussians, n) for n in TRAINABLE), rank.gaussians.ids) == {DEV}
    assert _devices(*_moments(rank.state_dict())) == {DEV}


def test_stopwatch_times_the_cpu_block() -> None:
    with _Stopwatch(CPU) as seconds:
        sum(range(10_000))
    assert 0 < seconds() < 1


class _FakeCuda:
    """torch.cuda's queries for a node with ``n`` GPUs."""

    def __init__(self, n: int):
        self.n, self.current = n, None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.n)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: setattr(self, "current", d))


@pytest.mark.parametrize(
    "gpus, local_rank, want, share, device, backend",
    [
        (0, 0, "auto", False, "cpu", "gloo"),
        (2, 1, "auto", False, "cuda:1", "cpu:gloo,cuda:nccl"),
        (2, 1, "cpu", False, "cpu", "gloo"),
        (2, 1, "cuda", False, "cuda:1", "cpu:gloo,cuda:nccl"),
        (1, 1, "auto", True, "cuda:0", "gloo"),  # two ranks share one GPU: NCCL would refuse
        (1, 3, "auto", False, "cuda:0", "cpu:gloo,cuda:nccl"),  # srun --gpus-per-task=1: each rank sees its own
    ],
)
def test_rank_device(monkeypatch, gpus, local_rank, want, share, device, backend) -> None:
    cuda = _FakeCuda(gpus)
    cuda.install(monkeypatch)
    assert runtime._device(local_rank, want, share) == (torch.device(device), backend)
    assert cuda.current == (None if device == "cpu" else torch.device(device).index)


def test_more_ranks_than_gpus_is_refused_unless_shared(monkeypatch) -> None:
    _FakeCuda(2).install(monkeypatch)
    with pytest.raises(
        InputError, match="local rank 2 has no GPU of its own: this process sees 2.*dist.share_gpus=true"
    ):
        runtime._device(2, "auto", False)


def test_ranks_on_one_gpu_are_found() -> None:
    gpus = [("a", "GPU-1"), ("a", "GPU-2"), ("b", "GPU-1"), ("a", "GPU-1"), ("b", "GPU-1")]
    assert runtime.shared_gpus(gpus) == [(0, 3, "a", "GPU-1"), (2, 4, "b", "GPU-1")]
    assert runtime.shared_gpus(gpus[:3]) == []


def test_cuda_without_a_gpu_is_refused(monkeypatch) -> None:
    _FakeCuda(0).install(monkeypatch)
    with pytest.raises(InputError, match="train.device=cuda but .* sees no CUDA GPU"):
        runtime._device(0, "cuda", False)
