"""Reconcile: a complete source is the truth for a range, and rows it lacks leave the table.

Rows held whose key falls in the range but which the source does not carry were
deleted or re-keyed in OTC. They are moved into ``<table>_removed`` (see
removal.py), never deleted, and `otc removed restore` puts them back. Guards keep
a short or broken source from emptying a table: nothing is removed from a source
that failed, had rejects, or would remove more than ``max_removed`` rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from .errors import ConfigError, OtcError
from .removal import move_out, removed_rows, rows_in_range
from .stage import Stage
from .views import View

# The share of the rows in range a reconcile may remove unless --max-removed says otherwise.
DEFAULT_MAX_SHARE = 0.05
SHOWN_IN_DRY_RUN = 10  # keys a dry run lists of the rows that would go


class TooManyRemoved(OtcError):
    """A reconcile would remove more rows than it may: the view fails, nothing changes."""


@dataclass(frozen=True)
class Reconcile:
    """A load's request to reconcile: its range (None: the source's own) and its limit."""

    range: tuple[date, date] | None = None
    max_removed: int | None = None  # None: DEFAULT_MAX_SHARE of the rows in range


def parse_range(text: str) -> tuple[date, date]:
    """``FROM..TO`` (ISO dates, both days included) as two dates."""
    found = re.fullmatch(r"\s*(\d{4}-\d{2}-\d{2})\s*\.\.\s*(\d{4}-\d{2}-\d{2})\s*", text)
    try:
        if found is None:
            raise ValueError
        low, high = date.fromisoformat(found.group(1)), date.fromisoformat(found.group(2))
    except ValueError:
        raise ConfigError(
            f"--range {text!r} is not FROM..TO; give two dates, e.g. --range 2026-01-01..2026-06-30"
        ) from None
    if low > high:
        raise ConfigError(f"--range {text!r} ends before it starts; give FROM..TO, FROM first")
    return low, high


@dataclass
class Outcome:
    """What a reconcile did: rows removed, and what the run's summary should say."""

    removed: int = 0
    warnings: list[str] = field(default_factory=list)


def reconcile(
    conn: Connection,
    view: View,
    stage: Stage,
    request: Reconcile,
    *,
    run_id: int | None,
    rejected: int,
) -> Outcome:
    """Move out the rows in range that the stage (the whole source, merged) lacks.

    Runs at the end of the load's merge, in its transaction, under its locks. A
    dry run (``run_id`` None) moves them too, lists some, and is rolled back.
    """
    column = view.reconcile_by
    assert column is not None
    field = view.columns[column]
    if rejected:
        return Outcome(
            warnings=[
                f"--reconcile removed nothing: {rejected:,} records were rejected, so the "
                "source is not known to hold every row; fix them and load again"
            ]
        )
    if request.range is not None:
        first, last = request.range
        low = datetime.combine(first, time.min)
        high = datetime.combine(last + timedelta(days=1), time.min) - timedelta(microseconds=1)
    else:
        staged = stage.table.c[column]
        low, high = conn.execute(select(func.min(staged), func.max(staged))).one()
        if low is None:
            return Outcome(warnings=[f"--reconcile removed nothing: no record carries {field!r}"])
    held = rows_in_range(conn, view, column, low, high)
    limit = (
        request.max_removed if request.max_removed is not None else int(held * DEFAULT_MAX_SHARE)
    )
    span = f"{field} {_day(low)}..{_day(high)}"
    moved = move_out(
        conn,
        view,
        stage.table,
        column=column,
        low=low,
        high=high,
        run_id=run_id or 0,
        reason=f"not in the source, which was complete for {span}",
    )
    if moved > limit:
        raise TooManyRemoved(
            f"--reconcile would remove {moved:,} of the {held:,} rows with {span} (more than "
            f"--max-removed {limit:,}); nothing was changed. Check that the source holds the "
            f"whole range, or give --max-removed {moved} to allow it"
        )
    warnings = []
    if run_id is None and moved:
        shown = removed_rows(conn, 0, view=view.name, limit=SHOWN_IN_DRY_RUN)
        keys = "; ".join(_key_text(row["key"]) for row in shown)
        more = f" and {moved - len(shown):,} more" if moved > len(shown) else ""
        warnings.append(f"would remove {moved:,} rows ({span}): {keys}{more}")
    return Outcome(removed=moved, warnings=warnings)


def _day(moment: Any) -> str:
    return moment.date().isoformat() if isinstance(moment, datetime) else str(moment)


def _key_text(key: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in key.items())
