"""The exceptions the ``grendel`` command turns into one line, and its exit statuses.

Every reader raises :class:`InputError` naming the file and the problem (exit status :data:`EXIT_INPUT`); a
write that fails while a command runs (no space left, quota exceeded, an I/O error) raises
:class:`WriteError` naming the folder and what was being written (:data:`EXIT_WRITE`); a run folder that
another job trains in raises :class:`FolderBusy` (:data:`EXIT_BUSY`).
"""

from __future__ import annotations

from pathlib import Path

EXIT_INPUT = 2  # bad input: one line "error: <file>: <problem>", nothing written
EXIT_LOST_RANK = 3  # another rank of the job died or hung: one line naming it; the last checkpoint is intact
EXIT_BUSY = 73  # the run folder is locked by another job (host, pid in the line); nothing written (EX_CANTCREAT)
EXIT_WRITE = (
    74  # a write failed (no space, quota, I/O error): one line; the last complete checkpoint is intact (EX_IOERR)
)
EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGUSR1 after writing a checkpoint: run again with --auto-resume (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): after writing a checkpoint, or at once on a second Ctrl-C


class InputError(Exception):
    """Bad input: ``path`` is the offending file (or None), ``problem`` says what is wrong with it."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


def on_every_rank(error: Exception) -> Exception:
    """``error``, marked as raised by every rank of the job at the same point (after a collective that told
    them all), so that the ranks may still meet once more on their way out (see
    :class:`~grendel_py.parallel.watchdog.Watchdog`)."""
    error.on_every_rank = True
    return error


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) as one space: a library's message in an error line."""
    return " ".join(text.split())


class WriteError(Exception):
    """A write that failed while running: ``path`` the file or folder being written, ``what`` it is (for the
    line: "cannot write <what>"), ``reason`` the system's words ("No space left on device"), ``then`` what is
    left behind and how to go on (may be empty)."""

    def __init__(self, path: str | Path, what: str, reason: str, then: str = ""):
        self.path, self.what, self.reason, self.then = Path(path), what, reason, then
        said = f"{self.path}: cannot write{' ' + what if what else ''}: {reason}"
        super().__init__(said + (f"; {then}" if then else ""))

    def named(self, path: str | Path, what: str, then: str = "") -> WriteError:
        """The same failure told of ``path`` (a folder above the file, say) as ``what``."""
        return WriteError(path, what, self.reason, then or self.then)


class FolderBusy(Exception):
    """The run folder ``path`` is locked by another job, ``holder`` (its host and pid, as it wrote them)."""

    def __init__(self, path: str | Path, holder: str):
        self.path, self.holder = Path(path), holder
        super().__init__(
            f"{self.path}: run folder is in use by another job ({holder}); wait for it to end or stop it, "
            "or choose another train.out"
        )
