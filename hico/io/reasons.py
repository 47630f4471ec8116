"""Turning a decoder's exception into a short clause for a one-sentence HiCoError."""

from __future__ import annotations


def short_reason(error: BaseException, limit: int = 200) -> str:
    """First line of the exception's message without trailing punctuation, at most `limit` chars."""
    if isinstance(error, ImportError):
        return f"{error.name or 'a module'} is not installed"
    text = str(error).strip()
    line = text.splitlines()[0].rstrip(".: ") if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
