"""Run records (etl_metadata) and the per-view lock that keeps loads from interleaving.

Run records are written on their own short transactions, so a run's row is
committed even when its load rolls back. Times are stored as naive UTC.
"""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from .db import connection, transaction
from .errors import LoadLocked
from .models import EtlRun

INTERRUPTED_MESSAGE = "the process running this load stopped before it finished"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _advisory_key(view_name: str) -> int:
    # A fixed high half keeps our locks apart from other applications' advisory locks.
    return (0x07C0 << 32) | zlib.crc32(f"otc-pipeline:{view_name}".encode())


_memory_locks: dict[str, threading.Lock] = {}


def _running_description(engine: Engine | Connection, view_name: str) -> str:
    with connection(engine) as conn:
        row = conn.execute(
            select(EtlRun.id, EtlRun.load_start, EtlRun.source)
            .where(EtlRun.view_name == view_name, EtlRun.load_status == "running")
            .order_by(EtlRun.id.desc())
            .limit(1)
        ).first()
    if row is None:
        return f"another load of {view_name} is running"
    return (
        f"another load of {view_name} is running (run {row.id}, started {row.load_start:%Y-%m-%d %H:%M:%S} UTC"
        f" from {row.source})"
    )


@contextmanager
def view_lock(engine: Engine | Connection, view_name: str) -> Iterator[None]:
    """Hold the view's load lock, or fail at once naming the load that holds it."""
    if engine.dialect.name == "postgresql" and isinstance(engine, Connection):
        # The caller owns this connection's transaction: take a lock that it ends.
        key = _advisory_key(view_name)
        if not engine.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar():
            raise LoadLocked(
                f"{_running_description(engine, view_name)}; wait for it to finish, then run again"
            )
        yield
        return
    if engine.dialect.name == "postgresql" and isinstance(engine, Engine):
        with engine.connect() as conn:
            key = _advisory_key(view_name)
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            conn.commit()
            if not got:
                raise LoadLocked(
                    f"{_running_description(engine, view_name)}; wait for it to finish, then run again"
                )
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
                except DBAPIError as exc:
                    # A lost session (a server restart) took its lock with it; the
                    # load's own error is the one to report.
                    if not exc.connection_invalidated:
                        raise
        return
    database = engine.engine.url.database
    if not database or database == ":memory:":
        lock = _memory_locks.setdefault(f"{id(engine.engine)}:{view_name}", threading.Lock())
        if not lock.acquire(blocking=False):
            raise LoadLocked(f"{_running_description(engine, view_name)}; wait for it to finish")
        try:
            yield
        finally:
            lock.release()
        return
    # SQLite: a lock file beside the database; the OS releases it if the process dies.
    path = Path(f"{database}.{view_name}.lock")
    handle: IO[str] = open(path, "a")  # noqa: SIM115 - held for the whole load
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LoadLocked(
                f"{_running_description(engine, view_name)}; wait for it to finish, then run again"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def open_run(engine: Engine | Connection, view_name: str, source: str) -> int:
    """Record a new running load; runs of this view left running become interrupted.

    Call with the view's lock held: then any run still marked running is stale.
    """
    now = utcnow()
    with transaction(engine) as conn:
        conn.execute(
            update(EtlRun)
            .where(EtlRun.view_name == view_name, EtlRun.load_status == "running")
            .values(load_status="interrupted", load_end=now, error_message=INTERRUPTED_MESSAGE)
        )
        run_id = conn.execute(
            insert(EtlRun)
            .values(
                view_name=view_name,
                source=source,
                load_status="running",
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
) -> None:
    """Close a run with its final status and counts."""
    now = utcnow()
    with transaction(engine) as conn:
        conn.execute(
            update(EtlRun)
            .where(EtlRun.id == run_id)
            .values(
                load_status=status,
                load_end=now,
                # The legacy freshness column: only a committed load makes the view fresh.
                last_load_time=now if status in ("success", "partial") else None,
                load_duration_seconds=round(duration_s, 3),
                records_fetched=fetched,
                records_inserted=inserted,
                records_updated=updated,
                records_unchanged=unchanged,
                records_duplicates=duplicates,
                records_rejected=rejected,
                records_errors=rejected,
                warnings="\n".join(warnings) or None,
                error_message=error,
                latest_source_time=latest_source_time,
            )
        )
