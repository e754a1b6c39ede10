"""One job trains in a run folder at a time: rank 0 holds a lock on ``<run>/.lock`` while the job runs.

The lock is a POSIX record lock (``fcntl.lockf``), held by the kernel for the process: a job that is killed,
even with SIGKILL, releases it, and network file systems that implement POSIX locks (NFS, Lustre mounted with
``flock``) see it from every node. The file itself stays; it holds the host and pid of the job that last
took it, which a second job names when it finds the folder taken (:class:`~grendel_py.errors.FolderBusy`).
A file system without locks gets a warning, and the run goes on unguarded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from grendel_py.errors import FolderBusy, InputError, WriteError, on_every_rank
from grendel_py.fileio import cannot_create, ensure_folder, os_problem
from grendel_py.parallel.runtime import DistContext

LOCK = ".lock"
_TAKEN = {errno.EAGAIN, errno.EACCES}  # lockf's "another process holds it"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextlib.contextmanager
def locked_run_dir(out: Path, ctx: DistContext) -> Iterator[None]:
    """Hold the lock of the run folder ``out`` (rank 0; created if missing) while the block runs; collective.
    Every rank raises FolderBusy when another job holds it. On the way out a folder this call created that
    holds nothing but the lock (a run that stopped before writing anything) is removed, and so is the lock
    file this call created when the block raised InputError (bad input writes nothing)."""
    out = Path(out)
    fd, created, made_lock, problem = None, False, False, None
    if ctx.is_main:
        created, made_lock = not out.exists(), not (out / LOCK).exists()
        try:
            fd = _take(out)
        except (FolderBusy, InputError, WriteError) as e:
            problem = e
    kinds = [FolderBusy, InputError, WriteError]
    kind = int(ctx.reduce(torch.tensor([kinds.index(type(problem)) + 1 if problem else 0]), "max"))
    bad_input = False
    try:
        if kind:
            raise on_every_rank(problem or _told(kinds[kind - 1], out))
        yield
    except InputError:
        bad_input = True
        raise
    finally:
        if fd is not None:
            nothing = {p.name for p in out.iterdir()} <= {LOCK} if out.is_dir() else False
            if (created and nothing) or (made_lock and bad_input):  # bad input writes nothing, not even the lock
                (out / LOCK).unlink(missing_ok=True)
            if created and nothing:
                with contextlib.suppress(OSError):
                    out.rmdir()
            os.close(fd)  # releases the lock


def _told(kind: type, out: Path) -> Exception:
    """What a rank other than 0 raises when rank 0 could not take the lock (rank 0's line says why)."""
    if kind is FolderBusy:
        return FolderBusy(out, "rank 0's line names it")
    if kind is WriteError:
        return WriteError(out, "the run folder's lock", "see rank 0's line")
    return InputError(out, "rank 0 cannot lock the run folder")


def _take(out: Path) -> int | None:
    """Lock ``out``'s lock file and write this job's host and pid into it; the open descriptor (closing it
    releases the lock), or None on a file system without locks."""
    ensure_folder(out)
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise cannot_create(e, path, out) from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _TAKEN:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "host and pid unknown"
            os.close(fd)
            raise FolderBusy(out, holder) from None
        if e.errno not in _UNSUPPORTED:
            os.close(fd)
            raise InputError(path, f"cannot lock the run folder: {os_problem(e)}") from None
        print(
            f"warning: {path}: this file system cannot lock files ({os_problem(e)}); nothing stops a second job "
            "from training in this folder at the same time",
            file=sys.stderr,
        )
        os.close(fd)
        return None
    with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, without its holder's name
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}\n".encode(), 0)
    return fd
