"""Alembic environment for otc-pipeline, on PostgreSQL (schema servicedesk) and SQLite.

Two ways in:

* ``otc db ...`` (otc_pipeline.migrate) builds the Config itself and hands over an
  open connection in ``config.attributes["connection"]``; the whole command then
  runs in that connection's transaction.
* ``alembic upgrade head`` / ``alembic check`` from the repository root: the
  database is resolved exactly like the ``otc`` command does it
  (``OTC_DATABASE_URL``, else ``OTC_PG_*``, else ``sqlite:///otc.db``).
"""

from __future__ import annotations

import warnings
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import BLANK_SCHEMA, MetaData, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from otc_pipeline.db import make_engine
from otc_pipeline.models import SCHEMA, Base
from otc_pipeline.settings import database_setting

config = context.config

# The timesheets unique entry is a different object per dialect (models.py uses
# ddl_if): a NULLS NOT DISTINCT unique constraint on PostgreSQL, a unique index
# over ifnull("TS-Crm ID", '') on SQLite, both named timesheets_unique_entry.
# Autogenerate ignores ddl_if (and matches indexes and constraints by name), so
# the metadata it compares holds only this dialect's objects.
UNIQUE_ENTRY = "timesheets_unique_entry"
# SQLite cannot reflect an expression index, so there the unique entry is proven
# by the tests (a second NULL-ticket entry is refused), not by autogenerate.
UNREFLECTABLE = {"sqlite": {(UNIQUE_ENTRY, "index")}}

warnings.filterwarnings(
    "ignore", message=f"Skipped unsupported reflection of expression-based index {UNIQUE_ENTRY}"
)
warnings.filterwarnings(
    "ignore",
    message=f"autogenerate skipping metadata-specified expression-based index '{UNIQUE_ENTRY}'",
)


def _for_other_dialect(obj: Any, dialect: str) -> bool:
    condition = getattr(obj, "_ddl_if", None)
    return condition is not None and condition.dialect not in (None, dialect)


def _follow_table_schema(table: Any, to_schema: str | None, fk: Any, referred: Any) -> Any:
    # etl_rejects' foreign key names servicedesk.etl_metadata: it moves with the table.
    return to_schema or BLANK_SCHEMA


def target_metadata_for(connection: Connection) -> MetaData:
    """The models' metadata as this dialect stores it: its schema, its ddl_if objects."""
    dialect = connection.dialect.name
    # Autogenerate does not honour schema_translate_map: SQLite compares a schema-less copy.
    schema: Any = SCHEMA if dialect == "postgresql" else None
    copy = MetaData()
    for table in Base.metadata.sorted_tables:
        skipped = {obj.name for obj in table.indexes if _for_other_dialect(obj, dialect)}
        skipped_constraints = {
            obj.name for obj in table.constraints if _for_other_dialect(obj, dialect)
        }
        copied = table.to_metadata(
            copy,
            schema=schema,
            referred_schema_fn=_follow_table_schema,
        )
        for index in list(copied.indexes):
            if index.name in skipped:
                copied.indexes.discard(index)
        for constraint in list(copied.constraints):
            if constraint.name in skipped_constraints:
                copied.constraints.discard(constraint)
    return copy


def _own_names() -> dict[str, Any]:
    """The names of every table, column, index and constraint otc-pipeline creates."""
    columns: dict[str, set[str]] = {}
    objects: set[str] = set()
    for table in Base.metadata.tables.values():
        columns[table.name] = {c.name for c in table.columns}
        objects |= {i.name for i in table.indexes if i.name}
        objects |= {c.name for c in table.constraints if isinstance(c.name, str)}
        # An unnamed foreign key gets PostgreSQL's default name (the migrations spell it).
        objects |= {
            f"{table.name}_{'_'.join(c.name for c in fk.columns)}_fkey"
            for fk in table.foreign_key_constraints
            if not isinstance(fk.name, str)
        }
    return {"tables": set(columns), "columns": columns, "objects": objects}


def include_name_for(connection: Connection) -> Any:
    """Compare only otc-pipeline's own objects.

    The servicedesk schema is shared: other tools keep tables there (the team
    management tables, say), analysts add columns, indexes and constraints to our
    tables. Autogenerate must never propose to drop them, so what the models do not
    name is not reflected at all.
    """
    own = _own_names()

    def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        if type_ == "schema":
            # Only our schema on PostgreSQL: public and others belong to someone else.
            return name == SCHEMA if connection.dialect.name == "postgresql" else True
        if type_ == "table":
            return name in own["tables"]
        if type_ == "column":
            return name in own["columns"].get(parent_names.get("table_name"), set())
        if type_ in ("index", "unique_constraint", "foreign_key_constraint"):
            return name in own["objects"]
        return True

    return include_name


def include_object_for(connection: Connection) -> Any:
    skipped = UNREFLECTABLE.get(connection.dialect.name, set())

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        return (name, type_) not in skipped

    return include_object


def drop_leftovers_at_base(connection: Connection, version_schema: str | None) -> None:
    """After ``downgrade base`` leave nothing behind: the empty version table, the schema."""
    inspector = inspect(connection)
    if not inspector.has_table("alembic_version", schema=version_schema):
        return
    table = f'"{version_schema}".alembic_version' if version_schema else "alembic_version"
    if connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar():  # noqa: S608
        return
    connection.exec_driver_sql(f"DROP TABLE {table}")
    if version_schema:
        # RESTRICT (the default) refuses if anything else still lives in the schema;
        # a savepoint keeps that refusal from aborting the surrounding transaction.
        try:
            with connection.begin_nested():
                connection.exec_driver_sql(f'DROP SCHEMA "{version_schema}"')
        except DBAPIError:
            pass


def run_migrations(connection: Connection) -> None:
    is_pg = connection.dialect.name == "postgresql"
    version_schema = SCHEMA if is_pg else None
    if is_pg:
        # Alembic does not create the version table's schema.
        connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
    context.configure(
        connection=connection,
        target_metadata=target_metadata_for(connection),
        version_table_schema=version_schema,
        include_schemas=is_pg,
        include_name=include_name_for(connection),
        include_object=include_object_for(connection),
        render_as_batch=not is_pg,
        compare_type=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if not context.is_offline_mode():
            drop_leftovers_at_base(connection, version_schema)


def run_offline() -> None:
    url = database_setting().url
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        literal_binds=True,
        version_table_schema=SCHEMA if url.drivername.startswith("postgresql") else None,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        run_migrations(given)
        return
    engine = make_engine(database_setting().url)
    try:
        with engine.begin() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


# Logging from alembic.ini only under the alembic CLI; otc db stays quiet.
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name)

if context.is_offline_mode():
    run_offline()
else:
    run_online()
