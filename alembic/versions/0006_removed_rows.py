"""Removed rows: ``<table>_removed``, the stale and removed counts, the last removal shown.

1. ``tickets_removed``, ``timesheets_removed``, ``comments_removed``: the live
   table's columns (same names and types, none of its keys or unique entries, so
   one key can be removed, loaded again and removed again) plus ``removed_id``
   (the key), ``removed_run_id`` (the etl_metadata run that moved the row out;
   indexed), ``removed_at`` (naive UTC, as etl_metadata's times) and
   ``removed_reason``. A reconcile moves rows there (otc_pipeline.removal);
   ``otc removed restore`` puts them back.
2. ``etl_metadata.stale`` and ``etl_metadata.removed``: the newer-wins and
   reconcile counts, NOT NULL DEFAULT 0 (old runs count 0; PostgreSQL adds a
   column with a constant default without rewriting the table).
3. ``v_data_freshness`` gains, after its five columns (BI reports select them by
   position too), the last removal of each view: ``last_removal_run_id``,
   ``last_removal_at`` (the run's end) and ``last_removal_rows``, from the view's
   latest committed run with ``removed > 0``; NULL when nothing was ever removed.
   On PostgreSQL ``CREATE OR REPLACE VIEW`` appends them, so an analyst's view
   built on it keeps working.

Downgrade restores the 0004 definition of ``v_data_freshness``, drops the two
counts and the three tables (with any rows still in them).

Revision ID: 0006_removed_rows
Revises: 0005_canonical_times
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_removed_rows"
down_revision: str | Sequence[str] | None = "0005_canonical_times"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = ("stale", "removed")


def schema_for(bind: sa.engine.Connection) -> str | None:
    return "servicedesk" if bind.dialect.name == "postgresql" else None


# The live tables' columns, frozen as of this revision (a migration must do the same
# thing every time it runs, whatever the models become).
def ticket_columns() -> list[sa.Column[object]]:
    text = [
        "TKT-Title",
        "TKT-Status",
        "TKT-Severity",
        "TKT-Category",
        "TKT-Team",
        "TKT-Assigned To User",
    ]
    more_text = [
        "TKT-Account Name",
        "TKT-Client Name",
        "TKT-Description",
        "TKT-Platform",
        "TKT-Group",
    ]
    last_text = [
        "TKT-SLA",
        "TKT-SLA Met",
        "TKT-Response Met",
        "TKT-Resolution Met",
        "TKT-SLA Clock Status",
        "TKT-Solution",
        "TKT-Root Cause Category",
        "TKT-Resolution/Change Type",
        "TKT-Ticket Source",
    ]
    return [
        sa.Column("TKT-Ticket ID", sa.Integer, autoincrement=False, nullable=False),
        *(sa.Column(name, sa.Text) for name in text),
        sa.Column("TKT-Created Time", sa.DateTime),
        sa.Column("TKT-Modified Time", sa.DateTime),
        *(sa.Column(name, sa.Text) for name in more_text),
        sa.Column("TKT-Assigned To Userid", sa.Integer),
        sa.Column("TKT-Created By User", sa.Text),
        sa.Column("TKT-Created By Userid", sa.Integer),
        sa.Column("TKT-Account Id", sa.Integer),
        sa.Column("TKT-Actual Resolution Date", sa.DateTime),
        sa.Column("TKT-Closure Date", sa.DateTime),
        sa.Column("TKT-Due Date", sa.DateTime),
        sa.Column("TKT-Actual Response Date", sa.DateTime),
        *(sa.Column(name, sa.Text) for name in last_text),
    ]


def timesheet_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
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


def comment_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("comment_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("ticket_id", sa.Integer),
        sa.Column("comment_text", sa.Text),
        sa.Column("user_id", sa.Text),
        sa.Column("user_name", sa.Text),
        sa.Column("owner_type", sa.Text),
        sa.Column("created_time", sa.DateTime),
        sa.Column("visible_to_customer", sa.Text),
        sa.Column("comment_type", sa.Text),
        sa.Column("team", sa.Text),
    ]


REMOVED_TABLES = {
    "tickets_removed": ticket_columns,
    "timesheets_removed": timesheet_columns,
    "comments_removed": comment_columns,
}


def removal_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("removed_id", sa.Integer, nullable=False),
        sa.Column("removed_run_id", sa.Integer, nullable=False),
        sa.Column("removed_at", sa.DateTime, nullable=False),
        sa.Column("removed_reason", sa.Text, nullable=False),
    ]


# --- v_data_freshness ----------------------------------------------------------------------
# *_OLD: the 0004 definition, frozen for the downgrade; *_NEW: the same columns, then the
# last removal. Only committed runs count: a removal rolled back with its run never happened.

PG_OLD = """
CREATE VIEW servicedesk.v_data_freshness AS
WITH views (view_name, position) AS (
    VALUES ('tickets', 1), ('timesheets', 2), ('comments', 3)
),
loads AS (
    SELECT view_name,
           max(COALESCE(last_load_time, load_end)) AS last_loaded,
           max(latest_source_time) AS latest_source_time
    FROM servicedesk.etl_metadata
    WHERE load_status IN ('success', 'partial')
    GROUP BY view_name
),
tables AS (
    SELECT 'tickets' AS view_name, max("TKT-Modified Time") AS newest, count(*) AS total_records
    FROM servicedesk.tickets
    UNION ALL
    SELECT 'timesheets', max("TS-Date"), count(*) FROM servicedesk.timesheets
    UNION ALL
    SELECT 'comments', max(created_time), count(*) FROM servicedesk.comments
)
SELECT v.view_name::text AS view_name,
       l.last_loaded,
       (now() AT TIME ZONE 'UTC') - l.last_loaded AS age,
       COALESCE(l.latest_source_time, t.newest) AS latest_data_date,
       t.total_records
FROM views v
LEFT JOIN loads l ON l.view_name = v.view_name
LEFT JOIN tables t ON t.view_name = v.view_name
ORDER BY v.position
"""

PG_NEW = """
CREATE OR REPLACE VIEW servicedesk.v_data_freshness AS
WITH views (view_name, position) AS (
    VALUES ('tickets', 1), ('timesheets', 2), ('comments', 3)
),
loads AS (
    SELECT view_name,
           max(COALESCE(last_load_time, load_end)) AS last_loaded,
           max(latest_source_time) AS latest_source_time
    FROM servicedesk.etl_metadata
    WHERE load_status IN ('success', 'partial')
    GROUP BY view_name
),
tables AS (
    SELECT 'tickets' AS view_name, max("TKT-Modified Time") AS newest, count(*) AS total_records
    FROM servicedesk.tickets
    UNION ALL
    SELECT 'timesheets', max("TS-Date"), count(*) FROM servicedesk.timesheets
    UNION ALL
    SELECT 'comments', max(created_time), count(*) FROM servicedesk.comments
),
removals AS (
    SELECT m.view_name,
           m.id AS run_id,
           COALESCE(m.load_end, m.load_start) AS removed_at,
           m.removed AS removed_rows
    FROM servicedesk.etl_metadata m
    WHERE m.id IN (
        SELECT max(id) FROM servicedesk.etl_metadata
        WHERE removed > 0 AND load_status IN ('success', 'partial')
        GROUP BY view_name
    )
)
SELECT v.view_name::text AS view_name,
       l.last_loaded,
       (now() AT TIME ZONE 'UTC') - l.last_loaded AS age,
       COALESCE(l.latest_source_time, t.newest) AS latest_data_date,
       t.total_records,
       r.run_id AS last_removal_run_id,
       r.removed_at AS last_removal_at,
       r.removed_rows AS last_removal_rows
FROM views v
LEFT JOIN loads l ON l.view_name = v.view_name
LEFT JOIN tables t ON t.view_name = v.view_name
LEFT JOIN removals r ON r.view_name = v.view_name
ORDER BY v.position
"""

SQLITE_OLD = """
CREATE VIEW v_data_freshness AS
WITH views (view_name, position) AS (
    VALUES ('tickets', 1), ('timesheets', 2), ('comments', 3)
),
loads AS (
    SELECT view_name,
           max(COALESCE(last_load_time, load_end)) AS last_loaded,
           max(latest_source_time) AS latest_source_time
    FROM etl_metadata
    WHERE load_status IN ('success', 'partial')
    GROUP BY view_name
),
tables AS (
    SELECT 'tickets' AS view_name, max("TKT-Modified Time") AS newest, count(*) AS total_records
    FROM tickets
    UNION ALL
    SELECT 'timesheets', max("TS-Date"), count(*) FROM timesheets
    UNION ALL
    SELECT 'comments', max(created_time), count(*) FROM comments
)
SELECT v.view_name AS view_name,
       l.last_loaded AS last_loaded,
       julianday('now') - julianday(l.last_loaded) AS age,
       COALESCE(l.latest_source_time, t.newest) AS latest_data_date,
       t.total_records AS total_records
FROM views v
LEFT JOIN loads l ON l.view_name = v.view_name
LEFT JOIN tables t ON t.view_name = v.view_name
ORDER BY v.position
"""

SQLITE_NEW = """
CREATE VIEW v_data_freshness AS
WITH views (view_name, position) AS (
    VALUES ('tickets', 1), ('timesheets', 2), ('comments', 3)
),
loads AS (
    SELECT view_name,
           max(COALESCE(last_load_time, load_end)) AS last_loaded,
           max(latest_source_time) AS latest_source_time
    FROM etl_metadata
    WHERE load_status IN ('success', 'partial')
    GROUP BY view_name
),
tables AS (
    SELECT 'tickets' AS view_name, max("TKT-Modified Time") AS newest, count(*) AS total_records
    FROM tickets
    UNION ALL
    SELECT 'timesheets', max("TS-Date"), count(*) FROM timesheets
    UNION ALL
    SELECT 'comments', max(created_time), count(*) FROM comments
),
removals AS (
    SELECT m.view_name,
           m.id AS run_id,
           COALESCE(m.load_end, m.load_start) AS removed_at,
           m.removed AS removed_rows
    FROM etl_metadata m
    WHERE m.id IN (
        SELECT max(id) FROM etl_metadata
        WHERE removed > 0 AND load_status IN ('success', 'partial')
        GROUP BY view_name
    )
)
SELECT v.view_name AS view_name,
       l.last_loaded AS last_loaded,
       julianday('now') - julianday(l.last_loaded) AS age,
       COALESCE(l.latest_source_time, t.newest) AS latest_data_date,
       t.total_records AS total_records,
       r.run_id AS last_removal_run_id,
       r.removed_at AS last_removal_at,
       r.removed_rows AS last_removal_rows
FROM views v
LEFT JOIN loads l ON l.view_name = v.view_name
LEFT JOIN tables t ON t.view_name = v.view_name
LEFT JOIN removals r ON r.view_name = v.view_name
ORDER BY v.position
"""


def upgrade() -> None:
    bind = op.get_bind()
    schema = schema_for(bind)
    is_pg = bind.dialect.name == "postgresql"
    for name, live_columns in REMOVED_TABLES.items():
        op.create_table(
            name,
            *live_columns(),
            *removal_columns(),
            sa.PrimaryKeyConstraint("removed_id", name=f"{name}_pkey"),
            schema=schema,
        )
        op.create_index(f"idx_{name}_run", name, ["removed_run_id"], schema=schema)
    for count in COUNTS:
        op.add_column(
            "etl_metadata",
            sa.Column(count, sa.Integer, nullable=False, server_default=sa.text("0")),
            schema=schema,
        )
    if is_pg:
        op.execute(PG_NEW)
        return
    # SQLite has no CREATE OR REPLACE VIEW.
    op.execute("DROP VIEW v_data_freshness")
    op.execute(SQLITE_NEW)


def downgrade() -> None:
    bind = op.get_bind()
    schema = schema_for(bind)
    is_pg = bind.dialect.name == "postgresql"
    # Columns cannot be removed from a view in place; without CASCADE an analyst's view
    # built on the new columns stops the downgrade instead of vanishing.
    op.execute(f"DROP VIEW {'servicedesk.' if is_pg else ''}v_data_freshness")
    # SQLite drops columns by recreating the table (batch), which the view must not see.
    with op.batch_alter_table("etl_metadata", schema=schema) as batch:
        for count in COUNTS:
            batch.drop_column(count)
    op.execute(PG_OLD if is_pg else SQLITE_OLD)
    for name in REMOVED_TABLES:
        op.drop_table(name, schema=schema)
