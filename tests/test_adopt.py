"""`otc db adopt` on legacy databases built by hand, as the old scripts left them."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from decimal import Decimal
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
from otc_pipeline.models import SCHEMA, TIMESHEETS_KEY, Base

SQL_TYPES = {
    sa.Integer: "INTEGER",
    sa.Text: "TEXT",
    sa.DateTime: "TIMESTAMP",
    sa.Numeric: "NUMERIC",
    sa.Boolean: "BOOLEAN",
}
# What the old scripts created, column by column (the rest came later).
NOT_LEGACY = {"timesheets": {"id"}, "etl_metadata": set(migrate.ADDED_LATER["etl_metadata"])}
HAND_ADDED = ("load_start", "load_end", "records_errors", "error_message")
KEY_SQL = ", ".join(f'"{name}"' for name in TIMESHEETS_KEY)


def sql_type(column: sa.Column[Any], dialect: str) -> str:
    if dialect == "sqlite" and isinstance(column.type, sa.DateTime):
        return "DATETIME"  # what SQLAlchemy itself writes on SQLite
    return next(text for kind, text in SQL_TYPES.items() if isinstance(column.type, kind))


def legacy_ddl(dialect: str, state: str) -> list[str]:
    """The legacy DDL: state "a" before the clean-up, "b" after it, "b-no-id" without etl id."""
    pg = dialect == "postgresql"
    prefix = f"{SCHEMA}." if pg else ""
    # SQLite lets a PRIMARY KEY column hold NULL unless told otherwise.
    serial = "SERIAL PRIMARY KEY" if pg else "INTEGER NOT NULL PRIMARY KEY"
    statements = [f"CREATE SCHEMA {SCHEMA}"] if pg else []
    for name in migrate.LEGACY_TABLES:
        table = Base.metadata.tables[f"{SCHEMA}.{name}"]
        skip = set(NOT_LEGACY.get(name, set()))
        if name == "etl_metadata" and state != "a":
            skip -= set(HAND_ADDED)
        if name == "etl_metadata" and state != "b-no-id":
            skip.discard("id")
        parts = []
        for column in table.columns:
            if column.name in skip:
                continue
            if column.primary_key and column.name == "id":
                parts.append(f"id {serial}")
                continue
            part = f'"{column.name}" {sql_type(column, dialect)}'
            if column.primary_key:
                part += " NOT NULL PRIMARY KEY"
            elif not column.nullable:
                part += " NOT NULL"
            parts.append(part)
        if name == "user_lookup":
            parts.append("CONSTRAINT user_lookup_short_username_key UNIQUE (short_username)")
            parts.append("CONSTRAINT user_lookup_full_name_unique UNIQUE (full_name)")
        statements.append(f"CREATE TABLE {prefix}{name} ({', '.join(parts)})")
        for index in table.indexes:
            if index.name == "timesheets_unique_entry":
                continue
            columns = ", ".join(f'"{c.name}"' for c in index.columns)
            statements.append(f"CREATE INDEX {index.name} ON {prefix}{name} ({columns})")
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
    return statements


def reflected(conn: Connection, name: str) -> sa.Table:
    schema = SCHEMA if conn.dialect.name == "postgresql" else None
    return sa.Table(name, sa.MetaData(), autoload_with=conn, schema=schema)


def timesheet(user: str, crm: int | None, note: str) -> dict[str, Any]:
    return {
        "TS-User Username": user,
        "TS-User Full Name": user.title(),
        "TS-Date": datetime(2025, 6, 2),
        "TS-Time From": "09:00",
        "TS-Hours": Decimal("0.5"),
        "TS-Crm ID": crm,
        "TS-Notes": note,
    }


def seed(conn: Connection, state: str) -> None:
    rows = [
        timesheet("djewell", None, "first"),
        timesheet("djewell", None, "reloaded"),  # legal under a plain UNIQUE
        timesheet("djewell", None, "reloaded again"),
        timesheet("djewell", 5001, "first"),
        timesheet("amiller", None, "first"),
    ]
    if state == "a":
        rows.append(timesheet("djewell", 5001, "duplicate with a ticket"))
    for row in rows:
        conn.execute(reflected(conn, "timesheets").insert(), row)
    conn.execute(
        reflected(conn, "tickets").insert(),
        {
            "TKT-Ticket ID": 5001,
            "TKT-Title": "Disk full",
            "TKT-Assigned To User": " PendingAssignment",
        },
    )
    conn.execute(reflected(conn, "comments").insert(), {"comment_id": 1, "ticket_id": 5001})
    conn.execute(
        reflected(conn, "user_lookup").insert(),
        {"short_username": "djewell", "full_name": "Dion Jewell", "source": "manual"},
    )
    run: dict[str, Any] = {
        "view_name": "timesheets",
        "records_fetched": 6,
        "load_status": "success",
    }
    if state != "a":
        run.update(
            {"load_start": datetime(2025, 6, 2, 1), "records_errors": 0, "error_message": "none"}
        )
    conn.execute(reflected(conn, "etl_metadata").insert(), [run, {**run, "view_name": "tickets"}])


def legacy_columns(engine: Engine) -> dict[str, list[str]]:
    """The columns of each legacy table before adopt, except any id."""
    with engine.connect() as conn:
        return {
            name: [c.name for c in reflected(conn, name).columns if c.name != "id"]
            for name in migrate.LEGACY_TABLES
        }


def snapshot(engine: Engine, legacy: dict[str, list[str]]) -> dict[str, Counter[tuple[Any, ...]]]:
    """Every row of every legacy table (timesheets together with its archive)."""
    result: dict[str, Counter[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names(schema=migrate.schema_name(conn)))
        for name in migrate.LEGACY_TABLES:
            table = reflected(conn, name)
            columns = [table.c[c] for c in legacy[name]]
            rows = Counter(tuple(r) for r in conn.execute(sa.select(*columns)))
            if name == "timesheets" and "timesheets_dedup_archive" in names:
                archive = reflected(conn, "timesheets_dedup_archive")
                rows += Counter(
                    tuple(r) for r in conn.execute(sa.select(*(archive.c[c.name] for c in columns)))
                )
            result[name] = rows
    return result


@pytest.fixture
def legacy_engine(empty_db_url: str, dialect: str, request: pytest.FixtureRequest) -> Any:
    state: str = request.param
    eng = make_engine(empty_db_url)
    with eng.begin() as conn:
        for statement in legacy_ddl(dialect, state):
            conn.exec_driver_sql(statement)
        seed(conn, state)
    yield eng
    eng.dispose()


def count(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(reflected(conn, name))).scalar()
            or 0
        )


@pytest.mark.parametrize(
    ("legacy_engine", "kind", "archived"),
    [
        ("a", "before the clean-up", 3),
        ("b", "after the clean-up", 2),
        ("b-no-id", "after the clean-up", 2),
        ("b-other-form", "after the clean-up", 2),
    ],
    indirect=["legacy_engine"],
)
def test_adopt_keeps_every_row_and_reaches_head(
    legacy_engine: Engine, kind: str, archived: int
) -> None:
    legacy = legacy_columns(legacy_engine)
    before = snapshot(legacy_engine, legacy)
    assert migrate.state(legacy_engine) == "legacy"

    message = migrate.adopt(legacy_engine)

    assert kind in message
    assert f"{archived} duplicate timesheets archived" in message
    assert migrate.state(legacy_engine) == "head"
    assert snapshot(legacy_engine, legacy) == before
    assert count(legacy_engine, "timesheets_dedup_archive") == archived
    with legacy_engine.begin() as conn:
        command.check(migrate.alembic_config(conn))  # models match the adopted database

    # Twice changes nothing.
    assert migrate.adopt(legacy_engine).startswith("already at head")
    assert snapshot(legacy_engine, legacy) == before

    # The NULL-ticket entry that slipped past the plain UNIQUE cannot come back.
    with pytest.raises(IntegrityError), legacy_engine.begin() as conn:
        conn.execute(reflected(conn, "timesheets").insert(), timesheet("djewell", None, "again"))


@pytest.mark.parametrize("legacy_engine", ["b"], indirect=True)
def test_otc_db_adopt_command(legacy_engine: Engine, empty_db_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["db", "adopt", "--database-url", empty_db_url])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("adopted legacy database (after the clean-up)")
    assert len(result.stdout.strip().splitlines()) == 1
    result = runner.invoke(app, ["db", "adopt", "--database-url", empty_db_url])
    assert result.exit_code == 0
    assert result.stdout.startswith("already at head")


def test_adopt_refuses_an_empty_database(empty_db_url: str) -> None:
    eng = make_engine(empty_db_url)
    with pytest.raises(SchemaNotReady, match="otc db upgrade"):
        migrate.adopt(eng)
    eng.dispose()


def test_adopt_refuses_an_unrecognisable_database(empty_db_url: str, dialect: str) -> None:
    eng = make_engine(empty_db_url)
    with eng.begin() as conn:
        for statement in legacy_ddl(dialect, "a"):
            if "etl_metadata" not in statement and "user_lookup" not in statement:
                conn.exec_driver_sql(statement)
    with pytest.raises(SchemaNotReady, match="etl_metadata"):
        migrate.adopt(eng)
    assert migrate.state(eng) == "legacy"  # nothing was changed
    eng.dispose()


def test_adopt_on_an_alembic_database_says_so(empty_db_url: str) -> None:
    eng = make_engine(empty_db_url)
    migrate.upgrade(eng, migrate.BASELINE)
    assert "already managed by Alembic" in migrate.adopt(eng)
    assert migrate.state(eng) == "behind"
    migrate.upgrade(eng)
    assert migrate.adopt(eng).startswith("already at head")
    eng.dispose()
