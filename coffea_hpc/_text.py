"""Counting in messages: "1 worker", "2 workers", never "1 workers"."""

from __future__ import annotations

__all__ = ["count", "one_line"]

_IRREGULAR = {"entry": "entries", "retry": "retries", "was": "were"}


def count(n: int, word: str, plural: str | None = None, *, thousands: bool = False) -> str:
    """``n`` and ``word``, the word in the plural unless ``n`` is 1 (or -1)."""
    if abs(n) != 1:
        word = plural or _IRREGULAR.get(word, word + "s")
    return f"{n:,} {word}" if thousands else f"{n} {word}"


ONE_LINE_MAX = 400


def one_line(text: str, limit: int = ONE_LINE_MAX) -> str:
    """An error message on one line of the terminal: uproot's say what was expected,
    what came and from which file on three lines, and every line matters. Longer ones are
    cut (their whole text is in report.json)."""
    joined = " ".join(text.split())
    return joined if len(joined) <= limit else joined[: limit - 4].rstrip() + " ..."
