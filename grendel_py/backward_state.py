"""What a custom autograd Function keeps for its backward pass, freed when the backward has run.

Autograd frees the tensors given to ``save_for_backward`` once the backward has run (unless the graph is
retained), but attributes set on ``ctx`` (tile bins, routes, the compositor's snapshots) live as long as
the Function's node, which any output still referenced keeps alive: the training step keeps its rendered
tiles for statistics, and the loss keeps the graph until the backward returns, so the bins of a whole batch
would sit under the projection's backward, the largest step of a pass. :func:`save` puts every tensor of
such state (inside lists, tuples, dicts and the package's own objects) through ``save_for_backward`` and
keeps on ``ctx`` only the state's skeleton; :func:`load` rebuilds it, as fresh copies, in the backward.
``retain_graph=True`` keeps working: the tensors are then kept, and every backward rebuilds the state.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

_OWN_PACKAGES = ("grendel_py", "partition")


class _Slot:
    """Where a tensor of the state was: its index among the saved tensors."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def _own(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] in _OWN_PACKAGES and hasattr(obj, "__dict__")


def _pack(obj: Any, found: list[torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        found.append(obj)
        return _Slot(len(found) - 1)
    if type(obj) in (list, tuple):
        return type(obj)(_pack(item, found) for item in obj)
    if type(obj) is dict:
        return {key: _pack(value, found) for key, value in obj.items()}
    if _own(obj):
        skeleton = copy.copy(obj)
        for key, value in vars(obj).items():
            object.__setattr__(skeleton, key, _pack(value, found))
        return skeleton
    return obj


def _unpack(obj: Any, tensors: tuple[torch.Tensor, ...]) -> Any:
    if isinstance(obj, _Slot):
        return tensors[obj.index]
    if type(obj) in (list, tuple):
        return type(obj)(_unpack(item, tensors) for item in obj)
    if type(obj) is dict:
        return {key: _unpack(value, tensors) for key, value in obj.items()}
    if _own(obj):
        state = copy.copy(obj)
        for key, value in vars(obj).items():
            object.__setattr__(state, key, _unpack(value, tensors))
        return state
    return obj


def save(ctx: Any, tensors: tuple[torch.Tensor | None, ...], **state: Any) -> None:
    """In a Function's forward: ``ctx.save_for_backward(*tensors)``, and the keyword ``state`` kept so that
    its tensors are freed with the saved ones."""
    found: list[torch.Tensor] = []
    ctx.state_skeleton = _pack(state, found)
    ctx.n_saved = len(tensors)
    ctx.save_for_backward(*tensors, *found)


def load(ctx: Any) -> tuple[tuple[torch.Tensor | None, ...], dict[str, Any]]:
    """In the backward: the ``tensors`` given to :func:`save`, and the ``state`` rebuilt."""
    saved = ctx.saved_tensors
    return saved[: ctx.n_saved], _unpack(ctx.state_skeleton, saved[ctx.n_saved :])
