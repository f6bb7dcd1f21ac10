"""Engines for both databases, from the same models.

PostgreSQL keeps everything in schema ``servicedesk``; SQLite has no schemas,
so its engines map ``servicedesk`` to none. SQLite connections also get the
recipe that makes SAVEPOINT work under the sqlite3 module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from .errors import DatabaseUnreachable
from .models import SCHEMA
from .settings import DatabaseSetting, mask_url


def make_engine(url: URL | str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the per-dialect settings otc-pipeline relies on."""
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        engine = engine.execution_options(schema_translate_map={SCHEMA: None})

        # sqlite3 opens transactions on its own and breaks SAVEPOINT; take over
        # BEGIN ourselves (recipe from the SQLAlchemy SQLite dialect docs).
        @event.listens_for(engine.engine, "connect")
        def _connect(dbapi_connection: Any, connection_record: Any) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA busy_timeout = 30000")

        @event.listens_for(engine.engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

    return engine


def schema_name(conn: Connection | Engine) -> str | None:
    """The schema our tables live in on this database (None on SQLite)."""
    return SCHEMA if conn.dialect.name == "postgresql" else None


def connect_engine(setting: DatabaseSetting) -> Engine:
    """An engine for the configured database, checked by opening one connection."""
    engine = make_engine(setting.url)
    try:
        with engine.connect():
            pass
    except (OperationalError, DBAPIError) as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        variable = {
            "--database-url": "--database-url",
            "OTC_DATABASE_URL": "OTC_DATABASE_URL",
            "OTC_PG_*": "OTC_PG_HOST/OTC_PG_PORT/OTC_PG_DATABASE/OTC_PG_USER/OTC_PG_PASSWORD",
        }.get(setting.origin, "OTC_DATABASE_URL")
        raise DatabaseUnreachable(
            f"cannot open database {mask_url(setting.url)}: {reason}; "
            f"check {variable} (or set OTC_DATABASE_URL)"
        ) from None
    return engine


Bind = Engine | Connection


@contextmanager
def connection(bind: Bind) -> Iterator[Connection]:
    """A connection on ``bind``: a new one from an Engine, or the caller's own Connection."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn


@contextmanager
def transaction(bind: Bind) -> Iterator[Connection]:
    """A transaction on ``bind``; inside a caller's transaction, a SAVEPOINT that commits nothing."""
    if isinstance(bind, Connection) and bind.in_transaction():
        with bind.begin_nested():
            yield bind
        return
    if isinstance(bind, Connection):
        with bind.begin():
            yield bind
        return
    with bind.begin() as conn:
        yield conn
