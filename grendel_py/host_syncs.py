"""Counting the host synchronisations of a piece of work: the operations that, on a GPU, make the CPU wait
for the device (a value read back, an output whose size depends on the data, a copy to the host).

:class:`HostSyncCounter` is a ``TorchDispatchMode``: it sees every aten operation and counts those that
force a synchronisation on CUDA, by kind. For work on the CPU (``device="cpu"``) it counts the operations
that WOULD synchronise on a GPU, so the budget of the training loop is tested on machines without one
(tests/test_host_syncs.py): ``Tensor.tolist`` and ``Tensor.numpy`` are counted too (no aten operations, and
there every tensor stands for a device one; ``numpy()`` of a tile table built with numpy counts as well: on
the GPU path such tensors should not exist in the hot loop). For work on a GPU (bench/gpu_check.sh) the
copy to the host is what waits, and ``x.cpu().tolist()`` is one synchronisation, not two: there only the
aten operations are counted (``tolist`` of a CUDA tensor copies it to the host through one).

The same counter also counts the step's device work, by the GPU's measure: every aten operation that runs
work on the device (``operations``: views, aliases and allocations without a fill launch nothing and are not
counted), and every launch of a CUDA kernel through a launcher wrapped by :meth:`HostSyncCounter.counted`
(``launches``). On the CPU with the kernels' host launcher, that is the number of launches the GPU step
makes, measured without a GPU (tests/test_launch_budget.py); bench/gpu_check.py counts the same on the GPU.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

aten = torch.ops.aten

_ALWAYS = {
    aten._local_scalar_dense.default: "item",  # .item(), float(t), int(t), bool(t), if t: ...
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten._unique2.default: "unique",
    aten._unique.default: "unique",
    aten.unique_dim.default: "unique",
    aten.unique_consecutive.default: "unique",
    aten.bincount.default: "bincount",  # its length is max + 1 of the data
}
_REPEAT = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}
_INDEX = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_COPY = {aten._to_copy.default, aten.copy_.default}
_NO_WORK = {
    aten.empty.memory_format,
    aten.empty_strided.default,
    aten.empty_like.default,
    aten.new_empty.default,
    aten.new_empty_strided.default,
    aten._unsafe_view.default,
    aten.lift_fresh.default,
    aten.resize_.default,
}
"""Operations that allocate or relabel memory without running anything on the device (views are found by
``is_view``)."""


def _device_of(x) -> torch.device | None:
    return x.device if isinstance(x, torch.Tensor) else None


def _kind(func, args, kwargs) -> str | None:
    """The kind of synchronisation ``func(*args, **kwargs)`` forces on CUDA, or None."""
    if func in _ALWAYS:
        return _ALWAYS[func]
    if func in _REPEAT:
        return None if kwargs.get("output_size") is not None else "repeat_interleave"
    if func in _INDEX:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "bool_index"
        return None
    if func in _COPY:
        src = args[1] if func is aten.copy_.default else args[0]
        dst = args[0].device if func is aten.copy_.default else kwargs.get("device")
        if (
            _device_of(src) is not None
            and src.device.type == "cuda"
            and dst is not None
            and torch.device(dst).type == "cpu"
        ):
            return "to_cpu"
    return None


_ROOT = Path(__file__).resolve().parents[1]
_OURS = (str(_ROOT / "grendel_py"), str(_ROOT / "partition"))


def _site() -> str:
    """``file:line`` of the innermost frame of this project's code that called the operation being counted."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_OURS) and name != __file__:
            return f"{Path(name).relative_to(_ROOT)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def counting_as_a_gpu() -> bool:
    """Whether a :class:`HostSyncCounter` counts the CPU work running here as a GPU's (``device="cpu"``): then
    a shortcut that only the CPU takes, because a read of a GPU's data would wait for it (the compositor
    leaving out finished tiles), is not taken, so that what is counted is what a GPU would do."""
    return any(isinstance(m, HostSyncCounter) and m.emulated for m in _get_current_dispatch_mode_stack())


def launches_work(func) -> bool:
    """Whether the aten operation ``func`` runs work on the device (a kernel or a copy)."""
    return not func.is_view and func not in _NO_WORK and func.namespace != "profiler"


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter(device) as c: ...`` then ``c.total``, ``c.kinds`` (a Counter by kind) and
    ``c.sites`` (a Counter by "kind at file:line" of the project's code that asked for it); ``device``: where
    the counted work runs. The device work: ``c.operations`` (aten operations, by name), ``c.launches``
    (kernel launches through launchers wrapped by :meth:`counted`, by kernel name), ``c.work_sites`` (both,
    by "name at file:line") and ``c.work`` (their total)."""

    def __init__(self, device: torch.device | str = "cpu"):
        super().__init__()
        self.emulated = torch.device(device).type == "cpu"
        self.kinds: Counter[str] = Counter()
        self.sites: Counter[str] = Counter()
        self.operations: Counter[str] = Counter()
        self.launches: Counter[str] = Counter()
        self.work_sites: Counter[str] = Counter()
        self._patched: dict[str, object] = {}
        self._active = False

    def _count(self, kind: str) -> None:
        self.kinds[kind] += 1
        self.sites[f"{kind} at {_site()}"] += 1

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    @property
    def work(self) -> int:
        """Operations and kernel launches counted."""
        return sum(self.operations.values()) + sum(self.launches.values())

    def counted(self, launch):
        """``launch`` (a kernel launcher: ``launch(name, size, *args)``), counting each call made inside this
        counter's ``with`` block in ``launches``."""

        def counting(name: str, size: int, *args) -> None:
            if size and self._active:  # CupyKernels launches nothing for no items
                self.launches[name] += 1
                self.work_sites[f"kernel {name} at {_site()}"] += 1
            launch(name, size, *args)

        return counting

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _kind(func, args, kwargs)
        if kind is not None:
            self._count(kind)
        if launches_work(func):
            name = str(func)
            self.operations[name] += 1
            self.work_sites[f"{name} at {_site()}"] += 1
        return func(*args, **kwargs)

    def __enter__(self) -> HostSyncCounter:
        for name in ("tolist", "numpy") if self.emulated else ():
            original = getattr(torch.Tensor, name)
            self._patched[name] = torch.Tensor.__dict__.get(name)  # None: inherited from the C base class

            def counted(tensor, *a, _original=original, _name=name, **k):
                self._count(_name)
                return _original(tensor, *a, **k)

            setattr(torch.Tensor, name, counted)
        self._active = True
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        for name, own in self._patched.items():
            if own is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, own)
        self._patched = {}
        self._active = False
        super().__exit__(*exc)
