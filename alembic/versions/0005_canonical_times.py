"""Canonical times of day: "TS-Time From" and "TS-Time To" as HH:MM, collisions archived.

Loads now store every time of day as ``HH:MM`` (zero-padded, 24-hour), whatever
the file spelled (``7:00``, ``07:00:00``, ``7:00 PM``). Rows stored before keep
the file's spelling, so one entry loaded from two formats may be two rows:
``7:00`` and ``07:00:00`` of the same user, date and ticket. This revision

1. rewrites every stored spelling that reads as a time of day to ``HH:MM``
   (a spelling that does not read as one, e.g. with seconds, stays as it is);
2. settles the entries that now collide like ``0002_timesheets_dedup``: one row
   per entry stays, the others move to ``timesheets_dedup_archive`` with
   ``kept_id`` naming the row that stayed. The row kept is the one modified last
   ("TS-Modified Time", unknown counts as oldest): the load rule "newer wins"
   would have kept it had the entries met in one load. On a tie, a row already
   spelled canonically (nothing of it changes), then the lowest id (the first
   loaded, as 0002 keeps);
3. remembers, in ``timesheets_time_spellings``, the original spellings of every
   row it rewrote or archived, so the downgrade is exact.

The downgrade gives the rewritten rows their spellings back ("TS-Time To" only
where no later load changed it), puts the archived rows back under their own
ids and drops ``timesheets_time_spellings``.

Set-based SQL throughout (production holds 850k timesheets): the few distinct
spellings are read into Python, turned into a small table of spelling →
canonical, and every statement joins against it.

Revision ID: 0005_canonical_times
Revises: 0004_analyst_views
Create Date: 2026-12-01
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_canonical_times"
down_revision: str | Sequence[str] | None = "0004_analyst_views"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SPELLINGS = "timesheets_time_spellings"
MAPPING = "_timesheets_time_canonical"  # spelling -> canonical, only during the migration
ARCHIVE = "timesheets_dedup_archive"
FROM, TO = "TS-Time From", "TS-Time To"
ENTRY = ("TS-User Username", "TS-Date", "TS-Crm ID")  # with FROM: the unique entry
COLUMN_NAMES = [
    "TS-User Username",
    "TS-User Full Name",
    "TS-Date",
    FROM,
    TO,
    "TS-Hours",
    "TS-Category",
    "TS-Sub Category",
    "TS-Type",
    "TS-Crm ID",
    "TS-Description",
    "TS-Account Name",
    "TS-Ticket Project Master Code",
    "TS-Notes",
    "TS-Account Selcom",
    "TS-Costcentre",
    "TS-Charge Code",
    "TS-Client Bill Code",
    "TS-Billable",
    "TS-Approved",
    "TS-Modified Time",
]

# The stored spellings this revision reads, frozen here (the loader's own parser may
# learn more shapes later; a migration must do the same thing every time it runs).
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?\s*(?:([AaPp])\.?[Mm]\.?)?$")
_ZERO_DATE = re.compile(r"^(?:1899-12-30|1899-12-31|1904-01-01)[ T](.*)$")


def canonical(spelling: str) -> str | None:
    """``HH:MM`` for a stored spelling of a time of day, or None when it reads as none."""
    text = spelling.strip()
    on_zero_date = _ZERO_DATE.match(text)
    if on_zero_date:
        text = on_zero_date.group(1)
    match = _CLOCK.match(text)
    if match is None:
        return None
    hour, minute, second, fraction, half = match.groups()
    hours, minutes = int(hour), int(minute)
    if half is not None:
        if not 1 <= hours <= 12:
            return None
        hours = hours % 12 + (12 if half in "Pp" else 0)
    if hours > 23 or minutes > 59:
        return None
    if (second is not None and second != "00") or (fraction and fraction.strip("0")):
        return None
    return f"{hours:02d}:{minutes:02d}"


def schema_for(bind: sa.engine.Connection) -> str | None:
    return "servicedesk" if bind.dialect.name == "postgresql" else None


def lightweight(name: str, schema: str | None, *names: str) -> sa.TableClause:
    return sa.table(name, *(sa.column(n) for n in names), schema=schema)


def _spellings_table(schema: str | None) -> sa.Table:
    return sa.Table(
        SPELLINGS,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column(FROM, sa.Text),
        sa.Column(TO, sa.Text),
        schema=schema,
    )


def _mapping(bind: sa.engine.Connection, schema: str | None, spellings: set[str]) -> sa.Table:
    """A table of spelling -> canonical for every spelling that changes (dropped by the caller)."""
    mapping = sa.Table(
        MAPPING,
        sa.MetaData(),
        sa.Column("spelling", sa.Text, primary_key=True),
        sa.Column("canonical", sa.Text, nullable=False),
        schema=schema,
    )
    mapping.create(bind)
    rows = [
        {"spelling": s, "canonical": c}
        for s in sorted(spellings)
        if (c := canonical(s)) is not None and c != s
    ]
    if rows:
        bind.execute(mapping.insert(), rows)
    return mapping


def _distinct(bind: sa.engine.Connection, table: sa.TableClause) -> set[str]:
    values = sa.union(
        sa.select(table.c[FROM]).where(table.c[FROM].is_not(None)),
        sa.select(table.c[TO]).where(table.c[TO].is_not(None)),
    )
    return {row[0] for row in bind.execute(values)}


def upgrade() -> None:
    bind = op.get_bind()
    schema = schema_for(bind)
    timesheets = lightweight("timesheets", schema, "id", *COLUMN_NAMES)
    archive = lightweight(ARCHIVE, schema, "id", "kept_id", *COLUMN_NAMES)
    spellings = _spellings_table(schema)
    spellings.create(bind)
    mapping = _mapping(bind, schema, _distinct(bind, timesheets))
    try:
        if bind.execute(sa.select(sa.func.count()).select_from(mapping)).scalar():
            _settle(bind, timesheets, archive, spellings, mapping)
    finally:
        mapping.drop(bind)


def _settle(
    bind: sa.engine.Connection,
    timesheets: sa.TableClause,
    archive: sa.TableClause,
    spellings: sa.Table,
    mapping: sa.Table,
) -> None:
    ts = timesheets.c
    from_map = mapping.alias("from_map")
    new_from = sa.func.coalesce(from_map.c.canonical, ts[FROM])
    # Partition by the entry as it will be; PARTITION BY groups NULL tickets together,
    # which is the unique entry's "NULL equals NULL".
    window = {
        "partition_by": [*(ts[n] for n in ENTRY), new_from],
        "order_by": [
            ts["TS-Modified Time"].desc().nulls_last(),
            sa.case((from_map.c.spelling.is_(None), 0), else_=1),
            ts.id,
        ],
    }
    ranked = (
        sa.select(
            ts.id,
            sa.func.first_value(ts.id).over(**window).label("kept_id"),
            sa.func.row_number().over(**window).label("position"),
        )
        .select_from(timesheets.outerjoin(from_map, from_map.c.spelling == ts[FROM]))
        .subquery("ranked")
    )
    # 1. The rows that give way, into the archive as they are (original spellings).
    moved = (
        sa.select(ranked.c.id, ranked.c.kept_id, *(ts[n] for n in COLUMN_NAMES))
        .select_from(ranked.join(timesheets, ts.id == ranked.c.id))
        .where(ranked.c.position > 1)
    )
    bind.execute(archive.insert().from_select(["id", "kept_id", *COLUMN_NAMES], moved))
    # 2. Every row about to be rewritten or moved, with its spellings. A live row's id
    #    in the archive can only be one just moved (ids are never reused).
    spellings_of = sa.select(mapping.c.spelling)
    touched = sa.select(ts.id, ts[FROM], ts[TO]).where(
        sa.or_(
            ts[FROM].in_(spellings_of),
            ts[TO].in_(spellings_of),
            ts.id.in_(sa.select(archive.c.id)),
        )
    )
    bind.execute(spellings.insert().from_select(["id", FROM, TO], touched))
    bind.execute(timesheets.delete().where(ts.id.in_(sa.select(archive.c.id))))

    # 3. The canonical spellings: no two rows of an entry are left to collide.
    def canonical_of(column: sa.ColumnElement[str]) -> sa.ScalarSelect[str]:
        return sa.select(mapping.c.canonical).where(mapping.c.spelling == column).scalar_subquery()

    bind.execute(
        timesheets.update()
        .values(
            {
                FROM: sa.func.coalesce(canonical_of(ts[FROM]), ts[FROM]),
                TO: sa.func.coalesce(canonical_of(ts[TO]), ts[TO]),
            }
        )
        .where(sa.or_(ts[FROM].in_(spellings_of), ts[TO].in_(spellings_of)))
    )


def downgrade() -> None:
    bind = op.get_bind()
    schema = schema_for(bind)
    timesheets = lightweight("timesheets", schema, "id", *COLUMN_NAMES)
    archive = lightweight(ARCHIVE, schema, "id", *COLUMN_NAMES)
    spellings = _spellings_table(schema)
    ts, sp = timesheets.c, spellings.c
    mapping = _mapping(bind, schema, _distinct(bind, spellings))
    try:
        original = sa.select(sp[FROM]).where(sp.id == ts.id).scalar_subquery()
        original_to = sa.select(sp[TO]).where(sp.id == ts.id).scalar_subquery()
        # "TS-Time To" goes back only where it still holds what this revision wrote.
        written_to = (
            sa.select(sa.func.coalesce(mapping.c.canonical, sp[TO]))
            .select_from(spellings.outerjoin(mapping, mapping.c.spelling == sp[TO]))
            .where(sp.id == ts.id)
            .scalar_subquery()
        )
        bind.execute(
            timesheets.update()
            .values(
                {
                    FROM: original,
                    TO: sa.case((ts[TO] == written_to, original_to), else_=ts[TO]),
                }
            )
            .where(ts.id.in_(sa.select(sp.id)))
        )
    finally:
        mapping.drop(bind)
    # The archived rows, back under their own ids.
    # NOT EXISTS, not NOT IN: PostgreSQL turns it into an anti-join (NOT IN over 850k
    # ids that do not fit work_mem is a scan of the subquery per row).
    live = sa.select(ts.id).where(ts.id == archive.c.id).exists()
    returning = sa.and_(archive.c.id.in_(sa.select(sp.id)), ~live)
    bind.execute(
        timesheets.insert().from_select(
            ["id", *COLUMN_NAMES],
            sa.select(archive.c.id, *(archive.c[n] for n in COLUMN_NAMES)).where(returning),
        )
    )
    bind.execute(archive.delete().where(archive.c.id.in_(sa.select(sp.id)), live))
    spellings.drop(bind)
