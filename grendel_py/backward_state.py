"""What a custom autograd Function keeps for its backward pass, freed when the backward has run.

Autograd frees the tensors given to ``save_for_backward`` once the backward has run (unless the graph is
retained), but attributes set on ``ctx`` (tile bins, routes, the compositor's snapshots) live as long as
the Function's node, which any output still referenced keeps alive: the training step keeps its rendered
tiles for statistics, and the loss keeps the graph until the backward returns, so the bins of a whole batch
would sit under the projection's backward, the largest step of a pass. :func:`save` puts every tensor of
such state (inside lists, tuples, dicts and the package's own objects) through ``save_for_backward`` and
keeps on ``ctx`` only the state's skeleton; :func:`load` rebuilds it, as fresh copies, in the backward.
``retain_graph=True`` keeps working: the tensors are then kept, and every backward rebuilds the state.

:data:`KEEP_BYTES`: the stages that can recompute in the backward what their forward computed (the
projection's intermediates, the loss's SSIM maps, the compositor's transmittance at each chunk) keep it instead
while it is small; the same bits either way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

_OWN_PACKAGES = ("grendel_py", "partition")

KEEP_BYTES = 64 << 20
"""Memory is paid for only when memory is short: a stage of a pass keeps for its backward what it could
recompute there while that takes at most this many bytes (estimated from the stage's sizes before it runs),
and recomputes it piece by piece past that. 64 MB a stage is nothing next to the steps that need the
recomputation (1080p views with millions of Gaussians: gigabytes) and covers small steps whole (a 256 x 256
view of 20,000 Gaussians, the demo's 160 x 120 views)."""


class _Slot:
    """Where a tensor of the state was: its index among the saved tensors."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def _own(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] in _OWN_PACKAGES and hasattr(obj, "__dict__")


def _walk(obj: Any, leaf: Callable[[Any], Any]) -> Any:
    """``obj`` with every leaf x replaced by ``leaf(x)``: lists, tuples, dicts and the package's own objects
    (shallow copies) are walked into; tensors and :class:`_Slot` are the leaves; anything else stays."""
    if isinstance(obj, (torch.Tensor, _Slot)):
        return leaf(obj)
    if type(obj) in (list, tuple):
        return type(obj)(_walk(item, leaf) for item in obj)
    if type(obj) is dict:
        return {key: _walk(value, leaf) for key, value in obj.items()}
    if _own(obj):
        copied = copy.copy(obj)
        for key, value in vars(obj).items():
            object.__setattr__(copied, key, _walk(value, leaf))
        return copied
    return obj


def save(ctx: Any, tensors: tuple[torch.Tensor | None, ...], **state: Any) -> None:
    """In a Function's forward: ``ctx.save_for_backward(*tensors)``, and the keyword ``state`` kept so that
    its tensors are freed with the saved ones."""
    found: list[torch.Tensor] = []

    def to_slot(tensor: torch.Tensor) -> _Slot:
        found.append(tensor)
        return _Slot(len(found) - 1)

    ctx.state_skeleton = _walk(state, to_slot)
    ctx.n_saved = len(tensors)
    ctx.save_for_backward(*tensors, *found)


def load(ctx: Any) -> tuple[tuple[torch.Tensor | None, ...], dict[str, Any]]:
    """In the backward: the ``tensors`` given to :func:`save`, and the ``state`` rebuilt."""
    saved = ctx.saved_tensors
    state = saved[ctx.n_saved :]
    return saved[: ctx.n_saved], _walk(ctx.state_skeleton, lambda slot: state[slot.index])
