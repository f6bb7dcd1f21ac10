"""Analyst views and functions under their legacy names.

Views on both databases (SQLite in its own dialect): ``v_data_freshness``,
``v_orphaned_data``, ``v_user_activity``, ``v_engineering_tickets``. Functions
on PostgreSQL only: ``get_user_workload``, ``get_team_backlog``,
``get_full_name``, ``get_short_username``. Everything lives in schema
``servicedesk`` on PostgreSQL.

Stored times are naive UTC, so ages are measured against
``now() AT TIME ZONE 'UTC'`` (PostgreSQL) and ``datetime('now')`` (SQLite).
``v_data_freshness.age`` is an interval on PostgreSQL and a number of days
(real) on SQLite, which has no interval type.

A legacy database being adopted may already hold hand-made versions of these
objects; upgrade replaces them (DROP ... IF EXISTS, without CASCADE, so an
analyst's own view built on one of them stops the upgrade instead of
vanishing). Downgrade drops them all.

Revision ID: 0004_analyst_views
Revises: 0003_etl_extension
Create Date: 2026-01-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_analyst_views"
down_revision: str | Sequence[str] | None = "0003_etl_extension"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("v_data_freshness", "v_orphaned_data", "v_user_activity", "v_engineering_tickets")
FUNCTIONS = (
    "get_user_workload(text)",
    "get_team_backlog(text)",
    "get_full_name(text)",
    "get_short_username(text)",
)

# --- PostgreSQL ----------------------------------------------------------------------------

PG_VIEWS = {
    # Only success/partial runs count as loads: a failed run must not look fresh.
    "v_data_freshness": """
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
""",
    # Same definition as `otc status`: a NULL ticket reference is not an orphan.
    "v_orphaned_data": """
CREATE VIEW servicedesk.v_orphaned_data AS
SELECT 'timesheets'::text AS source, count(*)::integer AS count
FROM servicedesk.timesheets t
WHERE t."TS-Crm ID" IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM servicedesk.tickets k WHERE k."TKT-Ticket ID" = t."TS-Crm ID"
  )
UNION ALL
SELECT 'comments'::text, count(*)::integer
FROM servicedesk.comments c
WHERE c.ticket_id IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM servicedesk.tickets k WHERE k."TKT-Ticket ID" = c.ticket_id
  )
""",
    # LEFT JOIN: someone missing from user_lookup (a conflict, say) still shows up.
    "v_user_activity": """
CREATE VIEW servicedesk.v_user_activity AS
SELECT COALESCE(u.full_name, max(t."TS-User Full Name")) AS full_name,
       t."TS-User Username" AS short_username,
       u.team,
       count(DISTINCT t."TS-Crm ID")::integer AS tickets_worked,
       sum(t."TS-Hours") AS total_hours,
       count(DISTINCT t."TS-Date"::date)::integer AS days_active,
       max(t."TS-Date") AS last_activity
FROM servicedesk.timesheets t
LEFT JOIN servicedesk.user_lookup u ON u.short_username = t."TS-User Username"
WHERE t."TS-Date" >= date_trunc('day', now() AT TIME ZONE 'UTC') - interval '30 days'
  AND t."TS-User Username" IS NOT NULL
GROUP BY t."TS-User Username", u.full_name, u.team
""",
    "v_engineering_tickets": """
CREATE VIEW servicedesk.v_engineering_tickets AS
SELECT *
FROM servicedesk.tickets
WHERE "TKT-Team" IN ('Cloud - Infrastructure', 'Cloud - Security', 'Cloud - L3 Escalation')
""",
}

# SQL functions, not PL/pgSQL: the planner can inline them into the caller's query.
# A NULL status counts as open (nobody closed the ticket).
PG_FUNCTIONS = (
    """
CREATE FUNCTION servicedesk.get_user_workload(user_full_name text)
RETURNS TABLE (
    ticket_id integer,
    title text,
    status text,
    team text,
    created_time timestamp,
    age_days integer
)
LANGUAGE sql STABLE AS $$
    SELECT k."TKT-Ticket ID",
           k."TKT-Title",
           k."TKT-Status",
           k."TKT-Team",
           k."TKT-Created Time",
           extract(day FROM (now() AT TIME ZONE 'UTC') - k."TKT-Created Time")::integer
    FROM servicedesk.tickets k
    WHERE k."TKT-Assigned To User" = $1
      AND (k."TKT-Status" IS NULL OR k."TKT-Status" NOT IN ('Closed', 'Incident Resolved'))
    ORDER BY k."TKT-Created Time", k."TKT-Ticket ID"
$$
""",
    # LIKE, not equality: the legacy assignee is ' PendingAssignment' with a leading space.
    """
CREATE FUNCTION servicedesk.get_team_backlog(team_name text)
RETURNS TABLE (
    ticket_id integer,
    title text,
    status text,
    category text,
    created_time timestamp,
    age_days integer
)
LANGUAGE sql STABLE AS $$
    SELECT k."TKT-Ticket ID",
           k."TKT-Title",
           k."TKT-Status",
           k."TKT-Category",
           k."TKT-Created Time",
           extract(day FROM (now() AT TIME ZONE 'UTC') - k."TKT-Created Time")::integer
    FROM servicedesk.tickets k
    WHERE k."TKT-Team" = $1
      AND k."TKT-Assigned To User" LIKE '%PendingAssignment%'
      AND (k."TKT-Status" IS NULL OR k."TKT-Status" NOT IN ('Closed', 'Incident Resolved'))
    ORDER BY k."TKT-Created Time", k."TKT-Ticket ID"
$$
""",
    """
CREATE FUNCTION servicedesk.get_full_name(short text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT full_name FROM servicedesk.user_lookup WHERE short_username = $1
$$
""",
    # "full" is a keyword (FULL JOIN): quoted, the parameter keeps its legacy name.
    """
CREATE FUNCTION servicedesk.get_short_username("full" text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT short_username FROM servicedesk.user_lookup WHERE full_name = $1
$$
""",
)

# --- SQLite ----------------------------------------------------------------------------------

SQLITE_VIEWS = {
    "v_data_freshness": """
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
""",
    "v_orphaned_data": """
CREATE VIEW v_orphaned_data AS
SELECT 'timesheets' AS source, count(*) AS count
FROM timesheets t
WHERE t."TS-Crm ID" IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM tickets k WHERE k."TKT-Ticket ID" = t."TS-Crm ID")
UNION ALL
SELECT 'comments', count(*)
FROM comments c
WHERE c.ticket_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM tickets k WHERE k."TKT-Ticket ID" = c.ticket_id)
""",
    # Timestamps are stored as 'YYYY-MM-DD HH:MM:SS[.ffffff]' text, so text comparison
    # against datetime(...) orders them correctly.
    "v_user_activity": """
CREATE VIEW v_user_activity AS
SELECT COALESCE(u.full_name, max(t."TS-User Full Name")) AS full_name,
       t."TS-User Username" AS short_username,
       u.team AS team,
       count(DISTINCT t."TS-Crm ID") AS tickets_worked,
       sum(t."TS-Hours") AS total_hours,
       count(DISTINCT date(t."TS-Date")) AS days_active,
       max(t."TS-Date") AS last_activity
FROM timesheets t
LEFT JOIN user_lookup u ON u.short_username = t."TS-User Username"
WHERE t."TS-Date" >= datetime('now', 'start of day', '-30 days')
  AND t."TS-User Username" IS NOT NULL
GROUP BY t."TS-User Username", u.full_name, u.team
""",
    "v_engineering_tickets": """
CREATE VIEW v_engineering_tickets AS
SELECT *
FROM tickets
WHERE "TKT-Team" IN ('Cloud - Infrastructure', 'Cloud - Security', 'Cloud - L3 Escalation')
""",
}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for signature in FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS servicedesk.{signature}")
        for name in VIEWS:
            op.execute(f"DROP VIEW IF EXISTS servicedesk.{name}")
        for ddl in PG_VIEWS.values():
            op.execute(ddl)
        for ddl in PG_FUNCTIONS:
            op.execute(ddl)
        return
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for ddl in SQLITE_VIEWS.values():
        op.execute(ddl)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for signature in FUNCTIONS:
            op.execute(f"DROP FUNCTION servicedesk.{signature}")
        for name in reversed(VIEWS):
            op.execute(f"DROP VIEW servicedesk.{name}")
        return
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
