"""bench/peer.py, gsplat side by side with our step, on the CPU: our scene in gsplat's conventions is what gsplat's
own torch reference projects as our spec does (a wrong quaternion order is caught), its loss on the fused
kernels (through the host launcher) is the torch spec's, and the image agreement catches a different image."""

from __future__ import annotations

import pytest
import torch

from bench import peer
from bench.render_speed import bench_scene
from grendel_py.render import render
from tests.host_kernels import HostKernels


@pytest.fixture(scope="module")
def scene():
    return bench_scene(1500, 80, 48, "cpu")


def test_gsplat_sees_our_scene(scene) -> None:
    gaussians, camera = scene
    result = peer.conventions(gaussians, camera)
    assert result["ok"], result
    assert result["splats_both_draw"] > 1000 and result["only_ours_draws"] == 0
    planted = peer.conventions(gaussians, camera, plant=True)
    assert not planted["ok"] and planted["max_relative_error"]["conics"] > 0.1


def test_stand_in_draws_our_image_and_agreement_catches_another(scene) -> None:
    gaussians, camera = scene
    theirs = peer.spec_rasterization(**peer.gsplat_inputs(gaussians, [camera]), packed=False)[0][0]
    ours = render(gaussians, camera).image
    assert peer.agreement(theirs, ours)["ok"]
    assert not peer.agreement(theirs, ours * 0.95)["ok"]


def test_loss_on_the_fused_kernels_is_the_spec() -> None:
    """The peer's loss on the fused kernels (each image one region with its halo, all pixels owned), as on
    the GPU, against the torch spec: value and gradient."""
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 21, 35, 3, generator=g)
    photos = [torch.rand(21, 35, 3, generator=g) for _ in range(2)]
    values, grads = [], []
    for launch in (None, HostKernels().launch):
        leaf = images.clone().requires_grad_(True)
        loss = peer._loss(leaf, photos, 0.2, launch)
        loss.backward()
        values.append(loss.detach())
        grads.append(leaf.grad)
    torch.testing.assert_close(values[1], values[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5 * float(grads[0].abs().max()))


def test_peer_step_times_a_training_step(scene) -> None:
    gaussians, camera = scene
    cameras = [camera]
    photos = [torch.rand(48, 80, 3, generator=torch.Generator().manual_seed(1))]
    before = gaussians.means.clone()
    result = peer.peer_step(peer.spec_rasterization, gaussians, cameras, photos, 1, 0.2)
    assert result["rasterizer"] == "torch spec (stand-in)"
    assert result["seconds_per_iteration"] > 0 and result["rasterize_forward_backward_seconds"] > 0
    assert torch.equal(gaussians.means, before)  # the peer trains copies of its own
