"""The torch backend on a CUDA device gives the CPU's images and gradients (marker ``gpu``)."""

from __future__ import annotations

import pytest
import torch

from grendel_py.model.gaussians import Gaussians
from grendel_py.render import render
from tests.render_scenes import random_gaussians, small_camera

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_torch_backend_on_cuda_matches_cpu() -> None:
    cam = small_camera(133, 71)
    cpu = random_gaussians(2000, seed=3, sh_degree=3, dtype=torch.float32, opacity_shift=1.0)
    gpu = Gaussians(**{k: v.cuda() for k, v in vars(cpu).items()})
    bg = torch.tensor([0.1, 0.2, 0.3])
    grads = []
    for g, dev in ((cpu, "cpu"), (gpu, "cuda")):
        leaves = {
            k: getattr(g, k).clone().requires_grad_(True)
            for k in ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")
        }
        out = render(Gaussians(**leaves, ids=g.ids), cam, bg.to(dev))
        (out.image * torch.linspace(-1, 1, 3, device=dev)).sum().backward()
        grads.append((out.image.detach().cpu(), {k: v.grad.cpu() for k, v in leaves.items()}))
    (img_c, g_c), (img_g, g_g) = grads
    torch.testing.assert_close(img_g, img_c, rtol=1e-4, atol=1e-5)
    for k in g_c:
        torch.testing.assert_close(g_g[k], g_c[k], rtol=1e-3, atol=1e-4 * float(g_c[k].abs().max()), msg=k)
