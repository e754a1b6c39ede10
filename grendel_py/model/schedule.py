"""Schedules counted in training images: when a periodic event falls within a step."""

from __future__ import annotations


def last_multiple(before: int, after: int, every: int, lo: int, hi: int) -> int | None:
    """The largest multiple of ``every`` in (before, after] and in [lo, hi], or None."""
    top = min(after, hi)
    m = top - top % every
    return m if m > before and m >= lo else None


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (before, after]: a periodic event falls within the step."""
    return after // every > before // every
