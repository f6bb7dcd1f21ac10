"""A refused row is a reject; a failed database fails the view at once, with its first error."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text
from test_load import counts, ticket, timesheet

from otc_pipeline import parse, pipeline
from otc_pipeline.db import make_engine
from otc_pipeline.models import EtlReject, EtlRun, Ticket, Timesheet


def rejects_of(engine: Engine, run_id: int | None) -> int:
    with engine.connect() as conn:
        return int(
            conn.scalar(
                select(func.count()).select_from(EtlReject).where(EtlReject.run_id == run_id)
            )
            or 0
        )


def run_record(engine: Engine, run_id: int | None) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(EtlRun).where(EtlRun.id == run_id)).one()


def titles(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return {i: t for i, t in conn.execute(select(Ticket.ticket_id, Ticket.title))}


def assert_failed_whole(engine: Engine, summary: pipeline.RunSummary, before: dict[int, str]) -> None:
    """The view failed: nothing committed, no rejects stored, the run says the same error."""
    assert summary.status == "failed" and summary.exit_code == 1
    assert summary.rejected == 0 and rejects_of(engine, summary.run_id) == 0
    assert titles(engine) == before
    run = run_record(engine, summary.run_id)
    assert run.load_status == "failed" and run.last_load_time is None
    assert run.error_message == summary.error


def _trigger_raising(engine: Engine, sqlstate: str, message: str) -> None:
    """Every write of a ticket titled 'new …' raises ``sqlstate`` inside the merge."""
    with engine.begin() as conn:
        conn.execute(
            text(f"""
            CREATE FUNCTION servicedesk.fail_merge() RETURNS trigger AS $$
            BEGIN
              IF NEW."TKT-Title" LIKE 'new%' THEN
                RAISE EXCEPTION '{message}' USING ERRCODE = '{sqlstate}';
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )
        conn.execute(
            text("""
            CREATE TRIGGER fail_merge BEFORE INSERT OR UPDATE ON servicedesk.tickets
            FOR EACH ROW EXECUTE FUNCTION servicedesk.fail_merge()""")
        )


@pytest.mark.parametrize(
    ("sqlstate", "message"),
    [
        ("53100", "could not extend file: No space left on device"),
        ("53200", "out of memory"),
        ("57014", "canceling statement due to statement timeout"),
        ("55P03", "canceling statement due to lock timeout"),
        ("XX000", "internal error"),
    ],
)
@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_database_error_inside_the_merge_fails_the_view_at_once(
    engine: Engine, sqlstate: str, message: str
) -> None:
    pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 11)])
    before = titles(engine)
    _trigger_raising(engine, sqlstate, message)
    records = [ticket(i, **{"TKT-Title": f"new {i}"}) for i in range(1, 1001)]
    summary = pipeline.load_view(engine, "tickets", records, chunk_size=100)
    assert_failed_whole(engine, summary, before)
    assert f"the database failed: {message} (SQLSTATE {sqlstate})" in (summary.error or "")


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_first_load_that_meets_a_full_disk_commits_nothing(engine: Engine) -> None:
    _trigger_raising(engine, "53100", "could not extend file: No space left on device")
    records = [ticket(i, **{"TKT-Title": f"new {i}"}) for i in range(1, 1001)]
    summary = pipeline.load_view(engine, "tickets", records, chunk_size=100)
    assert_failed_whole(engine, summary, {})
    assert "SQLSTATE 53100" in (summary.error or "")


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_sqlite_full_database_fails_the_view_instead_of_rejecting_rows(
    engine: Engine, db_url: str
) -> None:
    pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 11)])
    before = titles(engine)
    full = make_engine(db_url)

    @event.listens_for(full, "connect")
    def _small(dbapi_connection: Any, record: Any) -> None:
        # The main database may not grow: writes to it fail with SQLITE_FULL (the stage
        # lives in the temporary database, which keeps its own limit).
        pages = dbapi_connection.execute("PRAGMA main.page_count").fetchone()[0]
        dbapi_connection.execute(f"PRAGMA main.max_page_count = {pages}")

    try:
        long_text = "x" * 2000
        records = [ticket(i, **{"TKT-Description": long_text}) for i in range(1, 2001)]
        summary = pipeline.load_view(full, "tickets", records, chunk_size=500)
    finally:
        full.dispose()
    assert "SQLITE_FULL" in (summary.error or "")
    assert_failed_whole(engine, summary, before)


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_row_held_for_update_by_another_application_fails_the_view_never_a_reject(
    engine: Engine, db_url: str
) -> None:
    """With lock_timeout on the database, the held row's lock wait fails the view."""
    pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 11)])
    before = titles(engine)
    with engine.connect() as conn:
        database = conn.scalar(text("SELECT current_database()"))
        conn.exec_driver_sql(f"ALTER DATABASE {database} SET lock_timeout = '300ms'")
        conn.commit()
    loader = make_engine(db_url)  # new sessions: they take the database's lock_timeout
    application = make_engine(db_url)
    try:
        with application.connect() as holder:
            holder.execute(text('SELECT 1 FROM servicedesk.tickets WHERE "TKT-Ticket ID" = 5 FOR UPDATE'))
            records = [ticket(i, **{"TKT-Title": f"changed {i}"}) for i in range(1, 11)]
            summary = pipeline.load_view(loader, "tickets", records)
            holder.rollback()
    finally:
        loader.dispose()
        application.dispose()
    assert_failed_whole(engine, summary, before)
    assert "lock timeout (SQLSTATE 55P03)" in (summary.error or "")


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_row_held_for_update_is_waited_for_without_a_lock_timeout(
    engine: Engine, db_url: str
) -> None:
    """Without lock_timeout the load waits for the other application, then loads every row."""
    pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 11)])
    application = make_engine(db_url)
    results: list[pipeline.RunSummary] = []
    try:
        with application.connect() as holder:
            holder.execute(text('SELECT 1 FROM servicedesk.tickets WHERE "TKT-Ticket ID" = 5 FOR UPDATE'))
            records = [ticket(i, **{"TKT-Title": f"changed {i}"}) for i in range(1, 11)]
            worker = threading.Thread(
                target=lambda: results.append(pipeline.load_view(engine, "tickets", records))
            )
            worker.start()
            with engine.connect() as watcher:
                # Wait until the load is waiting for the held row's lock.
                for _ in range(200):
                    waiting = watcher.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                        )
                    )
                    watcher.rollback()  # pg_stat_activity is read once per transaction
                    if waiting:
                        break
                    threading.Event().wait(0.05)
                assert waiting
            holder.rollback()
            worker.join(30)
    finally:
        application.dispose()
    assert results and counts(results[0]) == (0, 10, 0, 0, 0)
    assert titles(engine)[5] == "changed 5"


def _source_that_kills_its_backend(engine: Engine, count: int) -> Iterator[dict[str, Any]]:
    """Tickets; half way through, the load's own backend is terminated (as an operator would)."""
    for i in range(1, count + 1):
        if i == count // 2:
            with engine.connect() as conn:
                killed = conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND state LIKE 'idle in transaction%'"
                    )
                )
                assert killed == 1
        yield ticket(i, **{"TKT-Title": f"new {i}"})


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_terminated_backend_is_reported_as_the_lost_connection(engine: Engine) -> None:
    pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 11)])
    before = titles(engine)
    summary = pipeline.load_view(
        engine, "tickets", _source_that_kills_its_backend(engine, 400), chunk_size=50
    )
    assert_failed_whole(engine, summary, before)
    assert (summary.error or "").startswith("the database connection was lost (")
    assert "PendingRollback" not in (summary.error or "")


@pytest.mark.parametrize("dialect", ["postgresql"])
@pytest.mark.parametrize("filled", [False, True], ids=["first-load", "reload"])
def test_a_value_refused_while_staging_is_a_reject_of_its_record(
    engine: Engine, filled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value the parse lets through but PostgreSQL refuses in the COPY is a reject.

    Parse now refuses 1e200000 itself (numbers stay within 1e±300); widened here, it
    stands for any value the database refuses that parse cannot foresee.
    """
    monkeypatch.setattr(parse, "MAX_NUMBER_EXPONENT", 1_000_000)
    if filled:
        pipeline.load_view(engine, "timesheets", [timesheet(i) for i in range(1, 301)])
    records = [timesheet(i, **{"TS-Description": f"again {i}"}) for i in range(1, 301)]
    for bad in (7, 150, 151):
        records[bad - 1]["TS-Hours"] = "1e200000"
    summary = pipeline.load_view(engine, "timesheets", records, chunk_size=100)
    assert summary.status == "partial" and summary.rejected == 3
    assert summary.fetched == 300
    assert (summary.updated if filled else summary.inserted) == 297
    with engine.connect() as conn:
        rejects = conn.execute(
            select(EtlReject.source_position, EtlReject.field, EtlReject.value, EtlReject.reason)
            .where(EtlReject.run_id == summary.run_id)
            .order_by(EtlReject.source_position)
        ).all()
        described = set(conn.scalars(select(Timesheet.description)))
    assert [r.source_position for r in rejects] == [7, 150, 151]
    assert all(r.field == "TS-Hours" and r.value == "1E+200000" for r in rejects)
    assert all(r.reason.startswith("refused by the database: ") for r in rejects)
    assert "again 8" in described and "again 7" not in described
