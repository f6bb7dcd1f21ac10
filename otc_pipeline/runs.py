"""Run records (etl_metadata) and the per-view lock that keeps loads from interleaving.

A run opens on its own short transaction and closes inside its load's (see
pipeline.py), so a run recorded success or partial has committed its rows.
Times are stored as naive UTC.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, select, text, update

from . import logs
from .db import (
    LOCK_POLL_S,
    WRITER,
    advisory_key,
    connection,
    flock_now,
    lock_file,
    release_advisory_lock,
    transaction,
    try_advisory_lock,
)
from .errors import LoadLocked
from .models import COMMITTED, EtlRun, Status

INTERRUPTED_MESSAGE = "the process running this load stopped before it finished"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


_memory_locks: dict[str, threading.Lock] = {}


def _running_description(engine: Engine | Connection, view_name: str) -> str:
    with connection(engine) as conn:
        row = conn.execute(
            select(EtlRun.id, EtlRun.load_start, EtlRun.source)
            .where(EtlRun.view_name == view_name, EtlRun.load_status == Status.RUNNING)
            .order_by(EtlRun.id.desc())
            .limit(1)
        ).first()
    if row is None:
        return f"another load of {view_name} is running"
    return (
        f"another load of {view_name} is running (run {row.id}, started {row.load_start:%Y-%m-%d %H:%M:%S} UTC"
        f" from {row.source})"
    )


def _held(engine: Engine | Connection, view_name: str, waited_s: float) -> LoadLocked:
    running = _running_description(engine, view_name)
    if waited_s > 0:
        return LoadLocked(f"{running}, still after waiting {waited_s:g} s; run again later")
    return LoadLocked(f"{running}; wait for it to finish, then run again (or use --wait SECONDS)")


def _take(
    engine: Engine | Connection,
    view_name: str,
    try_once: Callable[[], bool],
    wait_s: float,
    on_wait: Callable[[str], None] | None,
) -> None:
    """Take a lock with ``try_once``, trying again for up to ``wait_s`` seconds; else LoadLocked."""
    if try_once():
        return
    if wait_s <= 0:
        raise _held(engine, view_name, 0)
    running = _running_description(engine, view_name)
    message = f"waiting up to {wait_s:g} s: {running}"
    logs.event("view_waiting", message, view=view_name, printed=True)
    if on_wait is not None:
        on_wait(message)
    # Polled (every LOCK_POLL_S) rather than blocking, so that Ctrl-C is heard at once.
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(LOCK_POLL_S)
        if try_once():
            return
    raise _held(engine, view_name, wait_s)


@contextmanager
def view_lock(
    engine: Engine | Connection,
    view_name: str,
    *,
    wait_s: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Connection]:
    """Hold the view's load lock; yield the connection the load must run on.

    The lock belongs to that connection (PostgreSQL: a session advisory lock on it),
    so it ends exactly when the load's connection does: a terminated connection
    ends the load with it and can never leave a load running unlocked. On SQLite
    a lock file beside the database (the OS releases it when the process dies), and
    the connection's transactions take the write lock at BEGIN. A view held by
    another load fails at once naming it (LoadLocked, exit 75), or after waiting
    up to ``wait_s`` seconds for it, telling ``on_wait`` first.
    """
    if isinstance(engine, Connection):
        conn = engine
        if engine.dialect.name == "postgresql":
            # The caller owns this connection's transaction: take a lock that it ends.
            key = advisory_key(view_name)

            def try_xact_lock() -> bool:
                return bool(
                    conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar()
                )

            _take(engine, view_name, try_xact_lock, wait_s, on_wait)
            yield conn
            return
        with _sqlite_view_lock(engine, view_name, wait_s, on_wait):
            yield conn
        return
    if engine.dialect.name == "postgresql":
        key = advisory_key(view_name)
        with engine.connect() as conn:
            _take(engine, view_name, lambda: try_advisory_lock(conn, key), wait_s, on_wait)
            try:
                yield conn
            finally:
                release_advisory_lock(conn, key)
        return
    with _sqlite_view_lock(engine, view_name, wait_s, on_wait):
        with engine.connect() as conn:
            yield conn.execution_options(**{WRITER: True})


@contextmanager
def _sqlite_view_lock(
    engine: Engine | Connection,
    view_name: str,
    wait_s: float,
    on_wait: Callable[[str], None] | None,
) -> Iterator[None]:
    path = lock_file(engine, view_name)
    if path is None:
        lock = _memory_locks.setdefault(f"{id(engine.engine)}:{view_name}", threading.Lock())
        _take(engine, view_name, lambda: lock.acquire(blocking=False), wait_s, on_wait)
        try:
            yield
        finally:
            lock.release()
        return
    # Never removed (see lock_file); closing the file releases the lock.
    with open(path, "a") as handle:
        _take(engine, view_name, lambda: flock_now(handle), wait_s, on_wait)
        yield


def open_run(engine: Engine | Connection, view_name: str, source: str) -> int:
    """Record a new running load; runs of this view left running become interrupted.

    Call with the view's lock held: then any run still marked running is stale.
    """
    now = utcnow()
    with transaction(engine) as conn:
        conn.execute(
            update(EtlRun)
            .where(EtlRun.view_name == view_name, EtlRun.load_status == Status.RUNNING)
            .values(load_status=Status.INTERRUPTED, load_end=now, error_message=INTERRUPTED_MESSAGE)
        )
        run_id = conn.execute(
            insert(EtlRun)
            .values(
                view_name=view_name,
                source=source,
                load_status=Status.RUNNING,
                load_start=now,
                records_fetched=0,
                records_inserted=0,
                records_updated=0,
                records_unchanged=0,
                records_duplicates=0,
                records_rejected=0,
                records_errors=0,
            )
            .returning(EtlRun.id)
        ).scalar_one()
    return int(run_id)


def close_run(
    engine: Engine | Connection,
    run_id: int,
    *,
    status: str,
    fetched: int,
    inserted: int,
    updated: int,
    unchanged: int,
    duplicates: int,
    rejected: int,
    duration_s: float,
    warnings: list[str],
    error: str | None,
    latest_source_time: datetime | None,
    stale: int = 0,
    removed: int = 0,
) -> None:
    """Close a run with its final status and counts.

    ``stale``: records older (by modified time) than the row held, not applied;
    ``removed``: rows a reconcile moved to ``<table>_removed``.
    """
    now = utcnow()
    with transaction(engine) as conn:
        conn.execute(
            update(EtlRun)
            .where(EtlRun.id == run_id)
            .values(
                load_status=status,
                load_end=now,
                # The legacy freshness column: only a committed load makes the view fresh.
                last_load_time=now if status in COMMITTED else None,
                load_duration_seconds=round(duration_s, 3),
                records_fetched=fetched,
                records_inserted=inserted,
                records_updated=updated,
                records_unchanged=unchanged,
                records_duplicates=duplicates,
                records_rejected=rejected,
                records_errors=rejected,
                stale=stale,
                removed=removed,
                warnings="\n".join(warnings) or None,
                error_message=error,
                latest_source_time=latest_source_time,
            )
        )
