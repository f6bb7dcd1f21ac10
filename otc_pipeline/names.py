"""Field names as files spell them: trimmed of stray spacing and BOMs, or folded for matching."""

from __future__ import annotations

_INVISIBLE = str.maketrans("", "", "\ufeff\u200b")  # byte-order marks, zero-width spaces


def trimmed(name: str) -> str:
    """A header without the whitespace (non-breaking spaces too) and BOMs around it."""
    return name.translate(_INVISIBLE).strip()


def folded(name: str) -> str:
    """A header with case and all spacing folded away: 'ts-hours', 'ts-crmid'."""
    return "".join(name.translate(_INVISIBLE).split()).casefold()
