"""PostgreSQL's COPY text format: how a value is written as one field, and read back.

The parser is handed this format for PostgreSQL loads (see parse.TextFormat), so
that each distinct value is formatted once, as it is read; the stage hands the
lines to COPY and reads a refused line back into a reject.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from .parse import TextFormat

COPY_NULL = "\\N"  # NULL in the format (a text \N is escaped, never this)

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_UNESCAPES = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}


def as_copy_text(value: Any) -> str:
    """A parsed value as one field of the format (None is NULL)."""
    if value is None:
        return COPY_NULL
    if value.__class__ is str:
        # Backslash, tab, newline and carriage return are the format's own characters.
        return str.translate(value, _ESCAPES)
    if value.__class__ is bool:
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)  # int, Decimal


def from_copy_text(field: str) -> str | None:
    """One field of the format back as the text it stands for (None for NULL)."""
    if field == COPY_NULL:
        return None
    return re.sub(r"\\[\\tnr]", lambda m: _UNESCAPES[m.group()], field)


# What the parser is handed for PostgreSQL loads: the backslash is the one printable
# character the format escapes (tab, newline and carriage return are control ones).
COPY_TEXT = TextFormat(null=COPY_NULL, as_text=as_copy_text, escaped="\\")
