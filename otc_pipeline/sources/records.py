"""What a reader yields for a record it could read only in part.

A hostile record (nested beyond the limit, a number too long to read, a lone
surrogate, a field named twice) is not dropped and does not fail the file: the
reader hands its verdict on as a :class:`RefusedRecord`, which the parse stage
turns into a reject of that record alone. No database imports here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RefusedRecord:
    """A record the reader refuses: which field, its value, why, and the record as read."""

    field: str | None
    value: Any
    reason: str
    record: Any

# The source that is the OTC API, wherever a file could be named (`--from api`),
# and how etl_metadata.source records it.
API = "api"
