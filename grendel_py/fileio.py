"""Atomic file output: every file a run writes appears whole or not at all.

Output paths that cannot be written (a read-only folder, a parent that is a file, a name that is a folder)
raise :class:`InputError` naming the output and the reason, before anything is created. A write that fails
once started, or for want of room (no space left, quota exceeded, an I/O error), raises :class:`WriteError`
naming the file; nothing of it is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from grendel_py.errors import InputError, WriteError

# a disk that is full or failing, not a path that is wrong: WriteError even where the file is created
ROOM_OR_IO = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing one of ``path`` and its parents, if it is not a folder."""
    found = next((p for p in (path, *path.parents) if p.exists()), None)
    return None if found is None or found.is_dir() else found


def os_problem(error: OSError, path: str | Path | None = None) -> str:
    """A short reason for ``error`` raised on ``path`` (or below it), for one error line: "<ancestor> is a
    file, not a folder" when a parent of ``path`` is a file, else the system's message ("Permission denied")."""
    if path is not None and isinstance(error, (FileExistsError, NotADirectoryError)):
        blocker = _file_in_the_way(Path(path))
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
    return error.strerror or str(error)


def write_error(error: BaseException, path: str | Path, what: str = "") -> WriteError | None:
    """``error`` as a WriteError naming ``path`` (and ``what``) when it is a failed write: an OSError, or an
    error raised while handling one (torch.save's zip writer raises RuntimeError over the OSError); else None."""
    if isinstance(error, WriteError):
        return error
    seen = error
    while isinstance(seen, (OSError, RuntimeError)):
        if isinstance(seen, OSError):
            return WriteError(path, what, os_problem(seen))
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return None


def cannot_create(error: OSError, path: Path, where: Path | None = None) -> Exception:
    """Why ``path`` cannot be created: WriteError when the disk is full or failing, else InputError (a path
    that is wrong: no permission, a parent that is a file)."""
    if error.errno in ROOM_OR_IO:
        return WriteError(path, "", os_problem(error))
    return InputError(path, f"cannot write: {os_problem(error, where)}")


def ensure_folder(folder: str | Path, output: str | Path | None = None) -> None:
    """Create ``folder`` and its missing parents. When that is impossible, InputError naming ``output`` ("cannot
    write: <reason>") or, without one, ``folder`` ("cannot create folder: <reason>")."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in ROOM_OR_IO:
            raise WriteError(folder, "", os_problem(e)) from None
        reason = os_problem(e, folder)
        if output is None:
            raise InputError(folder, f"cannot create folder: {reason}") from None
        if _file_in_the_way(folder) is None:
            reason = f"cannot create folder {folder}: {reason}"
        raise InputError(output, f"cannot write: {reason}") from None


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing (mode ``"wb"``, or ``"w"`` for UTF-8 text); on
    success fsync it and rename it onto ``path``, on error remove it. Creates missing parent directories;
    the file gets the usual umask-based permissions. InputError naming ``path`` when it cannot be written
    there; WriteError naming it when a write fails (the caller's writes too: see :func:`write_error`; other
    errors the caller raises pass through unchanged)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder; give a file name")
    ensure_folder(path.parent, path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise cannot_create(e, path, path.parent) from None
    try:
        try:
            with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            failed = write_error(e, path)
            if failed is None:
                raise
            raise failed from None
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise cannot_create(e, path, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
