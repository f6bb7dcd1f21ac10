"""What `otc db adopt` finds in a legacy servicedesk database, and what it changes there.

:func:`plan` only reads: it recognises the legacy state and lists every change
adopt will make, or the problems that stop it before anything changes.
:func:`apply` makes those changes in the caller's transaction; afterwards the
database is the legacy baseline with every model column, so stamping
``0001_baseline`` and upgrading to head gives the same schema as a fresh one.

Only otc-pipeline's own tables and columns are looked at or changed. Anything
else in the schema (other tools' tables, an analyst's column, index, view or
function) is left exactly as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, func, inspect, select, text
from sqlalchemy import cast as sql_cast
from sqlalchemy import column as column_clause
from sqlalchemy import table as table_clause
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import DateTime, NullType, TypeEngine

from . import models
from .db import schema_name
from .errors import first_line

LEGACY_TABLES = ("tickets", "timesheets", "comments", "user_lookup", "etl_metadata")
# Tables only otc-pipeline's migrations create: finding them without a version
# table means a half-migrated database, not a legacy one.
MIGRATION_TABLES = (
    "timesheets_dedup_archive",
    "etl_rejects",
    "timesheets_time_spellings",
    "tickets_removed",
    "timesheets_removed",
    "comments_removed",
)
# What the old loaders wrote (the columns of their INSERTs), plus each table's key: a
# legacy table must have these. Every other model column is added by adopt.
LOADER_COLUMNS: dict[str, tuple[str, ...]] = {
    "tickets": (
        "TKT-Ticket ID",
        "TKT-Title",
        "TKT-Status",
        "TKT-Severity",
        "TKT-Category",
        "TKT-Team",
        "TKT-Assigned To User",
        "TKT-Created Time",
        "TKT-Modified Time",
        "TKT-Account Name",
        "TKT-Client Name",
    ),
    "timesheets": (
        "TS-User Username",
        "TS-User Full Name",
        "TS-Date",
        "TS-Time From",
        "TS-Time To",
        "TS-Hours",
        "TS-Category",
        "TS-Sub Category",
        "TS-Type",
        "TS-Crm ID",
        "TS-Description",
        "TS-Account Name",
    ),
    "comments": (
        "comment_id",
        "ticket_id",
        "comment_text",
        "user_id",
        "user_name",
        "owner_type",
        "created_time",
        "visible_to_customer",
        "comment_type",
        "team",
    ),
    "user_lookup": ("id", "short_username", "full_name"),
    "etl_metadata": (
        "view_name",
        "records_fetched",
        "records_inserted",
        "records_updated",
        "load_status",
        "load_duration_seconds",
        "last_load_time",
    ),
}
# Columns a revision after the baseline adds (adopt leaves them to it), and
# etl_metadata.id, which adopt adds itself as a key numbered in row order.
LEFT_TO_MIGRATIONS = {"timesheets": {"id"}, "etl_metadata": {"id", "stale", "removed"}}
UNIQUE_ENTRY = "timesheets_unique_entry"
# The analyst views revision 0004 replaces; a legacy copy of one would stop a column
# type change ("cannot alter type of a column used by a view"), so adopt drops them first.
OWN_VIEWS = ("v_data_freshness", "v_orphaned_data", "v_user_activity", "v_engineering_tickets")


@dataclass
class Conversion:
    """A legacy column whose type differs from the model's."""

    table: str
    column: str
    legacy_type: TypeEngine[Any]
    model_type: TypeEngine[Any]
    legacy_text: str
    model_text: str


@dataclass
class Plan:
    """Everything adopt will change, or the problems that stop it."""

    kind: str = ""
    plain_unique_entry: bool = False
    add_etl_metadata_id: bool = False
    add_columns: list[tuple[str, str]] = field(default_factory=list)
    conversions: list[Conversion] = field(default_factory=list)
    set_not_null: list[tuple[str, str]] = field(default_factory=list)
    drop_not_null: list[tuple[str, str]] = field(default_factory=list)
    # (table, column, the model's default as SQL, or None to drop the legacy one)
    defaults: list[tuple[str, str, str | None]] = field(default_factory=list)
    indexes: list[tuple[str, str]] = field(default_factory=list)
    views_to_replace: list[str] = field(default_factory=list)
    timesheets: int = 0
    duplicates: int = 0
    duplicate_groups: int = 0
    problems: list[str] = field(default_factory=list)


def model_table(name: str) -> Table:
    return models.Base.metadata.tables[f"{models.SCHEMA}.{name}"]


def _quote(conn: Connection, name: str) -> str:
    return str(conn.dialect.identifier_preparer.quote(name))


def qualified(conn: Connection, table: str) -> str:
    schema = schema_name(conn)
    return f"{_quote(conn, schema)}.{_quote(conn, table)}" if schema else _quote(conn, table)


def _type_text(type_: TypeEngine[Any], conn: Connection) -> str:
    return str(type_.compile(dialect=conn.dialect))


def _model_default(column: Column[Any], conn: Connection) -> str | None:
    default = column.server_default
    if default is None:
        return None
    arg: Any = getattr(default, "arg", None)
    return arg if isinstance(arg, str) else str(arg.compile(dialect=conn.dialect))


def recognition_problems(conn: Connection) -> list[str]:
    """Why this is not a legacy database adopt can take over (empty: it is one)."""
    schema = schema_name(conn)
    inspector = inspect(conn)
    tables = set(inspector.get_table_names(schema=schema))
    half_done = sorted(tables & set(MIGRATION_TABLES))
    has_id = "timesheets" in tables and any(
        c["name"] == "id" for c in inspector.get_columns("timesheets", schema=schema)
    )
    if half_done or has_id:
        return [
            "the database has tables or columns from otc-pipeline's migrations "
            f"({', '.join(half_done) or 'timesheets.id'}) but no Alembic version, so its "
            "state cannot be recognised; restore its alembic_version table, or stamp the "
            "right revision with `alembic stamp`"
        ]
    missing = [name for name in LEGACY_TABLES if name not in tables]
    if missing:
        return [
            f"not a legacy servicedesk database: tables {', '.join(missing)} are missing; "
            "point --database-url at the servicedesk database"
        ]
    problems = []
    for name in LEGACY_TABLES:
        present = {c["name"] for c in inspector.get_columns(name, schema=schema)}
        lacking = [c for c in LOADER_COLUMNS[name] if c not in present]
        if lacking:
            problems.append(
                f"not a recognisable legacy servicedesk database: {name} lacks "
                f"{', '.join(repr(c) for c in lacking)} (a column the old loaders wrote); "
                "point --database-url at the servicedesk database"
            )
    return problems


def _values_lost(conn: Connection, conversion: Conversion) -> tuple[int | None, str]:
    """How many values the conversion would change (None: the cast itself fails), and why."""
    table = table_clause(
        conversion.table,
        column_clause(conversion.column, conversion.legacy_type),
        schema=schema_name(conn),
    )
    legacy = table.c[conversion.column]
    converted = sql_cast(_converted(legacy, conversion), conversion.legacy_type)
    query = (
        select(func.count())
        .select_from(table)
        .where(legacy.is_not(None), converted.is_distinct_from(legacy))
    )
    try:
        with conn.begin_nested():
            return int(conn.execute(query).scalar() or 0), ""
    except DBAPIError as exc:
        return None, first_line(exc)


def _converted(legacy: Any, conversion: Conversion) -> Any:
    """The value in the model's type; a legacy timestamptz becomes naive UTC, as stored."""
    if isinstance(conversion.legacy_type, DateTime) and conversion.legacy_type.timezone:
        return func.timezone("UTC", legacy)
    return sql_cast(legacy, conversion.model_type)


def _conversion_problem(
    conn: Connection, conversion: Conversion, lost: int | None, why: str
) -> str:
    where = f"{conversion.table}.{_quote(conn, conversion.column)}"
    counted = f"{lost:,} values" if lost is not None else f"some values ({why})"
    target = qualified(conn, conversion.table)
    column = _quote(conn, conversion.column)
    aside = _quote(conn, f"{conversion.column} (legacy)")
    return (
        f"{where} is {conversion.legacy_text} and {counted} would change as "
        f"{conversion.model_text}; correct them, or keep the legacy values aside and start "
        f"the column empty: ALTER TABLE {target} RENAME COLUMN {column} TO {aside}; "
        f"ALTER TABLE {target} ADD COLUMN {column} {conversion.model_text}"
    )


def _count(conn: Connection, table: str) -> int:
    rows = select(func.count()).select_from(table_clause(table, schema=schema_name(conn)))
    return int(conn.execute(rows).scalar() or 0)


def _nulls(conn: Connection, table: str, column: str) -> int:
    t = table_clause(table, column_clause(column), schema=schema_name(conn))
    query = select(func.count()).select_from(t).where(t.c[column].is_(None))
    return int(conn.execute(query).scalar() or 0)


def _duplicates(conn: Connection) -> tuple[int, int]:
    """(rows beyond the first of their entry, entries with more than one row); NULL = NULL."""
    key: list[Any] = [column_clause(name) for name in models.TIMESHEETS_KEY]
    groups = (
        select(func.count().label("n"))
        .select_from(table_clause("timesheets", *key, schema=schema_name(conn)))
        .group_by(*key)
        .having(func.count() > 1)
        .subquery()
    )
    extra, entries = conn.execute(
        select(func.coalesce(func.sum(groups.c.n - 1), 0), func.count()).select_from(groups)
    ).one()
    return int(extra), int(entries)


def _has_plain_unique_entry(conn: Connection) -> bool:
    schema = schema_name(conn)
    inspector = inspect(conn)
    constraints = {c["name"] for c in inspector.get_unique_constraints("timesheets", schema)}
    indexes = {i["name"] for i in inspector.get_indexes("timesheets", schema)}
    return UNIQUE_ENTRY in constraints or UNIQUE_ENTRY in indexes


def plan(conn: Connection) -> Plan:
    """Recognise the legacy database on ``conn`` and list what adopt will do; changes nothing."""
    result = Plan(problems=recognition_problems(conn))
    if result.problems:
        return result
    schema = schema_name(conn)
    inspector = inspect(conn)
    is_pg = conn.dialect.name == "postgresql"
    result.plain_unique_entry = _has_plain_unique_entry(conn)
    result.kind = "after the clean-up" if result.plain_unique_entry else "before the clean-up"
    for name in LEGACY_TABLES:
        legacy: dict[str, Any] = {c["name"]: c for c in inspector.get_columns(name, schema=schema)}
        model = model_table(name)
        if name == "etl_metadata" and "id" not in legacy:
            result.add_etl_metadata_id = True
        for column in model.columns:
            if column.name in LEFT_TO_MIGRATIONS.get(name, set()):
                continue
            found = legacy.get(column.name)
            if found is None:
                result.add_columns.append((name, column.name))
                if column.server_default is not None:
                    default = _model_default(column, conn)
                    result.defaults.append((name, column.name, default))
                continue
            _compare_column(conn, name, column, found, result)
        existing = {i["name"] for i in inspector.get_indexes(name, schema=schema)}
        for index in model.indexes:
            if index.name and index.name != UNIQUE_ENTRY and index.name not in existing:
                result.indexes.append((name, index.name))
    for conversion in result.conversions:
        lost, why = _values_lost(conn, conversion)
        if lost != 0:
            result.problems.append(_conversion_problem(conn, conversion, lost, why))
    for table, name in result.set_not_null:
        nulls = _nulls(conn, table, name)
        if nulls:
            # Text for the user to run, never executed here.
            fix = " ".join(
                ["DELETE FROM", qualified(conn, table), "WHERE", _quote(conn, name), "IS NULL"]
            )
            result.problems.append(
                f"{table}.{_quote(conn, name)} must have a value and {nulls:,} rows have "
                f"none; fill them in, or remove them: {fix}"
            )
    if is_pg:
        views = set(inspector.get_view_names(schema=schema))
        if result.conversions:
            result.views_to_replace = [v for v in OWN_VIEWS if v in views]
        result.problems += _views_in_the_way(conn, result, [v for v in OWN_VIEWS if v in views])
    else:
        result.problems += _sqlite_columns_the_dedup_drops(conn)
    result.timesheets = _count(conn, "timesheets")
    result.duplicates, result.duplicate_groups = _duplicates(conn)
    return result


# Views (in any schema) that use a given column or view of ours.
DEPENDENT_VIEWS = text(
    """
    SELECT DISTINCT vn.nspname, v.relname
    FROM pg_depend d
    JOIN pg_rewrite r ON r.oid = d.objid
    JOIN pg_class v ON v.oid = r.ev_class
    JOIN pg_namespace vn ON vn.oid = v.relnamespace
    JOIN pg_class t ON t.oid = d.refobjid
    JOIN pg_namespace tn ON tn.oid = t.relnamespace
    LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
    WHERE d.classid = 'pg_rewrite'::regclass AND v.oid <> t.oid
      AND tn.nspname = :schema AND t.relname = :name
      AND (CAST(:column AS text) IS NULL OR a.attname = :column)
    ORDER BY 1, 2
    """
)


def _views_in_the_way(conn: Connection, result: Plan, own_views: list[str]) -> list[str]:
    """Someone's views that would stop adopt: on a column it converts, or on a view it replaces.

    PostgreSQL refuses to change the type of a column a view uses, and revision 0004
    replaces the analyst views without CASCADE. Found before anything changes.
    """
    schema = schema_name(conn)
    blocked: list[tuple[str, str, str]] = []
    for conversion in result.conversions:
        where = f"{conversion.table}.{_quote(conn, conversion.column)}"
        params = {"schema": schema, "name": conversion.table, "column": conversion.column}
        for view_schema, view in conn.execute(DEPENDENT_VIEWS, params):
            if not (view_schema == schema and view in OWN_VIEWS):
                blocked.append((view_schema, view, f"uses {where}, whose type adopt converts"))
    for own in own_views:
        params = {"schema": schema, "name": own, "column": None}
        for view_schema, view in conn.execute(DEPENDENT_VIEWS, params):
            if not (view_schema == schema and view in OWN_VIEWS):
                blocked.append((view_schema, view, f"is built on {own}, which adopt replaces"))
    return [
        f"view {view_schema}.{_quote(conn, view)} {why}; save its definition "
        f"(SELECT pg_get_viewdef('{view_schema}.{_quote(conn, view)}'::regclass)), drop it, "
        "and create it again after adopt"
        for view_schema, view, why in blocked
    ]


def _sqlite_columns_the_dedup_drops(conn: Connection) -> list[str]:
    """On SQLite the dedup migration copies timesheets into a new table, model columns only."""
    present = {c["name"] for c in inspect(conn).get_columns("timesheets")}
    extra = sorted(present - {c.name for c in model_table("timesheets").columns})
    if not extra:
        return []
    return [
        f"timesheets has columns otc-pipeline does not know ({', '.join(map(repr, extra))}); "
        "on SQLite the dedup migration copies the table without them: move them to a table "
        "of their own first"
    ]


def _compare_column(
    conn: Connection, table: str, column: Column[Any], found: dict[str, Any], result: Plan
) -> None:
    """Note how a legacy column differs from the model's.

    On SQLite only nullability: a type there is only an affinity, and its legacy
    databases are test copies built with the models' own types.
    """
    if not column.primary_key:
        if found["nullable"] and not column.nullable:
            result.set_not_null.append((table, column.name))
        elif not found["nullable"] and column.nullable:
            result.drop_not_null.append((table, column.name))
    # A key's default is its sequence (SERIAL), the same on a fresh database.
    wanted = _model_default(column, conn)
    if not column.primary_key and (found.get("default") or None) != wanted:
        result.defaults.append((table, column.name, wanted))
    if conn.dialect.name != "postgresql":
        return
    legacy_type = found["type"]
    model_text = _type_text(column.type, conn)
    if isinstance(legacy_type, NullType):
        result.problems.append(
            f"{table}.{_quote(conn, column.name)} has a type SQLAlchemy cannot read; "
            f"convert it: ALTER TABLE {qualified(conn, table)} ALTER COLUMN "
            f"{_quote(conn, column.name)} TYPE {model_text}"
        )
        return
    legacy_text = _type_text(legacy_type, conn)
    if legacy_text != model_text:
        result.conversions.append(
            Conversion(table, column.name, legacy_type, column.type, legacy_text, model_text)
        )


def apply(conn: Connection, adopting: Plan) -> None:
    """Make the planned changes in ``conn``'s transaction (the plan has no problems).

    Indexes come last, after the upgrade: :func:`create_missing_indexes`.
    """
    schema = schema_name(conn)
    ops = Operations(MigrationContext.configure(conn))
    if adopting.plain_unique_entry:
        _drop_plain_unique_entry(conn)
    if adopting.add_etl_metadata_id:
        _add_etl_metadata_id(conn)
    for view in adopting.views_to_replace:
        # Revision 0004 creates it again; no CASCADE: an analyst's view on it stops adopt.
        conn.exec_driver_sql(f"DROP VIEW {qualified(conn, view)}")
    for table, name in adopting.add_columns:
        column = model_table(table).c[name]
        # Nullable and without a default: PostgreSQL adds it without rewriting the table.
        ops.add_column(table, Column(name, column.type), schema=schema)
    for conversion in adopting.conversions:
        legacy = column_clause(conversion.column, conversion.legacy_type)
        using = _converted(legacy, conversion).compile(
            dialect=conn.dialect, compile_kwargs={"literal_binds": True}
        )
        ops.alter_column(
            conversion.table,
            conversion.column,
            type_=conversion.model_type,
            existing_type=conversion.legacy_type,
            postgresql_using=str(using),
            schema=schema,
        )
    nullability = [(t, c, False) for t, c in adopting.set_not_null] + [
        (t, c, True) for t, c in adopting.drop_not_null
    ]
    changes: list[tuple[str, str, dict[str, Any]]] = [
        *((t, c, {"nullable": n}) for t, c, n in nullability),
        *((t, c, {"server_default": text(d) if d else None}) for t, c, d in adopting.defaults),
    ]
    for table, name, change in changes:
        if conn.dialect.name == "postgresql":
            ops.alter_column(table, name, schema=schema, **change)
        else:
            # SQLite changes a column by copying its table, every column included.
            with ops.batch_alter_table(table) as batch:
                batch.alter_column(name, **change)


def create_missing_indexes(conn: Connection) -> None:
    """Create the legacy tables' model indexes that are not there."""
    schema = schema_name(conn)
    inspector = inspect(conn)
    for table in LEGACY_TABLES:
        existing = {i["name"] for i in inspector.get_indexes(table, schema=schema)}
        for index in model_table(table).indexes:
            if index.name and index.name != UNIQUE_ENTRY and index.name not in existing:
                index.create(conn)


def set_timesheet_indexes_aside(conn: Connection) -> None:
    """Drop timesheets' indexes while adopt rewrites every row (PostgreSQL).

    A type conversion rewrites the table, and the dedup migration numbering the rows
    writes a new version of each one, every index entry with it; building the indexes
    once afterwards (:func:`create_missing_indexes`) is faster. Nothing is lost: all of
    it is one transaction.
    """
    if conn.dialect.name != "postgresql":
        return
    existing = {i["name"] for i in inspect(conn).get_indexes("timesheets", schema_name(conn))}
    for index in model_table("timesheets").indexes:
        if index.name in existing and index.name != UNIQUE_ENTRY:
            index.drop(conn)


def _drop_plain_unique_entry(conn: Connection) -> None:
    """Remove the clean-up's plain UNIQUE entry (NULLs distinct); the dedup adds the real one."""
    schema = schema_name(conn)
    inspector = inspect(conn)
    constraints = {c["name"] for c in inspector.get_unique_constraints("timesheets", schema)}
    if UNIQUE_ENTRY in constraints and conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            f"ALTER TABLE {qualified(conn, 'timesheets')} "
            f"DROP CONSTRAINT {_quote(conn, UNIQUE_ENTRY)}"
        )
        return
    indexes = {i["name"] for i in inspector.get_indexes("timesheets", schema)}
    if UNIQUE_ENTRY in indexes:
        prefix = f"{_quote(conn, schema)}." if schema else ""
        conn.exec_driver_sql(f"DROP INDEX {prefix}{_quote(conn, UNIQUE_ENTRY)}")
    # SQLite: an inline UNIQUE(...) table constraint has no droppable name; the
    # dedup migration rebuilds timesheets on SQLite, which removes it.


def _add_etl_metadata_id(conn: Connection) -> None:
    """Give a legacy etl_metadata without ``id`` its integer key, numbered in row order."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            f"ALTER TABLE {qualified(conn, 'etl_metadata')} "
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


def _columns_text(pairs: list[tuple[str, str]], conn: Connection) -> str:
    by_table: dict[str, list[str]] = {}
    for table, column in pairs:
        by_table.setdefault(table, []).append(_quote(conn, column))
    return "; ".join(f"{table} {', '.join(columns)}" for table, columns in by_table.items())


def describe(adopting: Plan, conn: Connection, *, done: bool) -> list[str]:
    """One line per change, in the past tense once ``done``."""

    def verb(now: str, past: str) -> str:
        return past if done else now

    lines = []
    if adopting.plain_unique_entry:
        lines.append(
            f"{verb('replace', 'replaced')} the plain unique entry {UNIQUE_ENTRY} "
            "(NULL tickets distinct) by UNIQUE NULLS NOT DISTINCT"
        )
    if adopting.add_etl_metadata_id:
        lines.append(f"{verb('give', 'gave')} etl_metadata its id key, numbered in row order")
    if adopting.add_columns:
        lines.append(
            f"{verb('add', 'added')} {len(adopting.add_columns)} columns (nullable, no table "
            f"rewrite): {_columns_text(adopting.add_columns, conn)}"
        )
    for c in adopting.conversions:
        lines.append(
            f"{verb('convert', 'converted')} {c.table}.{_quote(conn, c.column)} "
            f"{c.legacy_text} -> {c.model_text} (no value changes)"
        )
    if adopting.set_not_null:
        lines.append(
            f"{verb('make', 'made')} NOT NULL: {_columns_text(adopting.set_not_null, conn)}"
        )
    if adopting.drop_not_null:
        lines.append(
            f"{verb('allow', 'allowed')} NULL: {_columns_text(adopting.drop_not_null, conn)}"
        )
    if adopting.defaults:
        shown = [(t, c) for t, c, _ in adopting.defaults]
        lines.append(f"{verb('set', 'set')} defaults: {_columns_text(shown, conn)}")
    if adopting.views_to_replace:
        lines.append(
            f"{verb('drop', 'dropped')} the legacy {', '.join(adopting.views_to_replace)} "
            "(revision 0004 creates them again)"
        )
    if adopting.indexes:
        names = ", ".join(name for _, name in adopting.indexes)
        lines.append(f"{verb('create', 'created')} indexes {names}")
    kept = adopting.timesheets - adopting.duplicates
    lines.append(
        f"{adopting.duplicates:,} duplicate timesheets {verb('to archive', 'archived')} "
        f"({adopting.duplicate_groups:,} entries with more than one row), {kept:,} kept"
    )
    return lines
