"""Output folders that appear whole or not at all, and PNG images."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from grendel_py.errors import InputError
from grendel_py.fileio import os_problem, write_error


@contextlib.contextmanager
def staged_dir(out_dir: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` to fill; on success it is renamed to ``out_dir``, on error
    removed. ``out_dir`` must not exist or be an empty folder (InputError otherwise), unless ``replace``:
    then an existing folder is swapped out on success and deleted. A write that fails in it (no space left,
    say) raises WriteError naming ``out_dir``."""
    out_dir = Path(out_dir)
    if not replace and out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(out_dir, "output folder is an existing file; choose a new path")
        try:
            used = any(out_dir.iterdir())
        except OSError as e:
            raise InputError(out_dir, f"cannot list output folder: {os_problem(e)}") from None
        if used:
            raise InputError(out_dir, "output folder exists and is not empty; choose a new path")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise InputError(out_dir, f"cannot create output folder: {os_problem(e, out_dir.parent)}") from None
    try:
        try:
            yield tmp
            if out_dir.exists():
                old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
                os.replace(out_dir, old)
                os.replace(tmp, out_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out_dir)
        except (OSError, RuntimeError) as e:
            failed = write_error(e, out_dir)
            if failed is None:
                raise
            raise failed.named(out_dir, "") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Write a float image [H, W, 3] in [0, 1] (clipped) as an 8-bit RGB PNG."""
    array = (image.detach().clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    Image.fromarray(np.ascontiguousarray(array), mode="RGB").save(path, format="PNG")


def save_gray_png(values: torch.Tensor, path: str | Path) -> None:
    """Write a float image [H, W] in [0, 1] (clipped) as an 8-bit greyscale PNG."""
    array = (values.detach().clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    Image.fromarray(np.ascontiguousarray(array), mode="L").save(path, format="PNG")


def depth_preview(depth: torch.Tensor) -> torch.Tensor:
    """A depth map [H, W] (0: nothing drawn) for looking at, in [0, 1]: inverse depth scaled so the nearest
    pixel is 1 and the farthest about 0, nothing drawn 0."""
    drawn = depth > 0
    if not bool(drawn.any()):
        return torch.zeros_like(depth)
    inverse = torch.where(drawn, 1.0 / depth.clamp_min(1e-12), 0.0)
    lo, hi = float(inverse[drawn].min()), float(inverse[drawn].max())
    return torch.where(drawn, (inverse - lo) / max(hi - lo, 1e-12) * 0.95 + 0.05, 0.0)
