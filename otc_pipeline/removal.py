"""Moving rows out of a live table into ``<table>_removed``, and back.

A reconcile (``otc load VIEW --reconcile``) calls :func:`move_out` at the end of a
reload, inside the view's one transaction, with the load's stage table as ``keep``:
the rows of a range that the source no longer carries leave the live table, copied
first, so nothing is ever lost. :func:`restore` puts a run's removals back without
ever overwriting a live row; :func:`removed_rows` lists them.

Every statement is a set operation on the database (SQLAlchemy constructs, bound
parameters); nothing here commits: the caller owns the transaction and the view lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    FromClause,
    Integer,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    literal,
    select,
)

from .errors import OtcError
from .merge import ONE_HASH_JOIN, key_match, planned
from .models import CommentRemoved, TicketRemoved, TimesheetRemoved
from .runs import utcnow
from .stage import temporary_table
from .views import VIEW_ORDER, VIEWS, View

REMOVAL_COLUMNS = ("removed_id", "removed_run_id", "removed_at", "removed_reason")


def _table_of(model: Any) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


_REMOVED: dict[str, Table] = {
    "tickets": _table_of(TicketRemoved),
    "timesheets": _table_of(TimesheetRemoved),
    "comments": _table_of(CommentRemoved),
}


def removed_table(view: View) -> Table:
    """``<table>_removed`` of a view: the live columns plus who removed each row, when, why."""
    return _REMOVED[view.name]


def live_columns(view: View) -> list[str]:
    """The live table's column keys, as both tables have them."""
    return [c.key for c in view.table.columns]


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did (or, previewed, would do) to one view."""

    view: str
    restored: int  # back in the live table, out of <table>_removed
    kept: int  # left in <table>_removed: the live table holds their key again

    def as_dict(self) -> dict[str, Any]:
        return {"view": self.view, "restored": self.restored, "kept": self.kept}


def rows_in_range(conn: Connection, view: View, column: str, low: Any, high: Any) -> int:
    """How many live rows have ``column`` in [low, high] (for the caller's --max-removed)."""
    table = view.table
    counted = select(func.count()).select_from(table).where(table.c[column].between(low, high))
    return int(conn.execute(counted).scalar_one())


def move_out(
    conn: Connection,
    view: View,
    keep: FromClause,
    *,
    column: str,
    low: Any,
    high: Any,
    run_id: int,
    reason: str,
) -> int:
    """Move the rows of ``view.table`` in [low, high] by ``column`` that ``keep`` lacks.

    ``keep`` is any selectable with the view's key columns (by column key), such as
    the load's stage table; a row is kept when a row of ``keep`` has its key, NULL
    matching NULL in a key column that may be blank (timesheets' "TS-Crm ID").
    The rows are first copied into ``<table>_removed`` with ``run_id``, the time
    (naive UTC) and ``reason``, then deleted from the live table by its primary key,
    all in the caller's transaction. Returns how many rows moved.

    Raises OtcError when the delete does not match the copy exactly; the caller must
    then roll back (it cannot happen under the view lock, but a loss must never be silent).
    """
    live = view.table
    removed = removed_table(view)
    columns = live_columns(view)
    carried = select(literal(1)).select_from(keep).where(key_match(live, keep, view)).exists()
    # New removed_ids are above every id the table holds now: they mark this move's rows.
    # (No RETURNING of the ids: a large move would ship them all to Python and back.)
    mark = conn.execute(select(func.coalesce(func.max(removed.c.removed_id), 0))).scalar_one()
    leaving = select(
        *(live.c[c] for c in columns),
        literal(run_id, Integer),
        literal(utcnow(), DateTime),
        literal(reason, Text),
    ).where(live.c[column].between(low, high), ~carried)
    # Left to itself the planner sorts both sides for a merge anti-join, spilling to
    # disk: measured 6.0 s against 1.5 s for one hash anti-join of 850k timesheets.
    with planned(conn, ONE_HASH_JOIN):
        moved = conn.execute(
            insert(removed).from_select(
                [*columns, "removed_run_id", "removed_at", "removed_reason"], leaving
            )
        ).rowcount
    if not moved:
        return 0
    # Delete by primary key against the rows just copied: a semi-join of the (usually
    # few) moved rows, instead of a second anti-join of the whole range with the stage.
    this_move = and_(
        removed.c.removed_run_id == run_id,
        removed.c.removed_id > mark,
        *(removed.c[key.key] == key for key in live.primary_key.columns),
    )
    deleted = conn.execute(
        delete(live).where(select(literal(1)).select_from(removed).where(this_move).exists())
    ).rowcount
    if deleted != moved:
        raise OtcError(
            f"{view.name}: {moved:,} rows were copied to {removed.name} but {deleted:,} "
            "deleted from the live table; nothing was changed (roll back and run again)"
        )
    return int(moved)


def _runs_removed_rows(removed: Table, run_id: int) -> Any:
    return removed.c.removed_run_id == run_id


def _key_is_live(view: View, removed: FromClause) -> Any:
    """EXISTS a live row with the removed row's key (NULL equal to NULL where it may be blank)."""
    live = view.table
    return select(literal(1)).select_from(live).where(key_match(live, removed, view)).exists()


def run_views(conn: Connection, run_id: int) -> list[str]:
    """The views with rows of ``run_id`` in their ``<table>_removed``, in load order."""
    found = []
    for name in VIEW_ORDER:
        removed = _REMOVED[name]
        there = select(literal(1)).where(_runs_removed_rows(removed, run_id)).limit(1)
        if conn.execute(there).first() is not None:
            found.append(name)
    return found


def restore_preview(conn: Connection, run_id: int) -> dict[str, RestoreResult]:
    """What :func:`restore` would do, per view with removed rows of ``run_id``; changes nothing."""
    result = {}
    for name in run_views(conn, run_id):
        view, removed = VIEWS[name], _REMOVED[name]
        counts = select(
            func.count(),
            func.count().filter(_key_is_live(view, removed)),
        ).where(_runs_removed_rows(removed, run_id))
        total, kept = conn.execute(counts).one()
        result[name] = RestoreResult(name, int(total) - int(kept), int(kept))
    return result


def restore(conn: Connection, run_id: int) -> dict[str, RestoreResult]:
    """Put the rows ``run_id`` moved out back into their live tables, in the caller's transaction.

    A row whose key the live table holds again (loaded since) stays in
    ``<table>_removed``, counted as kept: a live row is never overwritten. Restored
    rows leave ``<table>_removed``; timesheets come back under their own ids. Hold
    the view lock of every view in :func:`run_views` around the transaction.
    """
    result = {}
    for name in run_views(conn, run_id):
        view, removed = VIEWS[name], _REMOVED[name]
        columns = live_columns(view)
        of_run = _runs_removed_rows(removed, run_id)
        total = int(
            conn.execute(select(func.count()).select_from(removed).where(of_run)).scalar_one()
        )
        # Which rows go back is settled before any of them is back (afterwards a restored
        # row's key is live too): their ids, in a temporary table.
        chosen = _temporary_ids(conn, f"otc_restore_{name}")
        conn.execute(
            insert(chosen).from_select(
                ["removed_id"],
                select(removed.c.removed_id).where(of_run, ~_key_is_live(view, removed)),
            )
        )
        is_chosen = removed.c.removed_id.in_(select(chosen.c.removed_id))
        restored = conn.execute(
            insert(view.table).from_select(
                columns, select(*(removed.c[c] for c in columns)).where(is_chosen)
            )
        ).rowcount
        gone = conn.execute(delete(removed).where(is_chosen)).rowcount
        chosen.drop(conn)
        if gone != restored:  # pragma: no cover - one transaction, one set of ids
            raise OtcError(
                f"{name}: {restored:,} rows restored but {gone:,} left {removed.name}; "
                "nothing was changed"
            )
        result[name] = RestoreResult(name, int(restored), total - int(restored))
    return result


def _temporary_ids(conn: Connection, name: str) -> Table:
    """An empty temporary table of removed_ids, dropped by the caller (PostgreSQL: at commit)."""
    return temporary_table(conn, name, Column("removed_id", BigInteger, primary_key=True))


def latest_removal_run(conn: Connection, view: str | None = None) -> int | None:
    """The newest run id with rows in ``<table>_removed`` (of ``view`` only, if given)."""
    names = [view] if view else list(VIEW_ORDER)
    latest = [
        conn.execute(select(func.max(_REMOVED[name].c.removed_run_id))).scalar() for name in names
    ]
    found = [int(run) for run in latest if run is not None]
    return max(found) if found else None


def removed_rows(
    conn: Connection,
    run_id: int | None,
    *,
    view: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows in ``<table>_removed``: of ``run_id``, else of the latest run that removed any.

    Each: ``view``, ``run_id``, ``removed_id``, ``removed_at``, ``reason``, ``key``
    (the view's key columns and values) and ``row`` (every live column), views in
    load order, then in the order they were removed; at most ``limit`` rows.
    """
    if run_id is None:
        run_id = latest_removal_run(conn, view)
        if run_id is None:
            return []
    listed: list[dict[str, Any]] = []
    for name in [view] if view else VIEW_ORDER:
        left = None if limit is None else limit - len(listed)
        if left is not None and left <= 0:
            break
        live_view, removed = VIEWS[name], _REMOVED[name]
        columns = live_columns(live_view)
        query = (
            select(removed)
            .where(_runs_removed_rows(removed, run_id))
            .order_by(removed.c.removed_id)
            .limit(left)
        )
        for row in conn.execute(query).mappings():
            listed.append(
                {
                    "view": name,
                    "run_id": row["removed_run_id"],
                    "removed_id": row["removed_id"],
                    "removed_at": row["removed_at"],
                    "reason": row["removed_reason"],
                    "key": {k: row[k] for k in live_view.key},
                    "row": {c: row[c] for c in columns},
                }
            )
    return listed
