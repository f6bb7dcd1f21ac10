"""The analyst layer: legacy views and functions, indexes and plans, on loaded sample data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, Table, insert, inspect, select, text
from sqlalchemy.orm import Session

from otc_pipeline import migrate, pipeline
from otc_pipeline.db import make_engine
from otc_pipeline.models import Comment, EtlRun, Ticket, Timesheet, UserLookup
from otc_pipeline.sample import PENDING_ASSIGNMENT, write_sample
from otc_pipeline.views import VIEW_ORDER

VIEWS = ("v_data_freshness", "v_orphaned_data", "v_user_activity", "v_engineering_tickets")
FUNCTIONS = ("get_user_workload", "get_team_backlog", "get_full_name", "get_short_username")
ENGINEERING = {"Cloud - Infrastructure", "Cloud - Security", "Cloud - L3 Escalation"}
DONE = {"Closed", "Incident Resolved"}
TICKET_COLUMNS = [c.name for c in Ticket.__table__.columns]

COLUMNS = {
    # The five legacy columns first (BI reports read them by position), then the last removal.
    "v_data_freshness": [
        "view_name",
        "last_loaded",
        "age",
        "latest_data_date",
        "total_records",
        "last_removal_run_id",
        "last_removal_at",
        "last_removal_rows",
    ],
    "v_orphaned_data": ["source", "count"],
    "v_user_activity": [
        "full_name",
        "short_username",
        "team",
        "tickets_worked",
        "total_hours",
        "days_active",
        "last_activity",
    ],
    "v_engineering_tickets": TICKET_COLUMNS,
}
PG_TYPES = {
    "v_data_freshness": [
        "text",
        "timestamp without time zone",
        "interval",
        "timestamp without time zone",
        "bigint",
        "integer",
        "timestamp without time zone",
        "integer",
    ],
    "v_orphaned_data": ["text", "integer"],
    "v_user_activity": [
        "text",
        "text",
        "text",
        "integer",
        "numeric",
        "integer",
        "timestamp without time zone",
    ],
}
PG_FUNCTION_RESULTS = {
    "get_user_workload(text)": "TABLE(ticket_id integer, title text, status text, team text, "
    "created_time timestamp without time zone, age_days integer)",
    "get_team_backlog(text)": "TABLE(ticket_id integer, title text, status text, category text, "
    "created_time timestamp without time zone, age_days integer)",
    "get_full_name(text)": "text",
    "get_short_username(text)": "text",
}


def qualify(conn: Connection, name: str) -> str:
    return f"servicedesk.{name}" if conn.dialect.name == "postgresql" else name


def rows_of(conn: Connection, name: str) -> list[dict[str, Any]]:
    result = conn.execute(text(f"SELECT * FROM {qualify(conn, name)}"))  # noqa: S608
    return [dict(row._mapping) for row in result]


def as_datetime(value: Any) -> datetime | None:
    """A timestamp as read back from a view (SQLite views hand back the stored text)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def db_now(conn: Connection) -> datetime:
    """The database's idea of now, naive UTC, as the views compute it."""
    if conn.dialect.name == "postgresql":
        return conn.execute(text("SELECT now() AT TIME ZONE 'UTC'")).scalar_one()
    return datetime.fromisoformat(conn.execute(text("SELECT datetime('now')")).scalar_one())


def load_sample(engine: Engine, directory: Path) -> dict[str, pipeline.RunSummary]:
    files = write_sample(directory, tickets=400, timesheets=3000, comments=600, fmt="json", seed=11)
    return {view: pipeline.load_view(engine, view, files[view]) for view in VIEW_ORDER}


def add_recent_activity(conn: Connection) -> None:
    """Timesheets inside (and just outside) the last 30 days; the sample itself is older."""
    today = datetime.combine(db_now(conn).date(), datetime.min.time())
    entries = [
        ("djewell", "Dion Jewell", today - timedelta(days=1), "09:00", 2400001, "1.5"),
        ("djewell", "Dion Jewell", today - timedelta(days=1), "11:00", 2400002, "0.25"),
        ("djewell", "Dion Jewell", today - timedelta(days=3), "09:00", 2400001, "2"),
        ("djewell", "Dion Jewell", today - timedelta(days=4), "09:00", None, "1"),
        ("djewell", "Dion Jewell", today - timedelta(days=45), "09:00", 2400003, "8"),
        ("nobody", "No Body", today - timedelta(days=2), "10:00", 9999999, "0.5"),
    ]
    conn.execute(
        insert(cast(Table, Timesheet.__table__)),
        [
            {
                "TS-User Username": short,
                "TS-User Full Name": full,
                "TS-Date": day,
                "TS-Time From": start,
                "TS-Crm ID": crm,
                "TS-Hours": Decimal(hours),
            }
            for short, full, day, start, crm, hours in entries
        ],
    )
    conn.execute(
        cast(Table, UserLookup.__table__)
        .update()
        .where(UserLookup.short_username == "djewell")
        .values(team="Cloud - Infrastructure")
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def loaded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """One database per dialect with the sample loaded through the pipeline; read-only tests."""
    directory = tmp_path_factory.mktemp("analyst")
    if request.param == "sqlite":
        url = f"sqlite:///{directory / 'otc.db'}"
        engine = make_engine(url)
        migrate.upgrade(engine, "head")
        name = None
    else:
        dbs = request.getfixturevalue("pg_databases")
        made = dbs.create(template=request.getfixturevalue("_pg_head_template"))
        name = made.database
        engine = make_engine(made.render_as_string(hide_password=False))
    summaries = load_sample(engine, directory / "sample")
    assert {s.status for s in summaries.values()} == {"success"}
    with engine.begin() as conn:
        add_recent_activity(conn)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE")
    yield engine
    engine.dispose()
    if name:
        request.getfixturevalue("pg_databases").drop(name)


# --- views on both databases ------------------------------------------------------------


def test_views_return_the_documented_columns(loaded: Engine) -> None:
    with loaded.connect() as conn:
        for name in VIEWS:
            result = conn.execute(text(f"SELECT * FROM {qualify(conn, name)}"))  # noqa: S608
            assert list(result.keys()) == COLUMNS[name], name


def test_view_column_types_on_postgresql(loaded: Engine) -> None:
    if loaded.dialect.name != "postgresql":
        pytest.skip("SQLite columns have no declared types")
    with loaded.connect() as conn:
        for view, types in PG_TYPES.items():
            found = conn.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'servicedesk' AND table_name = :view "
                    "ORDER BY ordinal_position"
                ),
                {"view": view},
            ).all()
            assert [tuple(r) for r in found] == list(zip(COLUMNS[view], types, strict=True))


def test_data_freshness_matches_the_runs_and_tables(loaded: Engine) -> None:
    with loaded.connect() as conn:
        freshness = rows_of(conn, "v_data_freshness")
        runs = conn.execute(select(EtlRun.__table__)).mappings().all()
        totals = {
            "tickets": len(conn.execute(select(Ticket.ticket_id)).all()),
            "timesheets": len(conn.execute(select(Timesheet.id)).all()),
            "comments": len(conn.execute(select(Comment.comment_id)).all()),
        }
    assert [r["view_name"] for r in freshness] == ["tickets", "timesheets", "comments"]
    for row in freshness:
        good = [
            r
            for r in runs
            if r["view_name"] == row["view_name"] and r["load_status"] in ("success", "partial")
        ]
        assert as_datetime(row["last_loaded"]) == max(r["last_load_time"] for r in good)
        assert as_datetime(row["latest_data_date"]) == max(r["latest_source_time"] for r in good)
        assert row["total_records"] == totals[row["view_name"]]
        assert isinstance(row["total_records"], int)
        age = row["age"]
        if loaded.dialect.name == "postgresql":
            assert isinstance(age, timedelta) and timedelta(0) <= age < timedelta(hours=1)
        else:
            # SQLite has no interval: the age is in days.
            assert isinstance(age, float) and 0 <= age < 1 / 24


def test_orphan_counts_equal_an_independent_count(loaded: Engine) -> None:
    with loaded.connect() as conn:
        ticket_ids = set(conn.scalars(select(Ticket.ticket_id)))
        crm_ids = list(conn.scalars(select(Timesheet.crm_id)))
        comment_tickets = list(conn.scalars(select(Comment.ticket_id)))
        orphans = rows_of(conn, "v_orphaned_data")
    expected: list[dict[str, Any]] = [
        {
            "source": "timesheets",
            "count": sum(1 for t in crm_ids if t is not None and t not in ticket_ids),
        },
        {
            "source": "comments",
            "count": sum(1 for t in comment_tickets if t is not None and t not in ticket_ids),
        },
    ]
    assert orphans == expected
    assert all(type(row["count"]) is int for row in orphans)
    # The sample has orphans and NULL tickets both, so the NULL rule is really exercised.
    assert expected[0]["count"] > 0 and None in crm_ids


def test_orphans_agree_with_otc_status(loaded: Engine) -> None:
    from otc_pipeline import commands

    status = {v["view"]: v["orphans"] for v in commands.status(str(loaded.url))}
    with loaded.connect() as conn:
        orphans = {r["source"]: r["count"] for r in rows_of(conn, "v_orphaned_data")}
    assert orphans == {"timesheets": status["timesheets"], "comments": status["comments"]}


def test_engineering_tickets_are_the_three_cloud_teams(loaded: Engine) -> None:
    with loaded.connect() as conn:
        tickets = Session(bind=conn).execute(select(Ticket.ticket_id, Ticket.team)).all()
        view = rows_of(conn, "v_engineering_tickets")
    expected = {t.ticket_id for t in tickets if t.team in ENGINEERING}
    assert expected and len(expected) < len(tickets)
    assert {r["TKT-Ticket ID"] for r in view} == expected
    assert len(view) == len(expected)


def test_user_activity_covers_the_last_30_days(loaded: Engine) -> None:
    with loaded.connect() as conn:
        start = datetime.combine(db_now(conn).date(), datetime.min.time()) - timedelta(days=30)
        entries = conn.execute(select(Timesheet.__table__)).mappings().all()
        names = dict(conn.execute(select(UserLookup.short_username, UserLookup.full_name)).all())
        teams = dict(conn.execute(select(UserLookup.short_username, UserLookup.team)).all())
        activity = {r["short_username"]: r for r in rows_of(conn, "v_user_activity")}

    expected: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e["TS-Date"] < start or e["TS-User Username"] is None:
            continue
        person = expected.setdefault(
            e["TS-User Username"],
            {"tickets": set(), "hours": Decimal(0), "days": set(), "last": e["TS-Date"]},
        )
        if e["TS-Crm ID"] is not None:
            person["tickets"].add(e["TS-Crm ID"])
        person["hours"] += e["TS-Hours"] or 0
        person["days"].add(e["TS-Date"].date())
        person["last"] = max(person["last"], e["TS-Date"])
        person["full"] = names.get(e["TS-User Username"], e["TS-User Full Name"])
    assert set(activity) == set(expected)
    for short, person in expected.items():
        row = activity[short]
        assert row["full_name"] == person["full"]
        assert row["team"] == teams.get(short)
        assert row["tickets_worked"] == len(person["tickets"])
        assert type(row["tickets_worked"]) is int and type(row["days_active"]) is int
        assert Decimal(str(row["total_hours"])) == person["hours"]
        assert row["days_active"] == len(person["days"])
        assert as_datetime(row["last_activity"]) == person["last"]
    # The entries this module added: 45 days ago does not count, NULL tickets are not tickets.
    dion = activity["djewell"]
    assert (dion["full_name"], dion["team"]) == ("Dion Jewell", "Cloud - Infrastructure")
    assert dion["tickets_worked"] >= 2 and dion["days_active"] >= 3
    # Someone not (yet) in user_lookup still shows, under the timesheet's full name.
    assert activity["nobody"]["full_name"] == "No Body" and activity["nobody"]["team"] is None


# --- functions (PostgreSQL) -------------------------------------------------------------


def require_pg(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("the legacy functions exist on PostgreSQL only")


def test_function_signatures(loaded: Engine) -> None:
    require_pg(loaded)
    with loaded.connect() as conn:
        for signature, result in PG_FUNCTION_RESULTS.items():
            found = conn.execute(
                text("SELECT pg_get_function_result(CAST(:f AS regprocedure))"),
                {"f": f"servicedesk.{signature}"},
            ).scalar_one()
            assert found == result, signature


def _open_tickets(conn: Connection) -> list[Any]:
    return [
        t
        for t in Session(bind=conn).scalars(select(Ticket))
        if t.status is None or t.status not in DONE
    ]


def test_get_user_workload(loaded: Engine) -> None:
    require_pg(loaded)
    with loaded.connect() as conn:
        open_tickets = _open_tickets(conn)
        counts: dict[str, int] = {}
        for t in open_tickets:
            counts[t.assigned_to_user] = counts.get(t.assigned_to_user, 0) + 1
        person = max(
            (n for n in counts if n and "PendingAssignment" not in n), key=lambda n: counts[n]
        )
        now = db_now(conn)
        result = conn.execute(
            text("SELECT * FROM servicedesk.get_user_workload(:who)"), {"who": person}
        )
        assert list(result.keys()) == [
            "ticket_id",
            "title",
            "status",
            "team",
            "created_time",
            "age_days",
        ]
        rows = result.all()
    mine = {t.ticket_id: t for t in open_tickets if t.assigned_to_user == person}
    assert {r.ticket_id for r in rows} == set(mine)
    for r in rows:
        t = mine[r.ticket_id]
        assert (r.title, r.status, r.team, r.created_time) == (
            t.title,
            t.status,
            t.team,
            t.created_time,
        )
        assert r.age_days == (now - t.created_time).days


def test_get_team_backlog(loaded: Engine) -> None:
    require_pg(loaded)
    with loaded.connect() as conn:
        open_tickets = _open_tickets(conn)
        now = db_now(conn)
        for team in sorted(ENGINEERING | {"NOC"}):
            result = conn.execute(
                text("SELECT * FROM servicedesk.get_team_backlog(:team)"), {"team": team}
            )
            assert list(result.keys()) == [
                "ticket_id",
                "title",
                "status",
                "category",
                "created_time",
                "age_days",
            ]
            rows = result.all()
            expected = {
                t.ticket_id: t
                for t in open_tickets
                if t.team == team and "PendingAssignment" in (t.assigned_to_user or "")
            }
            assert {r.ticket_id for r in rows} == set(expected), team
            for r in rows:
                assert type(r.ticket_id) is int and type(r.age_days) is int
                assert r.category == expected[r.ticket_id].category
                assert r.age_days == (now - expected[r.ticket_id].created_time).days
    assert any(t.assigned_to_user == PENDING_ASSIGNMENT for t in open_tickets)


def test_name_lookups(loaded: Engine) -> None:
    require_pg(loaded)
    with loaded.connect() as conn:
        row = conn.execute(
            text(
                "SELECT servicedesk.get_full_name('djewell') AS full_name, "
                "servicedesk.get_short_username('Dion Jewell') AS short, "
                "servicedesk.get_full_name('no-such-user') AS missing"
            )
        ).one()
    assert tuple(row) == ("Dion Jewell", "djewell", None)


# --- legacy queries and analyst patterns (PostgreSQL) -------------------------------------

ANALYST_QUERIES = {
    "freshness": "SELECT view_name, last_loaded, age FROM {s}v_data_freshness "
    "WHERE age > interval '1 day' OR last_loaded IS NULL",
    "orphans": "SELECT source, count FROM {s}v_orphaned_data ORDER BY source",
    "top users": "SELECT full_name, total_hours FROM {s}v_user_activity "
    "ORDER BY total_hours DESC LIMIT 10",
    "engineering open": """SELECT "TKT-Team", count(*) FROM {s}v_engineering_tickets
        WHERE "TKT-Status" NOT IN ('Closed', 'Incident Resolved') GROUP BY "TKT-Team" """,
    "workload": "SELECT * FROM {s}get_user_workload('Dion Jewell')",
    "backlog": "SELECT ticket_id, age_days FROM {s}get_team_backlog('Cloud - Infrastructure') "
    "ORDER BY age_days DESC",
    "names": "SELECT {s}get_full_name('djewell'), {s}get_short_username('Dion Jewell')",
    "pending": """SELECT count(*) FROM {s}tickets
        WHERE "TKT-Assigned To User" = ' PendingAssignment'""",
    "team workload": """
        SELECT "TKT-Team" AS team,
               COUNT(*) FILTER (WHERE "TKT-Status" NOT IN ('Closed', 'Incident Resolved'))
                   AS open_tickets,
               COUNT(*) FILTER (WHERE "TKT-Assigned To User" LIKE '%PendingAssignment%')
                   AS unassigned,
               COUNT(*) AS total
        FROM {s}tickets
        GROUP BY "TKT-Team"
        ORDER BY open_tickets DESC""",
    "hours over 30 days": """
        SELECT u.full_name, u.team, SUM(t."TS-Hours") AS hours,
               COUNT(DISTINCT t."TS-Crm ID") AS tickets
        FROM {s}timesheets t
        JOIN {s}user_lookup u ON u.short_username = t."TS-User Username"
        WHERE u.full_name = 'Dion Jewell'
          AND t."TS-Date" >= CURRENT_DATE - INTERVAL '30 days'
        GROUP BY u.full_name, u.team""",
    "age buckets": """
        SELECT CASE
                 WHEN now() - "TKT-Created Time" < INTERVAL '1 day' THEN '< 1 day'
                 WHEN now() - "TKT-Created Time" < INTERVAL '7 days' THEN '1-7 days'
                 WHEN now() - "TKT-Created Time" < INTERVAL '30 days' THEN '7-30 days'
                 ELSE '30+ days'
               END AS age_bucket,
               COUNT(*) AS tickets
        FROM {s}tickets
        WHERE "TKT-Status" NOT IN ('Closed', 'Incident Resolved')
        GROUP BY 1
        ORDER BY 1""",
    "ticket time": """
        SELECT k."TKT-Ticket ID", k."TKT-Title", SUM(t."TS-Hours") AS hours
        FROM {s}tickets k
        JOIN {s}timesheets t ON t."TS-Crm ID" = k."TKT-Ticket ID"
        GROUP BY k."TKT-Ticket ID", k."TKT-Title"
        ORDER BY hours DESC LIMIT 5""",
    "comments per ticket": """
        SELECT ticket_id, count(*), max(created_time) FROM {s}comments
        WHERE ticket_id IS NOT NULL GROUP BY ticket_id ORDER BY 2 DESC LIMIT 5""",
}


@pytest.mark.parametrize("qualified", [True, False], ids=["schema-qualified", "search_path"])
def test_legacy_and_analyst_queries_run_unchanged(loaded: Engine, qualified: bool) -> None:
    require_pg(loaded)
    results: dict[str, list[Any]] = {}
    with loaded.connect() as conn:
        if not qualified:
            conn.exec_driver_sql("SET search_path TO servicedesk")
        for name, sql in ANALYST_QUERIES.items():
            # exec_driver_sql: the text goes to the server exactly as an analyst types it.
            sql = sql.replace("{s}", "servicedesk." if qualified else "")
            results[name] = list(conn.exec_driver_sql(sql.replace("%", "%%")).all())
        conn.rollback()
    assert results["names"] == [("Dion Jewell", "djewell")]
    assert results["pending"][0][0] > 0
    hours = results["hours over 30 days"]
    assert hours and hours[0][0] == "Dion Jewell" and hours[0][1] == "Cloud - Infrastructure"
    buckets = {b for b, _ in results["age buckets"]}
    assert buckets <= {"< 1 day", "1-7 days", "7-30 days", "30+ days"}
    with loaded.connect() as conn:
        tickets = (
            Session(bind=conn)
            .execute(select(Ticket.team, Ticket.status, Ticket.assigned_to_user))
            .all()
        )
    by_team = {row[0]: row[1:] for row in results["team workload"]}
    for team, (open_count, unassigned, total) in by_team.items():
        mine = [t for t in tickets if t.team == team]
        assert total == len(mine)
        assert open_count == sum(1 for t in mine if t.status is not None and t.status not in DONE)
        assert unassigned == sum(
            1 for t in mine if "PendingAssignment" in (t.assigned_to_user or "")
        )


# --- indexes and plans ------------------------------------------------------------------

LEGACY_INDEXES = {
    "tickets": {
        "idx_tickets_team": ["TKT-Team"],
        "idx_tickets_status": ["TKT-Status"],
        "idx_tickets_status_team": ["TKT-Status", "TKT-Team"],
        "idx_tickets_assigned_user": ["TKT-Assigned To User"],
        "idx_tickets_modified_time": ["TKT-Modified Time"],
        "idx_tickets_created_time": ["TKT-Created Time"],
    },
    "timesheets": {
        "idx_timesheets_crm_id": ["TS-Crm ID"],
        "idx_timesheets_user": ["TS-User Username"],
        "idx_timesheets_date": ["TS-Date"],
        "idx_timesheets_user_date": ["TS-User Username", "TS-Date"],
    },
    "comments": {
        "idx_comments_ticket_id": ["ticket_id"],
        "idx_comments_user_name": ["user_name"],
        "idx_comments_created_time": ["created_time"],
    },
    "etl_metadata": {"idx_etl_metadata_view": ["view_name"]},
}


def test_legacy_indexes_exist_under_their_names(engine: Engine) -> None:
    schema = "servicedesk" if engine.dialect.name == "postgresql" else None
    inspector = inspect(engine)
    for table, expected in LEGACY_INDEXES.items():
        found = {i["name"]: i["column_names"] for i in inspector.get_indexes(table, schema)}
        for name, columns in expected.items():
            assert found.get(name) == columns, f"{table}.{name}"


def _plan(conn: Connection, sql: str) -> str:
    return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}"))


def test_team_status_filter_and_crm_join_use_their_indexes(loaded: Engine) -> None:
    require_pg(loaded)
    with loaded.connect() as conn:
        # The sample tables are small enough for a sequential scan to win; switched off,
        # the plan shows which index the planner can use.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        team_status = _plan(
            conn,
            """SELECT "TKT-Ticket ID" FROM servicedesk.tickets
               WHERE "TKT-Team" = 'Cloud - Infrastructure' AND "TKT-Status" = 'Open'""",
        )
        join = _plan(
            conn,
            """SELECT k."TKT-Ticket ID", t."TS-Hours"
               FROM servicedesk.tickets k
               JOIN servicedesk.timesheets t ON t."TS-Crm ID" = k."TKT-Ticket ID"
               WHERE k."TKT-Team" = 'Cloud - Infrastructure' AND k."TKT-Status" = 'Open'""",
        )
        conn.rollback()
    assert "idx_tickets_status_team" in team_status, team_status
    assert "idx_timesheets_crm_id" in join, join


# --- migrations ---------------------------------------------------------------------------


def _objects(conn: Connection) -> tuple[set[str], set[str]]:
    schema = "servicedesk" if conn.dialect.name == "postgresql" else None
    views = set(inspect(conn).get_view_names(schema)) & set(VIEWS)
    functions: set[str] = set()
    if conn.dialect.name == "postgresql":
        functions = set(
            conn.scalars(
                text(
                    "SELECT proname FROM pg_proc "
                    "WHERE pronamespace = CAST('servicedesk' AS regnamespace)"
                )
            )
        )
    return views, functions


def test_views_survive_downgrade_and_upgrade(engine: Engine, tmp_path: Path) -> None:
    load_sample(engine, tmp_path / "sample")
    with engine.connect() as conn:
        before = {
            name: rows_of(conn, name) for name in ("v_orphaned_data", "v_engineering_tickets")
        }
    migrate.downgrade(engine, "0003_etl_extension")
    with engine.connect() as conn:
        assert _objects(conn) == (set(), set())
        # Downgrade removes the analyst layer only, never data.
        assert conn.execute(select(Ticket.ticket_id)).first() is not None
    migrate.upgrade(engine, "head")
    with engine.connect() as conn:
        views, functions = _objects(conn)
        assert views == set(VIEWS)
        assert functions == (set(FUNCTIONS) if engine.dialect.name == "postgresql" else set())
        after = {name: rows_of(conn, name) for name in before}
    assert after == before


def test_downgrade_to_base_leaves_nothing(engine: Engine) -> None:
    migrate.downgrade(engine, "base")
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            left = conn.execute(
                text("SELECT count(*) FROM pg_namespace WHERE nspname = 'servicedesk'")
            ).scalar_one()
            assert left == 0
        else:
            assert inspect(conn).get_view_names() == []


def test_alembic_check_is_clean(engine: Engine) -> None:
    with engine.begin() as conn:
        # Raises AutogenerateDiffsDetected if the views or functions looked like drift.
        command.check(migrate.alembic_config(conn))


def test_upgrade_replaces_hand_made_legacy_objects(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        require_pg(engine)
        migrate.upgrade(engine, "0003_etl_extension")
        with engine.begin() as conn:
            # What the old scripts left behind: a bigint count, a varchar lookup.
            conn.exec_driver_sql(
                "CREATE VIEW servicedesk.v_orphaned_data AS "
                "SELECT 'timesheets' AS source, count(*) AS count FROM servicedesk.timesheets"
            )
            conn.exec_driver_sql(
                "CREATE FUNCTION servicedesk.get_full_name(short text) RETURNS varchar "
                "LANGUAGE sql AS $$ SELECT 'legacy'::varchar $$"
            )
        migrate.upgrade(engine, "head")
        with engine.connect() as conn:
            orphans = rows_of(conn, "v_orphaned_data")
            name = conn.execute(text("SELECT servicedesk.get_full_name('x')")).scalar()
            result_type = conn.execute(
                text(
                    "SELECT pg_get_function_result("
                    "CAST('servicedesk.get_full_name(text)' AS regprocedure))"
                )
            ).scalar()
    finally:
        engine.dispose()
    assert orphans == [{"source": "timesheets", "count": 0}, {"source": "comments", "count": 0}]
    assert name is None and result_type == "text"


# --- freshness around failed runs -----------------------------------------------------------


def test_freshness_before_any_load(engine: Engine) -> None:
    with engine.connect() as conn:
        rows = rows_of(conn, "v_data_freshness")
    assert [(r["view_name"], r["last_loaded"], r["age"], r["total_records"]) for r in rows] == [
        ("tickets", None, None, 0),
        ("timesheets", None, None, 0),
        ("comments", None, None, 0),
    ]


def test_a_failed_run_does_not_look_fresh(engine: Engine, tmp_path: Path) -> None:
    good_file = tmp_path / "tickets.json"
    good_file.write_text(
        json.dumps(
            {
                "message": {
                    "data": [
                        {
                            "TKT-Ticket ID": "7",
                            "TKT-Team": "NOC",
                            "TKT-Modified Time": "2026-01-10 08:00:00",
                        }
                    ]
                }
            }
        ),
        encoding="utf-8",
    )
    good = pipeline.load_view(engine, "tickets", good_file)
    assert good.status == "success"
    broken = tmp_path / "broken.json"
    broken.write_text('{"message": {"data": [{"TKT-Ticket ID": "8", "TKT-Team":', encoding="utf-8")
    failed = pipeline.load_view(engine, "tickets", broken)
    assert failed.status == "failed"
    with engine.connect() as conn:
        success_time = conn.execute(
            select(EtlRun.last_load_time).where(EtlRun.id == good.run_id)
        ).scalar_one()
        failed_end = conn.execute(
            select(EtlRun.load_end).where(EtlRun.id == failed.run_id)
        ).scalar_one()
        tickets = rows_of(conn, "v_data_freshness")[0]
    assert failed_end is not None and success_time is not None
    assert failed_end > success_time
    assert as_datetime(tickets["last_loaded"]) == success_time
    assert as_datetime(tickets["latest_data_date"]) == datetime(2026, 1, 10, 8, 0)
    assert tickets["total_records"] == 1
