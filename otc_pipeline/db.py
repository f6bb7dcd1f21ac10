"""Engines for both databases, from the same models.

PostgreSQL keeps everything in schema ``servicedesk``; SQLite has no schemas,
so its engines map ``servicedesk`` to none. SQLite connections also get the
recipe that makes SAVEPOINT work under the sqlite3 module, WAL journal mode (so
readers never wait for a load) and a busy timeout (so a short wait for another
writer is a wait, not an error).

The schema lock lives here too: every schema change (``otc db upgrade``,
``otc db adopt``, the first load's upgrade) holds it, so two never run at once.
"""

from __future__ import annotations

import fcntl
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from .errors import DatabaseBusy, DatabaseUnreachable, first_line
from .models import SCHEMA
from .settings import DatabaseSetting, mask_url

# How long an SQLite statement waits for another writer before it fails. A load
# waits in short slices of this (see _begin_immediate) so that Ctrl-C is heard.
SQLITE_BUSY_TIMEOUT_S = 30.0
_SQLITE_WAIT_SLICE_MS = 200
# Execution option of a connection that writes from its first statement (a load):
# on SQLite its transactions begin IMMEDIATE, taking the write lock at BEGIN.
WRITER = "otc_writer"


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
            dbapi_connection.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            # WAL lets readers (dashboards, `otc status`) read the last committed
            # state while a load writes; the mode is stored in the file, so set it once.
            mode = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() not in ("wal", "memory"):
                dbapi_connection.execute("PRAGMA journal_mode = WAL")

        @event.listens_for(engine.engine, "begin")
        def _begin(conn: Connection) -> None:
            if conn.get_execution_options().get(WRITER):
                _begin_immediate(conn.connection.dbapi_connection, conn.engine.url.database)
            else:
                conn.exec_driver_sql("BEGIN")

        @event.listens_for(engine.engine, "invalidate")
        def _invalidate(dbapi_connection: Any, connection_record: Any, exception: Any) -> None:
            # Ctrl-C inside a statement makes SQLAlchemy throw the connection away, but
            # sqlite3 defers closing it while a cursor lives on (in the traceback), and
            # its open transaction would keep the write lock: end the transaction now.
            try:
                dbapi_connection.rollback()
            except Exception:  # noqa: BLE001 - the connection is being discarded anyway
                pass

    return engine


def _begin_immediate(dbapi_connection: Any, database: str | None) -> None:
    """BEGIN IMMEDIATE, waiting for another writer in slices so that Ctrl-C is heard.

    A load reads before it writes; in WAL mode such a transaction that meets another
    writer fails at once instead of waiting. Taking the write lock at BEGIN makes
    it wait like any writer. sqlite3 waits inside C, deaf to signals: in slices.
    """
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    dbapi_connection.execute(f"PRAGMA busy_timeout = {_SQLITE_WAIT_SLICE_MS}")
    try:
        while True:
            try:
                dbapi_connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise DatabaseBusy(
                        f"another process has been writing to the SQLite database {database} "
                        f"for {SQLITE_BUSY_TIMEOUT_S:g} s (a load of another view?); "
                        "run again when it ends"
                    ) from None
    finally:
        dbapi_connection.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")


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
        reason = first_line(exc)
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


# --- locks ----------------------------------------------------------------------------

# How often a lock held by another process is tried again while we wait for it.
LOCK_POLL_S = 0.05


def advisory_key(name: str) -> int:
    """The PostgreSQL advisory lock key of one of our locks (a view, or the schema)."""
    # A fixed high half keeps our locks apart from other applications' advisory locks.
    return (0x07C0 << 32) | zlib.crc32(f"otc-pipeline:{name}".encode())


def lock_file(bind: Engine | Connection, name: str) -> Path | None:
    """The lock file of lock ``name`` beside an SQLite database (None for :memory:).

    The file is never removed: removing it would let a process that opened the old
    file and one that creates a new one both think they hold the lock.
    """
    database = bind.engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(f"{database}.{name}.lock")


def try_advisory_lock(conn: Connection, key: int) -> bool:
    """Take a session advisory lock on ``conn`` if nobody holds it; say whether we got it."""
    got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
    conn.commit()
    return got


def release_advisory_lock(conn: Connection, key: int) -> None:
    """Release a session lock taken on ``conn``; a connection that cannot is discarded.

    A session lock outlives transactions: the connection must not go back to the
    pool still holding it.
    """
    try:
        if conn.in_transaction():
            conn.rollback()
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
    except DBAPIError:
        conn.invalidate()


def flock_now(handle: IO[str]) -> bool:
    """Take an exclusive flock on ``handle`` if nobody holds it; say whether we got it."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Hold the database-wide schema-change lock, waiting while another process holds it.

    Every schema change takes it: ``otc db upgrade`` / ``downgrade`` / ``adopt`` and
    the upgrade of an empty database by a first ``otc load``. A waiter then finds the
    schema as the holder left it (two first loads started together: the second
    finds it created). PostgreSQL: an advisory lock; SQLite: a lock file.
    """
    if engine.dialect.name == "postgresql":
        key = advisory_key("schema")
        with engine.connect() as conn:
            # Polled, not a blocking pg_advisory_lock: psycopg2 does not let Ctrl-C
            # interrupt a statement.
            while not try_advisory_lock(conn, key):
                time.sleep(LOCK_POLL_S)
            try:
                yield
            finally:
                release_advisory_lock(conn, key)
        return
    path = lock_file(engine, "schema")
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        # The OS releases it if the process dies; a blocking flock hears Ctrl-C.
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
