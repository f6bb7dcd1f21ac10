"""Other writers are kept out only while a load writes, never while it fetches."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from otc_server import OtcServer, status, ticket_records
from sqlalchemy import Engine, select, text, update

from otc_pipeline import pipeline
from otc_pipeline.db import make_engine
from otc_pipeline.models import Ticket

TICKETS = list(ticket_records(20))
FIRST, SECOND = TICKETS[0]["TKT-Ticket ID"], TICKETS[1]["TKT-Ticket ID"]


def _api_env(server: OtcServer, state: Path) -> dict[str, str]:
    return server.env(
        OTC_STATE_DIR=str(state),
        OTC_API_MIN_INTERVAL_S="0.05",
        OTC_API_VIEW_GAP_S="0",
        OTC_API_TIMEOUT_S="30",
        OTC_API_RETRIES="3",
        OTC_API_BACKOFF_S="0.1",
        OTC_API_BACKOFF_MAX_S="5",
    )


def _write_without_waiting(other: Engine, dialect: str, ticket_id: int) -> None:
    """An application's UPDATE that fails instead of waiting more than a second for a lock."""
    with other.connect() as conn:
        if dialect == "postgresql":
            conn.exec_driver_sql("SET lock_timeout = '1s'")
        else:
            conn.exec_driver_sql("PRAGMA busy_timeout = 1000")
        conn.execute(update(Ticket).where(Ticket.ticket_id == ticket_id).values(title="app edit"))
        conn.commit()


def test_while_the_api_backs_off_and_trickles_other_writers_do_not_wait(
    engine: Engine, db_url: str, dialect: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent, release = threading.Event(), threading.Event()
    release.set()

    def trickling() -> Iterator[dict[str, Any]]:
        for index, record in enumerate(TICKETS):
            if index == 5:
                sent.set()
                release.wait(30)
            yield record

    with OtcServer(views={"tickets": trickling}, per_chunk=1) as server:
        for name, value in _api_env(server, tmp_path / "state").items():
            monkeypatch.setenv(name, value)
        assert pipeline.load_view(engine, "tickets", "api").inserted == 20
        sent.clear()
        release.clear()
        server.queue(status(503, retry_after="1"))
        results: list[pipeline.RunSummary] = []
        worker = threading.Thread(
            target=lambda: results.append(pipeline.load_view(engine, "tickets", "api"))
        )
        other = make_engine(db_url)
        worker.start()
        try:
            while server.request_count < 2 and worker.is_alive():  # the 503 came: backing off
                threading.Event().wait(0.02)
            _write_without_waiting(other, dialect, FIRST)
            assert sent.wait(30)  # five records sent, the rest held back
            _write_without_waiting(other, dialect, SECOND)
        finally:
            release.set()
            worker.join(60)
            other.dispose()
    assert results and results[0].status == "success"
    summary = results[0]
    # The compare is made under the lock at merge time: both edited rows are seen and set back.
    assert (summary.inserted, summary.updated, summary.unchanged) == (0, 2, 18)
    with engine.connect() as conn:
        titles = dict(conn.execute(select(Ticket.ticket_id, Ticket.title)).all())
    assert titles[FIRST] == TICKETS[0]["TKT-Title"] and titles[SECOND] == TICKETS[1]["TKT-Title"]


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_writers_wait_while_the_load_merges(engine: Engine, db_url: str) -> None:
    """From the merge to the commit the table takes no other writes (here: a held merge)."""
    pipeline.load_view(engine, "tickets", list(TICKETS))
    with engine.begin() as conn:
        # The merge stops at its first written row while the test holds advisory lock 4711.
        conn.execute(
            text("""
            CREATE FUNCTION servicedesk.hold_merge() RETURNS trigger AS $$
            BEGIN PERFORM pg_advisory_xact_lock_shared(4711); RETURN NEW; END
            $$ LANGUAGE plpgsql""")
        )
        conn.execute(
            text("""
            CREATE TRIGGER hold_merge BEFORE UPDATE ON servicedesk.tickets
            FOR EACH ROW EXECUTE FUNCTION servicedesk.hold_merge()""")
        )
    other = make_engine(db_url)
    results: list[pipeline.RunSummary] = []
    try:
        with other.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(4711)"))
            changed = [{**r, "TKT-Title": "changed"} for r in TICKETS]
            worker = threading.Thread(
                target=lambda: results.append(pipeline.load_view(engine, "tickets", changed))
            )
            worker.start()
            with other.connect() as watcher:
                waiting = 0
                for _ in range(600):
                    waiting = watcher.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
                            " AND datname = current_database()"
                        )
                    )
                    watcher.rollback()  # pg_stat_activity is read once per transaction
                    if waiting:
                        break
                    threading.Event().wait(0.05)
                assert waiting
                watcher.exec_driver_sql("SET lock_timeout = '300ms'")
                with pytest.raises(Exception, match="lock timeout"):
                    watcher.execute(update(Ticket).where(Ticket.ticket_id == FIRST).values(title="x"))
                watcher.rollback()
            holder.execute(text("SELECT pg_advisory_unlock(4711)"))
            holder.commit()
            worker.join(60)
    finally:
        other.dispose()
    assert results and results[0].updated == 20
