"""The one exception type for bad user input, and the exit statuses of the ``grendel`` command.

Every reader and writer raises :class:`InputError` naming the file and the problem; the CLI turns it into
a one-line message and the exit status :data:`EXIT_INPUT`.
"""

from __future__ import annotations

from pathlib import Path

EXIT_INPUT = 2  # bad input: one line "error: <file>: <problem>", nothing written
EXIT_LOST_RANK = 3  # another rank of the job died or hung: one line naming it; the last checkpoint is intact
EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGUSR1 after writing a checkpoint: run again with --auto-resume (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): after writing a checkpoint, or at once on a second Ctrl-C


class InputError(Exception):
    """Bad input: ``path`` is the offending file (or None), ``problem`` says what is wrong with it."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) as one space: a library's message in an error line."""
    return " ".join(text.split())
