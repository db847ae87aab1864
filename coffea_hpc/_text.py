"""Counting in messages: "1 worker", "2 workers", never "1 workers"."""

from __future__ import annotations

__all__ = ["count"]

_IRREGULAR = {"entry": "entries", "retry": "retries", "was": "were"}


def count(n: int, word: str, plural: str | None = None, *, thousands: bool = False) -> str:
    """``n`` and ``word``, the word in the plural unless ``n`` is 1 (or -1)."""
    if abs(n) != 1:
        word = plural or _IRREGULAR.get(word, word + "s")
    return f"{n:,} {word}" if thousands else f"{n} {word}"
