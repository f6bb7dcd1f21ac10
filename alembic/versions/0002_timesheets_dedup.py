"""Timesheets dedup: surrogate id, duplicates to an archive, the unique entry.

1. ``id``: a surrogate identity key numbered in physical order (PostgreSQL ctid,
   SQLite rowid), so "first of a group" means the row the legacy clean-up kept.
2. ``timesheets_dedup_archive`` receives every duplicate of an entry key except
   the first (lowest id), with ``kept_id`` pointing at the row that stayed; the
   duplicates then leave timesheets. A NULL "TS-Crm ID" equals another NULL.
3. ``timesheets_unique_entry``: UNIQUE NULLS NOT DISTINCT on PostgreSQL, a unique
   index over ifnull("TS-Crm ID", '') on SQLite (no NULLS NOT DISTINCT there).

Set-based SQL throughout (production holds 850k rows). Downgrade puts the
archived rows back and removes id, archive and unique entry; the timesheets rows
are then exactly the original ones (on PostgreSQL the restored rows sit at the
end of the table physically, which keeps them "not first" if upgraded again).

Revision ID: 0002_timesheets_dedup
Revises: 0001_baseline
Create Date: 2026-01-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_timesheets_dedup"
down_revision: str | Sequence[str] | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNIQUE_ENTRY = "timesheets_unique_entry"
ENTRY_KEY = ("TS-User Username", "TS-Date", "TS-Time From", "TS-Crm ID")
TIMESHEET_INDEXES = {
    "idx_timesheets_crm_id": ["TS-Crm ID"],
    "idx_timesheets_user": ["TS-User Username"],
    "idx_timesheets_date": ["TS-Date"],
    "idx_timesheets_user_date": ["TS-User Username", "TS-Date"],
}


def schema_for(bind: sa.engine.Connection) -> str | None:
    return "servicedesk" if bind.dialect.name == "postgresql" else None


def timesheet_columns() -> list[sa.Column[object]]:
    """The legacy timesheet columns, frozen as of this revision."""
    return [
        sa.Column("TS-User Username", sa.Text),
        sa.Column("TS-User Full Name", sa.Text),
        sa.Column("TS-Date", sa.DateTime),
        sa.Column("TS-Time From", sa.Text),
        sa.Column("TS-Time To", sa.Text),
        sa.Column("TS-Hours", sa.Numeric),
        sa.Column("TS-Category", sa.Text),
        sa.Column("TS-Sub Category", sa.Text),
        sa.Column("TS-Type", sa.Text),
        sa.Column("TS-Crm ID", sa.Integer),
        sa.Column("TS-Description", sa.Text),
        sa.Column("TS-Account Name", sa.Text),
        sa.Column("TS-Ticket Project Master Code", sa.Text),
        sa.Column("TS-Notes", sa.Text),
        sa.Column("TS-Account Selcom", sa.Text),
        sa.Column("TS-Costcentre", sa.Text),
        sa.Column("TS-Charge Code", sa.Text),
        sa.Column("TS-Client Bill Code", sa.Text),
        sa.Column("TS-Billable", sa.Boolean),
        sa.Column("TS-Approved", sa.Boolean),
        sa.Column("TS-Modified Time", sa.DateTime),
    ]


COLUMN_NAMES = [column.name for column in timesheet_columns()]


def lightweight(name: str, schema: str | None, *names: str) -> sa.TableClause:
    return sa.table(name, *(sa.column(n) for n in names), schema=schema)


def sqlite_rebuild_timesheets(with_id: bool) -> None:
    """Recreate timesheets on SQLite with or without the id key, keeping row order.

    SQLite cannot add a primary key in place. The copy goes in the old physical
    order (rowid on the way up, id on the way down), so ids follow the legacy
    order and a downgrade restores it.
    """
    if with_id:
        # AUTOINCREMENT: new ids never reuse an archived row's id, so a downgrade can
        # always put the archived rows back under their own ids.
        op.create_table(
            "_timesheets_rebuild",
            sa.Column("id", sa.Integer, primary_key=True),
            *timesheet_columns(),
            sqlite_autoincrement=True,
        )
    else:
        op.create_table("_timesheets_rebuild", *timesheet_columns())
    old = lightweight("timesheets", None, "rowid", "id", *COLUMN_NAMES)
    new = lightweight("_timesheets_rebuild", None, "id", *COLUMN_NAMES)
    order = old.c.rowid if with_id else old.c.id
    if with_id:
        # INTEGER PRIMARY KEY is the rowid itself: keep the legacy numbering.
        select = sa.select(old.c.rowid, *(old.c[n] for n in COLUMN_NAMES))
        targets = ["id", *COLUMN_NAMES]
    else:
        select = sa.select(*(old.c[n] for n in COLUMN_NAMES))
        targets = COLUMN_NAMES
    op.execute(new.insert().from_select(targets, select.order_by(order)))
    op.drop_table("timesheets")
    op.rename_table("_timesheets_rebuild", "timesheets")
    for name, columns in TIMESHEET_INDEXES.items():
        op.create_index(name, "timesheets", columns)


def upgrade() -> None:
    bind = op.get_bind()
    schema = schema_for(bind)
    is_pg = bind.dialect.name == "postgresql"

    # 1. The surrogate key, numbered in physical order.
    if is_pg:
        op.add_column("timesheets", sa.Column("id", sa.Integer), schema=schema)
        # ORDER BY ctid, not the ADD COLUMN rewrite: a synchronized scan may start
        # mid-table, and "first" must be the physically first row.
        timesheets = lightweight("timesheets", schema, "ctid", "id")
        numbered = sa.select(
            timesheets.c.ctid.label("row_ctid"),
            sa.func.row_number().over(order_by=timesheets.c.ctid).label("position"),
        ).subquery("numbered")
        op.execute(
            timesheets.update()
            .values(id=numbered.c.position)
            .where(timesheets.c.ctid == numbered.c.row_ctid)
        )
        op.alter_column("timesheets", "id", nullable=False, schema=schema)
        op.execute(
            f"ALTER TABLE {schema}.timesheets ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY"
        )
        # The identity continues after the ids handed out above.
        sequence = sa.func.pg_get_serial_sequence(f"{schema}.timesheets", "id")
        op.execute(
            sa.select(
                sa.func.setval(
                    sequence, sa.func.coalesce(sa.func.max(timesheets.c.id), 0) + 1, False
                )
            )
        )
        op.create_primary_key("timesheets_pkey", "timesheets", ["id"], schema=schema)
    else:
        sqlite_rebuild_timesheets(with_id=True)

    # 2. The archive, then every duplicate but the first into it.
    op.create_table(
        "timesheets_dedup_archive",
        *timesheet_columns(),
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("kept_id", sa.Integer, nullable=False),
        sa.Column("archived_at", sa.DateTime, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="timesheets_dedup_archive_pkey"),
        schema=schema,
    )
    timesheets = lightweight("timesheets", schema, "id", *COLUMN_NAMES)
    archive = lightweight("timesheets_dedup_archive", schema, "id", "kept_id", *COLUMN_NAMES)
    # PARTITION BY groups NULLs together, which is exactly "NULL equals NULL".
    entry = [timesheets.c[n] for n in ENTRY_KEY]
    ranked = sa.select(
        *timesheets.c,
        sa.func.first_value(timesheets.c.id)
        .over(partition_by=entry, order_by=timesheets.c.id)
        .label("kept_id"),
        sa.func.row_number().over(partition_by=entry, order_by=timesheets.c.id).label("position"),
    ).subquery("ranked")
    op.execute(
        archive.insert().from_select(
            ["id", "kept_id", *COLUMN_NAMES],
            sa.select(ranked.c.id, ranked.c.kept_id, *(ranked.c[n] for n in COLUMN_NAMES)).where(
                ranked.c.position > 1
            ),
        )
    )
    op.execute(timesheets.delete().where(timesheets.c.id.in_(sa.select(archive.c.id))))

    # 3. The unique entry, now that it holds.
    if is_pg:
        op.create_unique_constraint(
            UNIQUE_ENTRY,
            "timesheets",
            list(ENTRY_KEY),
            schema=schema,
            postgresql_nulls_not_distinct=True,
        )
    else:
        # '' never equals an integer ticket id, so NULL tickets collide only with
        # each other: the SQLite equivalent of NULLS NOT DISTINCT.
        op.create_index(
            UNIQUE_ENTRY,
            "timesheets",
            [*ENTRY_KEY[:3], sa.text("""ifnull("TS-Crm ID", '')""")],
            unique=True,
        )


def downgrade() -> None:
    bind = op.get_bind()
    schema = schema_for(bind)
    is_pg = bind.dialect.name == "postgresql"

    if is_pg:
        op.drop_constraint(UNIQUE_ENTRY, "timesheets", type_="unique", schema=schema)
    else:
        op.drop_index(UNIQUE_ENTRY, table_name="timesheets")

    timesheets = lightweight("timesheets", schema, "id", *COLUMN_NAMES)
    archive = lightweight("timesheets_dedup_archive", schema, "id", *COLUMN_NAMES)
    # Back with their original ids, so SQLite restores the legacy order too.
    op.execute(
        timesheets.insert().from_select(
            ["id", *COLUMN_NAMES], sa.select(archive.c.id, *(archive.c[n] for n in COLUMN_NAMES))
        )
    )
    op.drop_table("timesheets_dedup_archive", schema=schema)

    if is_pg:
        # Drops the primary key and the identity sequence with it.
        op.drop_column("timesheets", "id", schema=schema)
    else:
        sqlite_rebuild_timesheets(with_id=False)
