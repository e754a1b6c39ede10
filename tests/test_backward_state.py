"""backward_state: a Function's state outside its inputs is freed once its backward has run."""

from __future__ import annotations

import gc
import weakref

import torch

from grendel_py.backward_state import load, save
from grendel_py.render.intersect import TileBins


class _Scale(torch.autograd.Function):
    """y = x * w[index]; the state (a TileBins holding ``index``, a list holding ``w``) is not an input."""

    @staticmethod
    def forward(ctx, x, bins, w):
        save(ctx, (x,), bins=bins, weights=[w, 2])
        return x * w[bins.splat_index]

    @staticmethod
    def backward(ctx, grad):
        (x,), state = load(ctx)
        w, two = state["weights"]
        assert two == 2 and isinstance(state["bins"], TileBins)
        return grad * w[state["bins"].splat_index], None, None


def _case():
    index = torch.tensor([2, 0, 1, 1])
    bins = TileBins(tile_ids=torch.tensor([0]), splat_index=index, offsets=torch.tensor([0, 4]), host_counts=[4])
    return torch.ones(4, requires_grad=True), bins, torch.tensor([1.0, 2.0, 3.0])


def test_state_is_freed_when_the_backward_has_run_though_the_output_lives() -> None:
    x, bins, w = _case()
    y = _Scale.apply(x, bins, w)
    index = weakref.ref(bins.splat_index)
    del bins
    gc.collect()
    assert index() is not None  # the graph holds it until the backward
    y.sum().backward()
    gc.collect()
    assert y.grad_fn is not None and index() is None  # the output (and its node) live on; the state does not
    assert torch.equal(x.grad, torch.tensor([3.0, 1.0, 2.0, 2.0]))


def test_a_retained_graph_rebuilds_the_state_for_every_backward() -> None:
    x, bins, w = _case()
    y = _Scale.apply(x, bins, w)
    y.sum().backward(retain_graph=True)
    y.sum().backward()
    assert torch.equal(x.grad, 2 * torch.tensor([3.0, 1.0, 2.0, 2.0]))
