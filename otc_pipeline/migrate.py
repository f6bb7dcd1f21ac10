"""Schema migrations through Alembic, from any directory, without printing.

The Alembic scripts live in ``alembic/`` in a checkout and ship as
``otc_pipeline/migrations`` in the wheel. Each command here runs in one
transaction on the engine it is given and returns one line for the user.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Column, Integer, MetaData, Table, func, inspect, select, text
from sqlalchemy import table as table_clause
from sqlalchemy.engine import Connection, Engine

from . import models
from .db import connection, schema_name
from .errors import OtcError, SchemaNotReady

State = Literal["empty", "legacy", "behind", "head", "ahead/unknown"]

BASELINE = "0001_baseline"
UNIQUE_ENTRY = "timesheets_unique_entry"
LEGACY_TABLES = ("tickets", "timesheets", "comments", "user_lookup", "etl_metadata")
# Tables only otc-pipeline's migrations create: finding them without a version
# table means a half-migrated database, not a legacy one.
MIGRATION_TABLES = ("timesheets_dedup_archive", "etl_rejects")
# Columns the revisions after the baseline add; the rest of each model is legacy.
ADDED_LATER = {
    "timesheets": {"id"},
    "etl_metadata": {
        "id",  # some legacy databases lack it; adopt adds it
        "load_start",
        "load_end",
        "records_errors",
        "error_message",
        "records_unchanged",
        "records_duplicates",
        "records_rejected",
        "source",
        "warnings",
        "latest_source_time",
    },
}


def script_location() -> Path:
    """Where the Alembic scripts are: inside the installed package, or the checkout."""
    package = Path(models.__file__).resolve().parent
    for candidate in (package / "migrations", package.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise OtcError(
        f"the Alembic scripts are missing (looked in {package / 'migrations'} and "
        f"{package.parent / 'alembic'}); reinstall otc-pipeline"
    )


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config that needs no alembic.ini and prints nothing."""
    config = Config(stdout=io.StringIO())
    # Config values go through configparser interpolation: escape '%'.
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision the code expects (the single head)."""
    head = script_directory().get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise OtcError("no Alembic revisions found; reinstall otc-pipeline")
    return head


def current_revisions(conn: Connection) -> tuple[str, ...]:
    context = MigrationContext.configure(conn, opts={"version_table_schema": schema_name(conn)})
    return tuple(context.get_current_heads())


def _otc_tables(conn: Connection) -> set[str]:
    names = set(inspect(conn).get_table_names(schema=schema_name(conn)))
    return names & {*LEGACY_TABLES, *MIGRATION_TABLES}


def _state(conn: Connection) -> State:
    revisions = current_revisions(conn)
    if not revisions:
        return "legacy" if _otc_tables(conn) else "empty"
    scripts = script_directory()
    known = {script.revision for script in scripts.walk_revisions()}
    if any(revision not in known for revision in revisions):
        return "ahead/unknown"
    return "head" if set(revisions) == set(scripts.get_heads()) else "behind"


def state(engine: Engine | Connection) -> State:
    """Where the database stands: empty, legacy (not adopted), behind, head, ahead/unknown."""
    with connection(engine) as conn:
        return _state(conn)


def _revision_text(conn: Connection) -> str:
    return ", ".join(current_revisions(conn)) or "none"


def describe_current(engine: Engine) -> str:
    """One line: the database's revision and what to do about it."""
    with engine.connect() as conn:
        current = _state(conn)
        revision = _revision_text(conn)
    head = head_revision()
    if current == "empty":
        return "empty database: run `otc db upgrade` to create the schema"
    if current == "legacy":
        return "legacy database without Alembic version: run `otc db adopt`"
    if current == "head":
        return f"revision {revision} (head)"
    if current == "behind":
        return f"revision {revision}, behind head {head}: run `otc db upgrade`"
    return (
        f"revision {revision} is unknown to this otc-pipeline (head is {head}): "
        "upgrade otc-pipeline"
    )


def _run(engine: Engine, action: str, revision: str) -> tuple[str, str]:
    """Run one Alembic command in one transaction; (revision before, revision after)."""
    with engine.begin() as conn:
        before = _revision_text(conn)
        config = alembic_config(conn)
        try:
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
        except CommandError as exc:
            raise OtcError(
                f"cannot {action} to {revision!r}: {exc}; see `otc db current` for where "
                "the database stands"
            ) from None
        after = _revision_text(conn)
    return before, after


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Upgrade the schema to ``revision``; an empty database gets the whole schema."""
    current = state(engine)
    if current == "legacy":
        raise SchemaNotReady(
            "this is a legacy servicedesk database without an Alembic version: "
            "run `otc db adopt` to take it over"
        )
    before, after = _run(engine, "upgrade", revision)
    where = f"{after} (head)" if after == head_revision() else after
    if before == after:
        return f"already at revision {where}"
    return f"upgraded from revision {before} to {where}"


def downgrade(engine: Engine, revision: str) -> str:
    """Downgrade the schema to ``revision`` (``base`` removes every otc table)."""
    before, after = _run(engine, "downgrade", revision)
    if before == after:
        return f"already at revision {after}"
    if after == "none":
        return f"downgraded from revision {before} to base: no otc tables left"
    return f"downgraded from revision {before} to {after}"


# --- adopt ------------------------------------------------------------------------------


def _columns(conn: Connection, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table, schema=schema_name(conn))}


def _recognise_legacy(conn: Connection) -> None:
    """Check that this is a legacy servicedesk database adopt knows how to take over."""
    tables = set(inspect(conn).get_table_names(schema=schema_name(conn)))
    half_done = sorted(tables & set(MIGRATION_TABLES))
    has_id = "timesheets" in tables and "id" in _columns(conn, "timesheets")
    if half_done or has_id:
        raise SchemaNotReady(
            "the database has tables or columns from otc-pipeline's migrations "
            f"({', '.join(half_done) or 'timesheets.id'}) but no Alembic version, so its "
            "state cannot be recognised; restore its alembic_version table, or stamp the "
            "right revision with `alembic stamp`"
        )
    missing = [name for name in LEGACY_TABLES if name not in tables]
    if missing:
        raise SchemaNotReady(
            f"not a legacy servicedesk database: tables {', '.join(missing)} are missing; "
            "point --database-url at the servicedesk database"
        )
    problems: list[str] = []
    for name in LEGACY_TABLES:
        model_table = models.Base.metadata.tables[f"{models.SCHEMA}.{name}"]
        expected = {c.name for c in model_table.columns} - ADDED_LATER.get(name, set())
        lacking = sorted(expected - _columns(conn, name))
        if lacking:
            problems.append(f"{name} lacks {', '.join(repr(c) for c in lacking)}")
    if problems:
        raise SchemaNotReady(
            "not a recognisable legacy servicedesk database: "
            + "; ".join(problems)
            + "; add the missing columns by hand, then run `otc db adopt` again"
        )


def _qualified(conn: Connection, table: str) -> str:
    quote = conn.dialect.identifier_preparer.quote
    schema = schema_name(conn)
    return f"{quote(schema)}.{quote(table)}" if schema else quote(table)


def _drop_plain_unique_entry(conn: Connection) -> bool:
    """Remove the clean-up's plain UNIQUE entry (NULLs distinct); the dedup adds the real one."""
    schema = schema_name(conn)
    inspector = inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    constraints = {c["name"] for c in inspector.get_unique_constraints("timesheets", schema)}
    if UNIQUE_ENTRY in constraints and conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            f"ALTER TABLE {_qualified(conn, 'timesheets')} DROP CONSTRAINT {quote(UNIQUE_ENTRY)}"
        )
        return True
    indexes = {i["name"] for i in inspector.get_indexes("timesheets", schema)}
    if UNIQUE_ENTRY in indexes:
        prefix = f"{quote(schema)}." if schema else ""
        conn.exec_driver_sql(f"DROP INDEX {prefix}{quote(UNIQUE_ENTRY)}")
        return True
    # SQLite: an inline UNIQUE(...) table constraint has no droppable name; the
    # dedup migration rebuilds timesheets on SQLite, which removes it.
    return UNIQUE_ENTRY in constraints


def _add_etl_metadata_id(conn: Connection) -> None:
    """Give a legacy etl_metadata without ``id`` its integer key, numbered in row order."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            f"ALTER TABLE {_qualified(conn, 'etl_metadata')} "
            "ADD COLUMN id SERIAL CONSTRAINT etl_metadata_pkey PRIMARY KEY"
        )
        return
    # SQLite cannot add a primary key in place: copy into a new table in rowid order.
    old = Table("etl_metadata", MetaData(), autoload_with=conn)
    rebuilt = Table(
        "_etl_metadata_adopt",
        MetaData(),
        Column("id", Integer, primary_key=True),
        *(Column(c.name, c.type, nullable=c.nullable) for c in old.columns),
    )
    rebuilt.create(conn)
    names = [c.name for c in old.columns]
    conn.execute(rebuilt.insert().from_select(names, select(*old.columns).order_by(text("rowid"))))
    conn.exec_driver_sql('DROP TABLE "etl_metadata"')
    conn.exec_driver_sql('ALTER TABLE "_etl_metadata_adopt" RENAME TO "etl_metadata"')


def _create_missing_legacy_indexes(conn: Connection) -> list[str]:
    """Legacy indexes someone dropped by hand come back (reports rely on their speed)."""
    created: list[str] = []
    inspector = inspect(conn)
    for name in LEGACY_TABLES:
        table = models.Base.metadata.tables[f"{models.SCHEMA}.{name}"]
        existing = {i["name"] for i in inspector.get_indexes(name, schema_name(conn))}
        for index in table.indexes:
            if index.name and index.name != UNIQUE_ENTRY and index.name not in existing:
                index.create(conn)
                created.append(index.name)
    return created


def _count(conn: Connection, name: str) -> int:
    rows = select(func.count()).select_from(table_clause(name, schema=schema_name(conn)))
    return int(conn.execute(rows).scalar() or 0)


def adopt(engine: Engine) -> str:
    """Take over a legacy servicedesk database: recognise its state, stamp it, upgrade to head.

    State (a), before the clean-up: duplicates, no unique entry. State (b), after
    it: a plain UNIQUE entry (NULL tickets distinct) and perhaps hand-added
    etl_metadata columns. Both reach head with every timesheet row kept:
    duplicates move to timesheets_dedup_archive. All in one transaction.
    """
    current = state(engine)
    if current == "head":
        with engine.connect() as conn:
            return f"already at head (revision {_revision_text(conn)}): nothing to adopt"
    if current == "behind":
        with engine.connect() as conn:
            revision = _revision_text(conn)
        return (
            f"already managed by Alembic (revision {revision}, behind head): run `otc db upgrade`"
        )
    if current == "ahead/unknown":
        raise SchemaNotReady(
            f"the database is managed by Alembic at a revision this otc-pipeline does not "
            f"know ({describe_current(engine)})"
        )
    if current == "empty":
        raise SchemaNotReady(
            "no legacy servicedesk tables found, nothing to adopt: run `otc db upgrade` "
            "to create the schema"
        )

    with engine.begin() as conn:
        _recognise_legacy(conn)
        notes = []
        if _drop_plain_unique_entry(conn):
            notes.append("plain unique entry replaced")
            kind = "after the clean-up"
        else:
            kind = "before the clean-up"
        if "id" not in _columns(conn, "etl_metadata"):
            _add_etl_metadata_id(conn)
            notes.append("etl_metadata given its id")
        created = _create_missing_legacy_indexes(conn)
        if created:
            notes.append(f"recreated {', '.join(created)}")
        timesheets_before = _count(conn, "timesheets")
        config = alembic_config(conn)
        command.stamp(config, BASELINE)
        command.upgrade(config, "head")
        archived = _count(conn, "timesheets_dedup_archive")
        revision = _revision_text(conn)
    kept = timesheets_before - archived
    details = "; ".join([*notes, f"{archived} duplicate timesheets archived, {kept} kept"])
    return f"adopted legacy database ({kind}): {details}; now at revision {revision} (head)"
