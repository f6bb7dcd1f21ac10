"""user_lookup from timesheets: short username ⇄ full name, never guessed.

Timesheet rows carry both ``"TS-User Username"`` and ``"TS-User Full Name"``,
so they are the reliable source of pairs. A refresh adds the pairs user_lookup
lacks (``source = 'auto_timesheet'``) and adopts matching rows of other
automatic sources; rows with ``source = 'manual'`` are never changed.

A *conflict* is a short name seen with two or more full names, or a full name
seen with two or more short names, counting both the timesheets and the rows
already in user_lookup. Conflicting names are reported and left exactly as
they were: no pair involved in a conflict is written, so the outcome never
depends on which row came last. A manual row settles the names it holds: once
someone has decided who ``djewell`` is, other spellings in timesheets are no
longer a conflict (and are not written either).

All work is set-based SQL (one GROUP BY over timesheets per statement), so a
refresh over 850k timesheet rows takes about a second. Functions here take a
Connection and never commit: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Integer,
    MetaData,
    Subquery,
    Table,
    Text,
    and_,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    text,
    union,
    update,
)

from .models import UserLookup
from .runs import utcnow

SOURCE = "auto_timesheet"
MANUAL = "manual"
WARNING_LINES = 10  # conflicts named one per line in a run's warnings; the rest are counted

_users = cast(Table, UserLookup.__table__)
_u = _users.c

# The distinct pairs of one refresh. A temporary table, so timesheets is scanned
# once per refresh, not once per statement (seconds on SQLite at 850k rows).
_pairs = Table(
    "otc_user_pairs",
    MetaData(),
    Column("short_username", Text),
    Column("full_name", Text),
    Column("entries", Integer),
    Column("last_seen", DateTime),
    prefixes=["TEMPORARY"],
)


_PAIRS_QUERY = """
INSERT INTO otc_user_pairs (short_username, full_name, entries, last_seen)
SELECT "TS-User Username", "TS-User Full Name", count(*), max("TS-Date")
FROM {timesheets}
WHERE "TS-User Username" IS NOT NULL AND "TS-User Full Name" IS NOT NULL
GROUP BY "TS-User Username", "TS-User Full Name"
"""
_FILL_PAIRS = {
    "postgresql": text(_PAIRS_QUERY.format(timesheets="servicedesk.timesheets")),
    # Without NOT INDEXED SQLite walks idx_timesheets_user_date and looks up every
    # row's full name: twice as slow as one plain scan.
    "sqlite": text(_PAIRS_QUERY.format(timesheets="timesheets NOT INDEXED")),
}


@contextmanager
def _timesheet_pairs(conn: Connection) -> Iterator[Table]:
    """Distinct (short, full) pairs in timesheets, how often and how lately each was used."""
    _pairs.drop(conn, checkfirst=True)
    _pairs.create(conn)
    try:
        conn.execute(_FILL_PAIRS[conn.dialect.name])
        yield _pairs
    finally:
        _pairs.drop(conn, checkfirst=True)


def _conflicted(pairs: Table) -> tuple[Subquery, Subquery, Subquery]:
    """Every pair seen anywhere, and the short and full names that have more than one partner."""
    # Subqueries, not CTEs: a statement that starts with WITH gets no rowcount from
    # the sqlite3 module. UNION (not UNION ALL): a pair in both places counts once,
    # so HAVING count > 1 means two different partners.
    seen = union(
        select(pairs.c.short_username, pairs.c.full_name),
        select(_u.short_username, _u.full_name).where(
            _u.short_username.is_not(None), _u.full_name.is_not(None)
        ),
    ).subquery("seen")
    # A manual row settles its names: someone decided who they belong to.
    manual = select(_u.short_username, _u.full_name).where(_u.source == MANUAL).subquery()
    bad_short = (
        select(seen.c.short_username)
        .where(seen.c.short_username.not_in(select(manual.c.short_username)))
        .group_by(seen.c.short_username)
        .having(func.count() > 1)
        .subquery("bad_short")
    )
    bad_full = (
        select(seen.c.full_name)
        .where(seen.c.full_name.not_in(select(manual.c.full_name)))
        .group_by(seen.c.full_name)
        .having(func.count() > 1)
        .subquery("bad_full")
    )
    return seen, bad_short, bad_full


def _clean(pairs: Table, bad_short: Subquery, bad_full: Subquery) -> Any:
    """Condition: this timesheet pair is part of no conflict."""
    return and_(
        pairs.c.short_username.not_in(select(bad_short.c.short_username)),
        pairs.c.full_name.not_in(select(bad_full.c.full_name)),
    )


def conflicts(conn: Connection) -> list[dict[str, Any]]:
    """Names with more than one partner, each with every pair involved and where it was seen.

    One dict per conflict: ``kind`` (``short_username`` or ``full_name``), ``name``
    (the name with several partners) and ``pairs``: each with ``short_username``,
    ``full_name``, ``timesheet_entries`` (0 if only in user_lookup), ``last_seen``
    and ``user_lookup_source`` (None if the pair is not in user_lookup).
    """
    with _timesheet_pairs(conn) as pairs:
        return _conflicts(conn, pairs)


def _conflicts(conn: Connection, pairs: Table) -> list[dict[str, Any]]:
    seen, bad_short, bad_full = _conflicted(pairs)
    query = (
        select(
            seen.c.short_username,
            seen.c.full_name,
            func.coalesce(pairs.c.entries, 0).label("entries"),
            pairs.c.last_seen,
            _u.source,
            _u.id.is_not(None).label("in_lookup"),
            seen.c.short_username.in_(select(bad_short.c.short_username)).label("bad_short"),
            seen.c.full_name.in_(select(bad_full.c.full_name)).label("bad_full"),
        )
        .select_from(
            seen.outerjoin(
                pairs,
                and_(
                    pairs.c.short_username == seen.c.short_username,
                    pairs.c.full_name == seen.c.full_name,
                ),
            ).outerjoin(
                _users,
                and_(
                    _u.short_username == seen.c.short_username,
                    _u.full_name == seen.c.full_name,
                ),
            )
        )
        .where(
            or_(
                seen.c.short_username.in_(select(bad_short.c.short_username)),
                seen.c.full_name.in_(select(bad_full.c.full_name)),
            )
        )
        .order_by(seen.c.short_username, seen.c.full_name)
    )
    by_short: dict[str, list[dict[str, Any]]] = {}
    by_full: dict[str, list[dict[str, Any]]] = {}
    for row in conn.execute(query):
        pair = {
            "short_username": row.short_username,
            "full_name": row.full_name,
            "timesheet_entries": int(row.entries),
            "last_seen": row.last_seen,
            "user_lookup_source": (row.source or "unknown") if row.in_lookup else None,
        }
        if row.bad_short:
            by_short.setdefault(row.short_username, []).append(pair)
        if row.bad_full:
            by_full.setdefault(row.full_name, []).append(pair)
    found = [
        {"kind": "short_username", "name": name, "pairs": group}
        for name, group in sorted(by_short.items())
    ]
    found += [
        {"kind": "full_name", "name": name, "pairs": group}
        for name, group in sorted(by_full.items())
    ]
    return found


def describe_conflict(conflict: dict[str, Any]) -> str:
    """One line for a conflict, naming every partner and where it was seen."""
    if conflict["kind"] == "short_username":
        subject = f"short name {conflict['name']!r} has {len(conflict['pairs'])} full names"
        partner = "full_name"
    else:
        subject = f"full name {conflict['name']!r} has {len(conflict['pairs'])} short names"
        partner = "short_username"
    seen = []
    for pair in conflict["pairs"]:
        where = []
        if pair["timesheet_entries"]:
            where.append(f"{pair['timesheet_entries']} timesheet entries")
        if pair["user_lookup_source"] is not None:
            where.append(f"user_lookup ({pair['user_lookup_source']})")
        seen.append(f"{pair[partner]!r} in {' and '.join(where)}")
    return f"user_lookup: {subject}: {'; '.join(seen)}; left as it was"


def refresh(conn: Connection) -> dict[str, Any]:
    """Fill user_lookup from timesheet pairs: ``added``, ``adopted``, ``conflicts``, ``warnings``.

    ``adopted`` counts rows of another automatic source (or none) that timesheets
    confirm; they become ``auto_timesheet``. Manual rows are never touched.
    """
    now = utcnow()
    with _timesheet_pairs(conn) as pairs:
        return _refresh(conn, pairs, now)


def _refresh(conn: Connection, pairs: Table, now: datetime) -> dict[str, Any]:
    _seen, bad_short, bad_full = _conflicted(pairs)
    confirmed = (
        select(pairs.c.short_username)
        .where(
            pairs.c.short_username == _u.short_username,
            pairs.c.full_name == _u.full_name,
            _clean(pairs, bad_short, bad_full),
        )
        .exists()
    )
    adopted = conn.execute(
        update(_users)
        .where(
            confirmed,
            # A NULL source is an unknown (legacy) origin, not a manual entry.
            or_(_u.source.is_(None), not_(_u.source.in_((MANUAL, SOURCE)))),
        )
        .values(source=SOURCE, updated_at=now)
    ).rowcount

    # A clean pair whose short name is new also has a new full name: a full name
    # already in user_lookup under another short name would make it a conflict.
    new_pairs = select(
        pairs.c.short_username,
        pairs.c.full_name,
        literal(SOURCE).label("source"),
        literal(now).label("updated_at"),
    ).where(
        _clean(pairs, bad_short, bad_full),
        ~select(_u.id).where(_u.short_username == pairs.c.short_username).exists(),
        ~select(_u.id).where(_u.full_name == pairs.c.full_name).exists(),
    )
    added = conn.execute(
        insert(_users).from_select(
            ["short_username", "full_name", "source", "updated_at"], new_pairs
        )
    ).rowcount

    found = _conflicts(conn, pairs)
    warnings = [describe_conflict(c) for c in found[:WARNING_LINES]]
    if found:
        shown = f" ({WARNING_LINES} shown)" if len(found) > WARNING_LINES else ""
        warnings.append(
            f"user_lookup: {len(found)} name conflicts{shown} were left as they were; "
            "see `otc users conflicts`; a user_lookup row with source 'manual' settles a name"
        )
    return {
        "added": max(added or 0, 0),
        "adopted": max(adopted or 0, 0),
        "conflicts": len(found),
        "warnings": warnings,
    }


def refresh_from_timesheets(conn: Connection) -> list[str]:
    """Refresh user_lookup from timesheets inside the caller's transaction; the warnings."""
    return list(refresh(conn)["warnings"])


def list_users(conn: Connection) -> list[dict[str, Any]]:
    """Every user_lookup row, by short username."""
    query = select(
        _u.id,
        _u.short_username,
        _u.full_name,
        _u.email,
        _u.team,
        _u.source,
        _u.updated_at,
    ).order_by(_u.short_username)
    return [dict(row._mapping) for row in conn.execute(query)]
