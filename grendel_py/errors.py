"""The one exception type for bad user input.

Every reader and writer raises :class:`InputError` naming the file and the problem; the CLI turns it into
a one-line message and a non-zero exit code.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input: ``path`` is the offending file (or None), ``problem`` says what is wrong with it."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)
