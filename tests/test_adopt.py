"""`otc db adopt` on legacy databases built by hand, as the old scripts left them.

Every legacy database here is built from SQL written out in this file (not from the
models), in both production states — before the timesheets clean-up ("a") and after
it ("b": a plain UNIQUE entry, hand-added etl_metadata columns) — and three shapes:

* ``core``: only the keys and the columns the old loaders' INSERTs carried (11 ticket,
  12 timesheet and 10 comment columns), nullable where the old scripts left them so;
* ``every``: every column of a full export, with the legacy types the old scripts
  used (double precision, bigint, varchar(n)) and their hand-made views;
* ``foreign``: ``core`` plus other tools' tables (team management, with their own keys
  and foreign keys, one pointing at user_lookup), an analyst's column with data on
  tickets and timesheets, an analyst's index, view and function.
"""

# ruff: noqa: S608 - the SQL here is this file's own legacy DDL and seed data, no input.
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from otc_pipeline import migrate
from otc_pipeline.cli import app
from otc_pipeline.db import make_engine
from otc_pipeline.errors import SchemaNotReady
from otc_pipeline.models import SCHEMA, TIMESHEETS_KEY
from otc_pipeline.sample import write_sample

ROOT = Path(__file__).resolve().parent.parent
LEGACY_TABLES = ("tickets", "timesheets", "comments", "user_lookup", "etl_metadata")
KEY_SQL = ", ".join(f'"{name}"' for name in TIMESHEETS_KEY)

# The legacy tables, column by column, from legacy-schema.md: (name, SQL type, core?).
# "core" columns are those the old loaders wrote; the others exist only in databases
# where someone added every field of the full exports.
TICKETS = [
    ("TKT-Ticket ID", "INTEGER NOT NULL PRIMARY KEY", True),
    ("TKT-Title", "TEXT", True),
    ("TKT-Status", "TEXT", True),
    ("TKT-Severity", "TEXT", True),
    ("TKT-Category", "TEXT", True),
    ("TKT-Team", "TEXT", True),
    ("TKT-Assigned To User", "TEXT", True),
    ("TKT-Created Time", "TIMESTAMP", True),
    ("TKT-Modified Time", "TIMESTAMP", True),
    ("TKT-Account Name", "TEXT", True),
    ("TKT-Client Name", "TEXT", True),
    ("TKT-Description", "TEXT", False),
    ("TKT-Platform", "TEXT", False),
    ("TKT-Group", "TEXT", False),
    ("TKT-Assigned To Userid", "INTEGER", False),
    ("TKT-Created By User", "TEXT", False),
    ("TKT-Created By Userid", "INTEGER", False),
    ("TKT-Account Id", "INTEGER", False),
    ("TKT-Actual Resolution Date", "TIMESTAMP", False),
    ("TKT-Closure Date", "TIMESTAMP", False),
    ("TKT-Due Date", "TIMESTAMP", False),
    ("TKT-Actual Response Date", "TIMESTAMP", False),
    ("TKT-SLA", "TEXT", False),
    ("TKT-SLA Met", "TEXT", False),
    ("TKT-Response Met", "TEXT", False),
    ("TKT-Resolution Met", "TEXT", False),
    ("TKT-SLA Clock Status", "TEXT", False),
    ("TKT-Solution", "TEXT", False),
    ("TKT-Root Cause Category", "TEXT", False),
    ("TKT-Resolution/Change Type", "TEXT", False),
    ("TKT-Ticket Source", "TEXT", False),
]
TIMESHEETS = [
    ("TS-User Username", "TEXT", True),
    ("TS-User Full Name", "TEXT", True),
    ("TS-Date", "TIMESTAMP", True),
    ("TS-Time From", "TEXT", True),
    ("TS-Time To", "TEXT", True),
    ("TS-Hours", "NUMERIC", True),
    ("TS-Category", "TEXT", True),
    ("TS-Sub Category", "TEXT", True),
    ("TS-Type", "TEXT", True),
    ("TS-Crm ID", "INTEGER", True),
    ("TS-Description", "TEXT", True),
    ("TS-Account Name", "TEXT", True),
    ("TS-Ticket Project Master Code", "TEXT", False),
    ("TS-Notes", "TEXT", False),
    ("TS-Account Selcom", "TEXT", False),
    ("TS-Costcentre", "TEXT", False),
    ("TS-Charge Code", "TEXT", False),
    ("TS-Client Bill Code", "TEXT", False),
    ("TS-Billable", "BOOLEAN", False),
    ("TS-Approved", "BOOLEAN", False),
    ("TS-Modified Time", "TIMESTAMP", False),
]
COMMENTS = [
    ("comment_id", "INTEGER NOT NULL PRIMARY KEY", True),
    ("ticket_id", "INTEGER", True),
    ("comment_text", "TEXT", True),
    ("user_id", "TEXT", True),
    ("user_name", "TEXT", True),
    ("owner_type", "TEXT", True),
    ("created_time", "TIMESTAMP", True),
    ("visible_to_customer", "TEXT", True),
    ("comment_type", "TEXT", True),
    ("team", "TEXT", True),
]
USER_LOOKUP = [
    ("id", "SERIAL", True),
    ("short_username", "TEXT", True),
    ("full_name", "TEXT", True),
    ("email", "TEXT", False),
    ("team", "TEXT", False),
    ("source", "TEXT", False),
    ("updated_at", "TIMESTAMP DEFAULT CURRENT_TIMESTAMP", False),
]
ETL_METADATA = [
    ("id", "SERIAL", True),
    ("view_name", "TEXT", True),
    ("records_fetched", "INTEGER", True),
    ("records_inserted", "INTEGER", True),
    ("records_updated", "INTEGER", True),
    ("load_status", "TEXT", True),
    ("load_duration_seconds", "NUMERIC", True),
    ("last_load_time", "TIMESTAMP", True),
]
HAND_ADDED = [  # etl_metadata, after the clean-up
    ("load_start", "TIMESTAMP"),
    ("load_end", "TIMESTAMP"),
    ("records_errors", "INTEGER"),
    ("error_message", "TEXT"),
]
# The "every" shape on PostgreSQL: what the old scripts' CREATE TABLEs really said.
LEGACY_TYPES = {
    ("tickets", "TKT-Title"): "VARCHAR(500)",
    ("tickets", "TKT-Account Id"): "BIGINT",
    ("timesheets", "TS-Hours"): "DOUBLE PRECISION",
    ("timesheets", "TS-Crm ID"): "BIGINT",
    ("comments", "user_name"): "VARCHAR(100)",
    ("etl_metadata", "load_duration_seconds"): "REAL",
}
INDEXES = {
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
    "user_lookup": {},
    "etl_metadata": {"idx_etl_metadata_view": ["view_name"]},
}

# Someone dropped this legacy index by hand in the "every" shape; adopt creates it again.
DROPPED_BY_HAND = "idx_tickets_created_time"

# Other tools' objects in the same schema (the "foreign" shape).
FOREIGN_TABLES = ("team_members", "team_queue_assignments", "team_member_history")
ANALYST_COLUMN = ("tickets", "analyst_priority")
ANALYST_PG_COLUMN = ("timesheets", "analyst_note")  # PostgreSQL: 0002 adds id in place
FOREIGN_NAMES = {
    *FOREIGN_TABLES,
    "analyst_priority",
    "analyst_note",
    "idx_analyst_priority",
    "v_team_load",
    "team_size",
    "team_members_pkey",
    "team_members_full_name_key",
    "team_members_user_lookup_id_fkey",
    "team_queue_assignments_pkey",
    "team_queue_assignments_member_id_fkey",
    "team_queue_assignments_member_queue_key",
    "team_member_history_pkey",
    "team_member_history_member_id_fkey",
}


def foreign_ddl(pg: bool) -> list[str]:
    p = f"{SCHEMA}." if pg else ""
    serial = "SERIAL PRIMARY KEY" if pg else "INTEGER NOT NULL PRIMARY KEY"
    statements = [
        f"CREATE TABLE {p}team_members (id {serial}, full_name TEXT NOT NULL "
        "CONSTRAINT team_members_full_name_key UNIQUE, user_lookup_id INTEGER "
        f"CONSTRAINT team_members_user_lookup_id_fkey REFERENCES {p}user_lookup (id), "
        "active BOOLEAN NOT NULL DEFAULT TRUE)",
        f"CREATE TABLE {p}team_queue_assignments (id {serial}, member_id INTEGER NOT NULL "
        f"CONSTRAINT team_queue_assignments_member_id_fkey REFERENCES {p}team_members (id), "
        "queue TEXT NOT NULL, CONSTRAINT team_queue_assignments_member_queue_key "
        "UNIQUE (member_id, queue))",
        f"CREATE TABLE {p}team_member_history (id {serial}, member_id INTEGER NOT NULL "
        f"CONSTRAINT team_member_history_member_id_fkey REFERENCES {p}team_members (id), "
        "changed_at TIMESTAMP, note TEXT)",
        f"ALTER TABLE {p}tickets ADD COLUMN analyst_priority TEXT",
        f'CREATE INDEX idx_analyst_priority ON {p}tickets (analyst_priority, "TKT-Team")',
        f"CREATE VIEW {p}v_team_load AS SELECT m.full_name, count(q.id) AS queues "
        f"FROM {p}team_members m LEFT JOIN {p}team_queue_assignments q "
        "ON q.member_id = m.id GROUP BY m.full_name",
    ]
    if pg:
        statements += [
            f"ALTER TABLE {p}timesheets ADD COLUMN analyst_note TEXT",
            f"CREATE FUNCTION {p}team_size() RETURNS bigint LANGUAGE sql "
            f"AS 'SELECT count(*) FROM {p}team_members'",
        ]
    return statements


def legacy_ddl(dialect: str, state: str, shape: str = "every") -> list[str]:
    """The legacy DDL: state "a" before the clean-up, "b" after it, "b-no-id" without etl id."""
    pg = dialect == "postgresql"
    prefix = f"{SCHEMA}." if pg else ""
    statements = [f"CREATE SCHEMA {SCHEMA}"] if pg else []
    etl = list(ETL_METADATA)
    if state != "a":
        etl += [(name, kind, True) for name, kind in HAND_ADDED]
    if state == "b-no-id":
        etl = etl[1:]
    tables = {
        "tickets": TICKETS,
        "timesheets": TIMESHEETS,
        "comments": COMMENTS,
        "user_lookup": USER_LOOKUP,
        "etl_metadata": etl,
    }
    for name, columns in tables.items():
        parts = []
        for column, kind, core in columns:
            if shape != "every" and not core:
                continue
            if pg and shape == "every":
                kind = LEGACY_TYPES.get((name, column), kind)
            if not pg:
                kind = re.sub("^TIMESTAMP", "DATETIME", kind)  # what SQLAlchemy writes there
            if kind == "SERIAL":
                # SQLite lets a PRIMARY KEY column hold NULL unless told otherwise.
                kind = "SERIAL PRIMARY KEY" if pg else "INTEGER NOT NULL PRIMARY KEY"
            parts.append(f'"{column}" {kind}')
        if name == "user_lookup":
            parts.append("CONSTRAINT user_lookup_short_username_key UNIQUE (short_username)")
            parts.append("CONSTRAINT user_lookup_full_name_unique UNIQUE (full_name)")
        statements.append(f"CREATE TABLE {prefix}{name} ({', '.join(parts)})")
        for index, on in INDEXES[name].items():
            if shape == "every" and index == DROPPED_BY_HAND:
                continue
            columns_sql = ", ".join(f'"{c}"' for c in on)
            statements.append(f"CREATE INDEX {index} ON {prefix}{name} ({columns_sql})")
    if pg and shape == "every":
        # The old scripts' own version of an analyst view (revision 0004 replaces it).
        statements.append(
            f"CREATE VIEW {prefix}v_engineering_tickets AS SELECT * FROM {prefix}tickets "
            "WHERE \"TKT-Team\" <> 'NOC'"
        )
    if state == "b-other-form":
        # The plain UNIQUE in its other form: a unique index on PostgreSQL, an inline
        # table constraint on SQLite.
        if pg:
            statements.append(
                f"CREATE UNIQUE INDEX timesheets_unique_entry ON {prefix}timesheets ({KEY_SQL})"
            )
        else:
            create = next(s for s in statements if s.startswith("CREATE TABLE timesheets"))
            statements[statements.index(create)] = (
                f"{create[:-1]}, CONSTRAINT timesheets_unique_entry UNIQUE ({KEY_SQL}))"
            )
    elif state != "a":
        # The clean-up's plain UNIQUE: NULL tickets stay distinct, so duplicates came back.
        if pg:
            statements.append(
                f"ALTER TABLE {prefix}timesheets "
                f"ADD CONSTRAINT timesheets_unique_entry UNIQUE ({KEY_SQL})"
            )
        else:
            statements.append(
                f"CREATE UNIQUE INDEX timesheets_unique_entry ON timesheets ({KEY_SQL})"
            )
    if shape == "foreign":
        statements += foreign_ddl(pg)
    return statements


def reflected(conn: Connection, name: str) -> sa.Table:
    schema = SCHEMA if conn.dialect.name == "postgresql" else None
    return sa.Table(name, sa.MetaData(), autoload_with=conn, schema=schema)


def insert(conn: Connection, name: str, rows: list[dict[str, Any]]) -> None:
    """Insert the values of ``rows`` that this legacy table has columns for."""
    table = reflected(conn, name)
    for row in rows:
        conn.execute(table.insert(), {k: v for k, v in row.items() if k in table.c})


def timesheet(user: str, crm: int | None, note: str) -> dict[str, Any]:
    return {
        "TS-User Username": user,
        "TS-User Full Name": user.title(),
        "TS-Date": datetime(2025, 6, 2),
        "TS-Time From": "09:00",
        "TS-Hours": Decimal("0.5"),
        "TS-Crm ID": crm,
        "TS-Description": note,
        "TS-Notes": note,
    }


def seed(conn: Connection, state: str, shape: str) -> None:
    rows = [
        timesheet("djewell", None, "first"),
        timesheet("djewell", None, "reloaded"),  # legal under a plain UNIQUE
        timesheet("djewell", None, "reloaded again"),
        timesheet("djewell", 5001, "first"),
        timesheet("amiller", None, "first"),
    ]
    if state == "a":
        rows.append(timesheet("djewell", 5001, "duplicate with a ticket"))
    insert(conn, "timesheets", rows)
    insert(
        conn,
        "tickets",
        [
            {
                "TKT-Ticket ID": 5001,
                "TKT-Title": "Disk full",
                "TKT-Assigned To User": " PendingAssignment",
                "TKT-Account Id": 42,
            }
        ],
    )
    insert(conn, "comments", [{"comment_id": 1, "ticket_id": 5001, "user_name": "djewell"}])
    insert(
        conn,
        "user_lookup",
        [{"short_username": "djewell", "full_name": "Dion Jewell", "source": "manual"}],
    )
    run: dict[str, Any] = {
        "view_name": "timesheets",
        "records_fetched": 6,
        "load_status": "success",
        "load_duration_seconds": 1.5,
        "load_start": datetime(2025, 6, 2, 1),
        "records_errors": 0,
        "error_message": "none",
    }
    insert(conn, "etl_metadata", [run, {**run, "view_name": "tickets"}])
    if shape == "foreign":
        p = f"{SCHEMA}." if conn.dialect.name == "postgresql" else ""
        conn.exec_driver_sql(
            f"INSERT INTO {p}team_members (full_name, user_lookup_id) "
            f"SELECT 'Dion Jewell', id FROM {p}user_lookup"
        )
        conn.exec_driver_sql(f"INSERT INTO {p}team_members (full_name) VALUES ('Ann Miller')")
        conn.exec_driver_sql(
            f"INSERT INTO {p}team_queue_assignments (member_id, queue) "
            f"SELECT id, 'NOC' FROM {p}team_members"
        )
        conn.exec_driver_sql(
            f"INSERT INTO {p}team_member_history (member_id, note) "
            f"SELECT id, 'joined' FROM {p}team_members"
        )
        conn.exec_driver_sql(f"UPDATE {p}tickets SET analyst_priority = 'P1'")
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"UPDATE {p}timesheets SET analyst_note = 'checked'")


def legacy_columns(engine: Engine) -> dict[str, list[str]]:
    """The columns of each legacy table before adopt, except any id."""
    with engine.connect() as conn:
        return {
            name: [c.name for c in reflected(conn, name).columns if c.name != "id"]
            for name in LEGACY_TABLES
        }


def snapshot(engine: Engine, legacy: dict[str, list[str]]) -> dict[str, Counter[tuple[Any, ...]]]:
    """Every row of every legacy and foreign table (timesheets together with its archive)."""
    result: dict[str, Counter[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names(schema=migrate.schema_name(conn)))
        for name in [*LEGACY_TABLES, *(t for t in FOREIGN_TABLES if t in names)]:
            table = reflected(conn, name)
            columns = [table.c[c] for c in legacy.get(name, [c.name for c in table.columns])]
            rows = Counter(tuple(r) for r in conn.execute(sa.select(*columns)))
            if name == "timesheets" and "timesheets_dedup_archive" in names:
                archive = reflected(conn, "timesheets_dedup_archive")
                archived = [archive.c[c.name] for c in columns if c.name in archive.c]
                # An analyst's column is not archived: the kept row holds the same value.
                archived += [sa.literal("checked") for c in columns if c.name not in archive.c]
                rows += Counter(tuple(r) for r in conn.execute(sa.select(*archived)))
            result[name] = rows
    return result


def schema_objects(conn: Connection) -> dict[tuple[str, ...], Any]:
    """Every object in the schema, one entry per object: tables' columns, keys, indexes, views."""
    schema = migrate.schema_name(conn)
    inspector = sa.inspect(conn)
    found: dict[tuple[str, ...], Any] = {}
    for table in inspector.get_table_names(schema=schema):
        for c in inspector.get_columns(table, schema=schema):
            identity = c.get("identity")
            found[("column", table, c["name"])] = (
                str(c["type"]),
                c["nullable"],
                c.get("default"),
                identity and {k: identity[k] for k in ("always", "start", "increment")},
            )
        pk = inspector.get_pk_constraint(table, schema=schema)
        # SQLite names a primary key only when told to; nothing refers to that name.
        name = pk["name"] if conn.dialect.name == "postgresql" else None
        found[("primary key", table)] = (name, tuple(pk["constrained_columns"]))
        for u in inspector.get_unique_constraints(table, schema=schema):
            found[("unique", table, u["name"] or "")] = (
                tuple(u["column_names"]),
                u.get("dialect_options"),
            )
        for fk in inspector.get_foreign_keys(table, schema=schema):
            found[("foreign key", table, fk["name"] or "")] = (
                tuple(fk["constrained_columns"]),
                fk["referred_table"],
                tuple(fk["referred_columns"]),
            )
        for ck in inspector.get_check_constraints(table, schema=schema):
            found[("check", table, ck["name"] or "")] = ck["sqltext"]
        for i in inspector.get_indexes(table, schema=schema):
            found[("index", table, i["name"] or "")] = (
                tuple(i["column_names"]),
                i["unique"],
                i.get("dialect_options"),
            )
    if conn.dialect.name == "postgresql":
        for name, definition in conn.execute(
            sa.text("SELECT viewname, definition FROM pg_views WHERE schemaname = :s").bindparams(
                s=schema
            )
        ):
            if name == "v_engineering_tickets":
                # SELECT * lists the table's columns in table order: an adopted tickets
                # has the columns it gained at the end. Same columns, other order.
                # It shows an analyst's column too: that is the analyst's, not a change.
                definition = sorted(
                    line.rstrip(",")
                    for line in definition.splitlines()
                    if not any(name in line for name in FOREIGN_NAMES)
                )
            found[("view", name)] = definition
        for name, definition in conn.execute(
            sa.text(
                "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = :s"
            ).bindparams(s=schema)
        ):
            found[("function", name)] = definition
        for (name,) in conn.execute(
            sa.text("SELECT sequencename FROM pg_sequences WHERE schemaname = :s").bindparams(
                s=schema
            )
        ):
            found[("sequence", name)] = True
    else:
        for kind, name, definition in conn.exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('view', 'trigger')"
        ):
            found[(kind, name)] = definition
    found[("alembic_version",)] = migrate.current_revisions(conn)
    return found


def own_objects(found: dict[tuple[str, ...], Any]) -> dict[tuple[str, ...], Any]:
    """The objects otc-pipeline owns: everything but the foreign shape's objects."""
    return {
        key: value
        for key, value in found.items()
        if not FOREIGN_NAMES & set(key) and not any(n.startswith("team_") for n in key)
    }


@pytest.fixture
def legacy_engine(empty_db_url: str, dialect: str, request: pytest.FixtureRequest) -> Any:
    state, shape = request.param if isinstance(request.param, tuple) else (request.param, "every")
    eng = make_engine(empty_db_url)
    with eng.begin() as conn:
        for statement in legacy_ddl(dialect, state, shape):
            conn.exec_driver_sql(statement)
        seed(conn, state, shape)
    yield eng
    eng.dispose()


@pytest.fixture
def fresh_engine(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """A database created by `otc db upgrade`, for comparison."""
    if dialect == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
        migrate.upgrade(eng)
        yield eng
        eng.dispose()
        return
    dbs = request.getfixturevalue("pg_databases")
    url = dbs.create(template=request.getfixturevalue("_pg_head_template"))
    eng = make_engine(url)
    yield eng
    eng.dispose()
    dbs.drop(url.database or "")


def objects(engine: Engine) -> dict[tuple[str, ...], Any]:
    with engine.connect() as conn:
        return schema_objects(conn)


def count(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(reflected(conn, name))).scalar()
            or 0
        )


def difference(adopted: dict[Any, Any], fresh: dict[Any, Any]) -> dict[Any, Any]:
    """Object by object: what the adopted database has differently from the fresh one."""
    keys = set(adopted) | set(fresh)
    return {
        k: (adopted.get(k, "<missing>"), fresh.get(k, "<missing>"))
        for k in sorted(keys)
        if adopted.get(k, "<missing>") != fresh.get(k, "<missing>")
    }


STATES = [("a", "before the clean-up", 3), ("b", "after the clean-up", 2)]
SHAPES = ["core", "every", "foreign"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("state", "kind", "archived"), STATES)
def test_adopt_takes_over_every_legacy_shape_and_equals_a_fresh_database(
    empty_db_url: str,
    dialect: str,
    fresh_engine: Engine,
    tmp_path: Path,
    state: str,
    kind: str,
    archived: int,
    shape: str,
) -> None:
    engine = make_engine(empty_db_url)
    with engine.begin() as conn:
        for statement in legacy_ddl(dialect, state, shape):
            conn.exec_driver_sql(statement)
        seed(conn, state, shape)
    legacy = legacy_columns(engine)
    before = snapshot(engine, legacy)
    schema_before = objects(engine)

    # The dry run tells the plan and changes nothing.
    plan = migrate.adopt(engine, dry_run=True)
    assert plan.startswith(f"legacy database ({kind}); adopt would:")
    assert f"{archived} duplicate timesheets to archive" in plan
    assert "stamp revision 0001_baseline, then upgrade to head" in plan
    assert migrate.head_revision() in plan
    if shape != "every":
        assert '"TKT-Description"' in plan and '"TS-Notes"' in plan  # columns to add
    if shape == "every":
        assert f"create indexes {DROPPED_BY_HAND}" in plan
    if shape == "every" and dialect == "postgresql":
        assert 'timesheets."TS-Hours" DOUBLE PRECISION -> NUMERIC' in plan
    assert objects(engine) == schema_before
    assert snapshot(engine, legacy) == before

    message = migrate.adopt(engine)

    assert message.startswith(f"adopted legacy database ({kind}); now at revision")
    assert f"{archived} duplicate timesheets archived" in message
    assert migrate.state(engine) == "head"
    assert snapshot(engine, legacy) == before
    assert count(engine, "timesheets_dedup_archive") == archived
    with engine.begin() as conn:
        command.check(migrate.alembic_config(conn))  # as `otc db` runs Alembic

    adopted = objects(engine)
    fresh = objects(fresh_engine)
    assert difference(own_objects(adopted), fresh) == {}
    # Nothing foreign went missing or changed.
    assert {k: v for k, v in schema_before.items() if set(k) & FOREIGN_NAMES} == {
        k: v for k, v in adopted.items() if set(k) & FOREIGN_NAMES
    }

    # Twice changes nothing.
    assert migrate.adopt(engine).startswith("already at head")
    assert objects(engine) == adopted
    assert snapshot(engine, legacy) == before

    # The NULL-ticket entry that slipped past the plain UNIQUE cannot come back.
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            reflected(conn, "timesheets").insert(),
            {k: v for k, v in timesheet("djewell", None, "again").items()},
        )

    # And it loads.
    exports = tmp_path / "exports"
    write_sample(exports, tickets=30, timesheets=60, comments=30, fmt="json", seed=5)
    result = CliRunner().invoke(
        app, ["load", "all", "--from", str(exports), "--database-url", empty_db_url]
    )
    assert result.exit_code == 0, result.output
    assert count(engine, "tickets") == 31
    after_load = snapshot(engine, legacy)
    for name in FOREIGN_TABLES:
        if name in before:
            assert after_load[name] == before[name]
    engine.dispose()


@pytest.mark.parametrize(
    ("legacy_engine", "kind", "archived"),
    [("b-no-id", "after the clean-up", 2), ("b-other-form", "after the clean-up", 2)],
    indirect=["legacy_engine"],
)
def test_adopt_other_legacy_forms(legacy_engine: Engine, kind: str, archived: int) -> None:
    legacy = legacy_columns(legacy_engine)
    before = snapshot(legacy_engine, legacy)
    message = migrate.adopt(legacy_engine)
    assert kind in message
    assert f"{archived} duplicate timesheets archived" in message
    assert snapshot(legacy_engine, legacy) == before
    with legacy_engine.begin() as conn:
        command.check(migrate.alembic_config(conn))


def alembic_cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    """The `alembic` command from the repository root, as an operator runs it."""
    env = {**os.environ, "OTC_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("legacy_engine", [("b", "foreign")], indirect=True)
def test_alembic_from_the_repo_root_ignores_foreign_objects(
    legacy_engine: Engine, empty_db_url: str
) -> None:
    migrate.adopt(legacy_engine)
    checked = alembic_cli("check", url=empty_db_url)
    assert checked.returncode == 0, checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr
    # `alembic check` is autogenerate: an autogenerated revision would be empty too.
    # Without the filters it would propose dropping every foreign object.


def test_otc_db_adopt_command(empty_db_url: str, dialect: str) -> None:
    engine = make_engine(empty_db_url)
    with engine.begin() as conn:
        for statement in legacy_ddl(dialect, "b", "core"):
            conn.exec_driver_sql(statement)
        seed(conn, "b", "core")
    runner = CliRunner()
    dry = runner.invoke(app, ["db", "adopt", "--dry-run", "--database-url", empty_db_url])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("legacy database (after the clean-up); adopt would:")
    assert dry.stdout.strip().endswith("dry run: nothing was changed")
    assert migrate.state(engine) == "legacy"
    result = runner.invoke(app, ["db", "adopt", "--database-url", empty_db_url])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("adopted legacy database (after the clean-up)")
    assert "2 duplicate timesheets archived" in result.stdout
    added = sum(not core for table in (TICKETS, TIMESHEETS, USER_LOOKUP) for *_, core in table)
    assert f"added {added + 6} columns" in result.stdout  # and etl_metadata's 6 own
    result = runner.invoke(app, ["db", "adopt", "--database-url", empty_db_url])
    assert result.exit_code == 0
    assert result.stdout.startswith("already at head")
    engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_lossy_type_stops_adopt_with_nothing_changed(empty_db_url: str, dialect: str) -> None:
    engine = make_engine(empty_db_url)
    with engine.begin() as conn:
        for statement in legacy_ddl(dialect, "a", "every"):
            conn.exec_driver_sql(statement)
        seed(conn, "a", "every")
        # Values that bigint holds and integer does not; hours that numeric would round.
        conn.exec_driver_sql(
            f'UPDATE {SCHEMA}.tickets SET "TKT-Account Id" = 3000000000 WHERE true'
        )
        conn.exec_driver_sql(
            f'UPDATE {SCHEMA}.timesheets SET "TS-Hours" = 0.1::float8 + 0.2::float8'
        )
        conn.exec_driver_sql(f"UPDATE {SCHEMA}.etl_metadata SET view_name = NULL")
        # An analyst's views: one on a column adopt must convert, one on a legacy view
        # revision 0004 replaces. PostgreSQL would refuse both changes midway.
        conn.exec_driver_sql(
            f'CREATE VIEW public.v_hours AS SELECT "TS-Hours" FROM {SCHEMA}.timesheets'
        )
        conn.exec_driver_sql(
            f'CREATE VIEW {SCHEMA}.v_my_engineering AS SELECT "TKT-Ticket ID" '
            f"FROM {SCHEMA}.v_engineering_tickets"
        )
    before = objects(engine)
    legacy = legacy_columns(engine)
    rows = snapshot(engine, legacy)

    with pytest.raises(SchemaNotReady) as refused:
        migrate.adopt(engine)
    message = str(refused.value)
    assert message.startswith("cannot adopt this database, nothing was changed")
    assert 'tickets."TKT-Account Id" is BIGINT and some values' in message
    assert 'timesheets."TS-Hours" is DOUBLE PRECISION and 6 values' in message
    assert "etl_metadata.view_name must have a value and 2 rows have none" in message
    assert 'view public.v_hours uses timesheets."TS-Hours", whose type adopt converts' in message
    assert (
        "view servicedesk.v_my_engineering is built on v_engineering_tickets, which adopt "
        "replaces" in message
    )
    assert "TKT-Title" not in message  # varchar(500) -> text loses nothing
    assert objects(engine) == before
    assert snapshot(engine, legacy) == rows
    assert migrate.state(engine) == "legacy"
    with pytest.raises(SchemaNotReady):
        migrate.adopt(engine, dry_run=True)
    cli = CliRunner().invoke(app, ["db", "adopt", "--database-url", empty_db_url])
    assert cli.exit_code == 2
    assert cli.stderr.startswith("Error: cannot adopt this database, nothing was changed")
    assert objects(engine) == before

    # The commands it names fix it.
    fixes = re.findall(r"(ALTER TABLE [^;\n]+|DELETE FROM [^;\n]+)", message)
    assert len(fixes) == 5
    with engine.begin() as conn:
        for fix in fixes:
            conn.exec_driver_sql(fix)
        # v_hours followed the renamed column; the other view is dropped as advised.
        conn.exec_driver_sql(f"DROP VIEW {SCHEMA}.v_my_engineering")
    assert "adopted legacy database" in migrate.adopt(engine)
    with engine.begin() as conn:
        command.check(migrate.alembic_config(conn))
        kept = conn.exec_driver_sql(
            f'SELECT "TKT-Account Id (legacy)" FROM {SCHEMA}.tickets'
        ).scalar()
        hours = conn.exec_driver_sql("SELECT count(*) FROM public.v_hours").scalar()
    assert kept == 3000000000  # the legacy values stayed, beside the model's column
    assert hours == 3  # the analyst's view still reads them (3 rows archived)
    engine.dispose()


def test_adopt_counts_what_later_revisions_archive(empty_db_url: str, dialect: str) -> None:
    """Entries spelled "9:00" and "09:00" collide once times are canonical (0005)."""
    engine = make_engine(empty_db_url)
    with engine.begin() as conn:
        for statement in legacy_ddl(dialect, "a", "core"):
            conn.exec_driver_sql(statement)
        seed(conn, "a", "core")
        insert(conn, "timesheets", [{**timesheet("amiller", None, "x"), "TS-Time From": "9:00"}])
    total = count(engine, "timesheets")
    message = migrate.adopt(engine)
    assert "3 duplicate timesheets archived" in message
    assert "1 more timesheets archived by the later revisions" in message
    assert count(engine, "timesheets") + count(engine, "timesheets_dedup_archive") == total
    engine.dispose()


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_adopt_on_sqlite_refuses_a_timesheets_column_the_dedup_would_drop(
    empty_db_url: str, dialect: str
) -> None:
    engine = make_engine(empty_db_url)
    with engine.begin() as conn:
        for statement in legacy_ddl(dialect, "a", "core"):
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("ALTER TABLE timesheets ADD COLUMN analyst_note TEXT")
    with pytest.raises(SchemaNotReady, match="timesheets has columns otc-pipeline does not know"):
        migrate.adopt(engine)
    assert migrate.state(engine) == "legacy"
    engine.dispose()


def test_adopt_refuses_an_empty_database(empty_db_url: str) -> None:
    eng = make_engine(empty_db_url)
    with pytest.raises(SchemaNotReady, match="otc db upgrade"):
        migrate.adopt(eng)
    eng.dispose()


def test_adopt_refuses_an_unrecognisable_database(empty_db_url: str, dialect: str) -> None:
    eng = make_engine(empty_db_url)
    with eng.begin() as conn:
        for statement in legacy_ddl(dialect, "a", "core"):
            if "etl_metadata" not in statement and "user_lookup" not in statement:
                conn.exec_driver_sql(statement)
    with pytest.raises(SchemaNotReady, match="etl_metadata"):
        migrate.adopt(eng)
    assert migrate.state(eng) == "legacy"  # nothing was changed
    eng.dispose()


def test_adopt_refuses_a_table_without_the_loaders_columns(empty_db_url: str, dialect: str) -> None:
    eng = make_engine(empty_db_url)
    with eng.begin() as conn:
        for statement in legacy_ddl(dialect, "a", "core"):
            conn.exec_driver_sql(statement.replace('"TKT-Severity" TEXT, ', ""))
    with pytest.raises(SchemaNotReady, match="tickets lacks 'TKT-Severity'"):
        migrate.adopt(eng)
    assert migrate.state(eng) == "legacy"
    eng.dispose()


def test_adopt_on_an_alembic_database_says_so(empty_db_url: str) -> None:
    eng = make_engine(empty_db_url)
    migrate.upgrade(eng, migrate.BASELINE)
    assert "already managed by Alembic" in migrate.adopt(eng)
    assert migrate.state(eng) == "behind"
    migrate.upgrade(eng)
    assert migrate.adopt(eng).startswith("already at head")
    eng.dispose()
