"""Load semantics on both databases: exact counts, no rewrites, rejects, failures, locks."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, text

from otc_pipeline import pipeline, runs
from otc_pipeline.db import make_engine
from otc_pipeline.errors import LoadLocked
from otc_pipeline.models import EtlReject, EtlRun, Ticket, Timesheet
from otc_pipeline.sample import write_sample
from otc_pipeline.sources import files


def timesheet(i: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "TS-User Username": f"user{i % 7}",
        "TS-User Full Name": f"User {i % 7}",
        "TS-Date": f"{i % 28 + 1:02d}/01/2026",
        "TS-Time From": f"{i // 28 % 24:02d}:{i % 4 * 15:02d}",
        "TS-Time To": "17:00",
        "TS-Hours": "1,5",
        "TS-Crm ID": str(1000 + i) if i % 3 else "",
        "TS-Description": f"work {i}",
        "TS-Billable": "Yes",
    }
    record.update(fields)
    return record


def ticket(i: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "TKT-Ticket ID": str(i),
        "TKT-Title": f"Ticket {i}",
        "TKT-Status": "Open",
        "TKT-Team": "NOC",
        "TKT-Assigned To User": " PendingAssignment",
        "TKT-Created Time": "2026-01-02T03:04:05Z",
        "TKT-Description": f"description {i}",
    }
    record.update(fields)
    return record


def counts(summary: pipeline.RunSummary) -> tuple[int, int, int, int, int]:
    return (
        summary.inserted,
        summary.updated,
        summary.unchanged,
        summary.duplicates,
        summary.rejected,
    )


def table_rows(engine: Engine, model: Any) -> list[tuple[Any, ...]]:
    table = model.__table__
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]


def assert_invariant(summary: pipeline.RunSummary) -> None:
    assert summary.fetched == sum(counts(summary))


def test_first_identical_and_changed_reload(engine: Engine) -> None:
    records = [timesheet(i) for i in range(300)]
    first = pipeline.load_view(engine, "timesheets", records, chunk_size=64)
    assert (first.status, counts(first)) == ("success", (300, 0, 0, 0, 0))
    assert_invariant(first)

    again = pipeline.load_view(engine, "timesheets", records, chunk_size=64)
    assert counts(again) == (0, 0, 300, 0, 0)

    records[10]["TS-Hours"] = "2,25"
    records[20]["TS-Description"] = "changed"
    records.append(timesheet(300))
    changed = pipeline.load_view(engine, "timesheets", records, chunk_size=64)
    assert counts(changed) == (1, 2, 298, 0, 0)
    assert_invariant(changed)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Timesheet)) == 301
        hours = conn.scalar(select(Timesheet.hours).where(Timesheet.description == "work 10"))
    assert Decimal(str(hours)) == Decimal("2.25")


def test_identical_reload_rewrites_nothing(engine: Engine, dialect: str) -> None:
    records = [ticket(i) for i in range(1, 51)]
    pipeline.load_view(engine, "tickets", records)
    if dialect == "postgresql":
        # A rewritten row gets a new xmin; an untouched one keeps it.
        query = text('SELECT "TKT-Ticket ID", xmin::text FROM servicedesk.tickets ORDER BY 1')
    else:
        query = text('SELECT "TKT-Ticket ID", rowid FROM tickets ORDER BY 1')
    with engine.connect() as conn:
        before = conn.execute(query).all()
    assert counts(pipeline.load_view(engine, "tickets", records)) == (0, 0, 50, 0, 0)
    with engine.connect() as conn:
        assert conn.execute(query).all() == before
        # Text is kept as given, leading space and all, through COPY and executemany alike.
        assignees = set(conn.scalars(select(Ticket.assigned_to_user)))
    assert assignees == {" PendingAssignment"}


def test_in_file_duplicates_last_one_wins_across_chunks(engine: Engine) -> None:
    records = [ticket(i) for i in range(1, 11)]
    records.append(ticket(3, **{"TKT-Title": "second"}))
    records.append(ticket(3, **{"TKT-Title": "third"}))
    records.append(ticket(5, **{"TKT-Title": "later"}))
    summary = pipeline.load_view(engine, "tickets", records, chunk_size=4)
    assert counts(summary) == (10, 0, 0, 3, 0)
    assert_invariant(summary)
    with engine.connect() as conn:
        titles = dict(conn.execute(select(Ticket.ticket_id, Ticket.title)).all())
    assert titles[3] == "third" and titles[5] == "later" and titles[4] == "Ticket 4"
    # Reloading the same file: duplicates again, the rest unchanged.
    assert counts(pipeline.load_view(engine, "tickets", records, chunk_size=4)) == (0, 0, 10, 3, 0)


def test_a_repeat_across_chunks_into_a_filled_table_is_settled_before_writing(
    engine: Engine, dialect: str
) -> None:
    """The last occurrence decides; an earlier one that differs is never written."""
    pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 7)])
    versions = _row_versions(engine, dialect)
    records = [
        ticket(1),
        ticket(3, **{"TKT-Title": "interim"}),  # chunk 1: differs from the table
        ticket(2),
        ticket(4),
        ticket(3),  # chunk 3: the table's own value, so ticket 3 is unchanged
        ticket(5),
        ticket(6, **{"TKT-Title": "renamed"}),
        ticket(2, **{"TKT-Title": "later"}),  # chunk 4: ticket 2 was unchanged in chunk 2
    ]
    summary = pipeline.load_view(engine, "tickets", records, chunk_size=2)
    assert counts(summary) == (0, 2, 4, 2, 0)
    assert_invariant(summary)
    after = _row_versions(engine, dialect)
    assert {k: v for k, v in after.items() if k not in (2, 6)} == {
        k: v for k, v in versions.items() if k not in (2, 6)
    }
    with engine.connect() as conn:
        titles = dict(conn.execute(select(Ticket.ticket_id, Ticket.title)).all())
    assert titles[3] == "Ticket 3" and titles[6] == "renamed" and titles[2] == "later"


def _row_versions(engine: Engine, dialect: str) -> dict[int, Any]:
    """Ticket id -> something that changes when the row is rewritten (PostgreSQL: xmin)."""
    if dialect == "postgresql":
        query = text('SELECT "TKT-Ticket ID", xmin::text FROM servicedesk.tickets')
    else:
        query = text('SELECT "TKT-Ticket ID", "TKT-Title" FROM tickets')
    with engine.connect() as conn:
        return {row[0]: row[1] for row in conn.execute(query)}


def test_into_an_empty_table_a_later_repeat_replaces_the_row_of_an_earlier_chunk(
    engine: Engine,
) -> None:
    """An empty table is merged chunk by chunk: a repeat updates the row and counts as a duplicate."""
    records = [timesheet(i, **{"TS-Crm ID": ""}) for i in range(6)]
    records.append(timesheet(1, **{"TS-Crm ID": "", "TS-Description": "last"}))
    records.append(timesheet(2, **{"TS-Crm ID": ""}))  # an identical repeat
    summary = pipeline.load_view(engine, "timesheets", records, chunk_size=2)
    assert counts(summary) == (6, 0, 0, 2, 0)
    assert_invariant(summary)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Timesheet)) == 6
        descriptions = set(conn.scalars(select(Timesheet.description)))
    assert descriptions == {"work 0", "last", "work 2", "work 3", "work 4", "work 5"}


def test_a_refused_repeat_leaves_the_row_an_earlier_chunk_loaded(
    engine: Engine, dialect: str
) -> None:
    """Like a repeat that fails to parse, a refused repeat does not undo an earlier one."""
    _install_refusing_trigger(engine, dialect)
    records = [ticket(i) for i in range(1, 5)] + [ticket(2, **{"TKT-Title": "poison"})]
    summary = pipeline.load_view(engine, "tickets", records, chunk_size=2)
    assert counts(summary) == (4, 0, 0, 0, 1)
    assert_invariant(summary)
    with engine.connect() as conn:
        assert conn.scalar(select(Ticket.title).where(Ticket.ticket_id == 2)) == "Ticket 2"


AWKWARD_TEXT = [
    "tab\there",
    "line\nbreak",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\",
    "\\t is not a tab",
    'quote " and, comma',
    " spaced ",
    "unicode\u2028line separator",
    "ünïcödé ✓",
    "vertical\x0btab and bell\x07",
]


def test_awkward_text_is_stored_exactly_by_both_ways_in(engine: Engine, tmp_path: Path) -> None:
    """COPY's own characters in text survive, from records in memory and from a file alike."""
    records = [
        ticket(i, **{"TKT-Title": text_value, "TKT-Description": text_value})
        for i, text_value in enumerate(AWKWARD_TEXT, 1)
    ]
    first = pipeline.load_view(engine, "tickets", records)
    assert counts(first) == (len(AWKWARD_TEXT), 0, 0, 0, 0)
    with engine.connect() as conn:
        stored = conn.execute(
            select(Ticket.title, Ticket.description).order_by(Ticket.ticket_id)
        ).all()
    assert [tuple(row) for row in stored] == [(t, t) for t in AWKWARD_TEXT]
    # A file goes through the reading process on PostgreSQL: the same values, so unchanged.
    path = tmp_path / "tickets.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    again = pipeline.load_view(engine, "tickets", path)
    assert counts(again) == (0, 0, len(AWKWARD_TEXT), 0, 0)


def test_null_crm_entries_reload_without_new_rows(engine: Engine) -> None:
    records = [timesheet(i, **{"TS-Crm ID": ""}) for i in range(40)]
    assert counts(pipeline.load_view(engine, "timesheets", records)) == (40, 0, 0, 0, 0)
    assert counts(pipeline.load_view(engine, "timesheets", records)) == (0, 0, 40, 0, 0)
    records[0]["TS-Hours"] = "3"
    assert counts(pipeline.load_view(engine, "timesheets", records)) == (0, 1, 39, 0, 0)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Timesheet)) == 40


def test_narrower_export_leaves_other_columns_alone(engine: Engine) -> None:
    pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 6)])
    narrow = [{"TKT-Ticket ID": str(i), "TKT-Status": "Closed"} for i in range(1, 6)]
    summary = pipeline.load_view(engine, "tickets", narrow)
    assert counts(summary) == (0, 5, 0, 0, 0)
    with engine.connect() as conn:
        rows = conn.execute(select(Ticket.status, Ticket.title, Ticket.description)).all()
    assert {status for status, _, _ in rows} == {"Closed"}
    assert all(title and description for _, title, description in rows)
    # A record that lacks a field other records carry does not blank it either.
    mixed = [ticket(1, **{"TKT-Title": "new title"}), {"TKT-Ticket ID": "2", "TKT-Status": "Open"}]
    assert counts(pipeline.load_view(engine, "tickets", mixed)) == (0, 2, 0, 0, 0)
    with engine.connect() as conn:
        title2 = conn.scalar(select(Ticket.title).where(Ticket.ticket_id == 2))
    assert title2 == "Ticket 2"


def test_rejects_are_stored_and_the_rest_loads(engine: Engine) -> None:
    records = [ticket(i) for i in range(1, 101)]
    records[9]["TKT-Created Time"] = "yesterday"
    records[49]["TKT-Ticket ID"] = ""
    summary = pipeline.load_view(engine, "tickets", records, chunk_size=16)
    assert summary.status == "partial" and summary.exit_code == 3
    assert counts(summary) == (98, 0, 0, 0, 2)
    with engine.connect() as conn:
        rejects = conn.execute(
            select(EtlReject.source_position, EtlReject.field, EtlReject.value, EtlReject.reason)
            .where(EtlReject.run_id == summary.run_id)
            .order_by(EtlReject.source_position)
        ).all()
    assert [tuple(r) for r in rejects] == [
        (
            10,
            "TKT-Created Time",
            "yesterday",
            "value is not a date (expected ISO 8601 or DD/MM/YYYY)",
        ),
        (50, "TKT-Ticket ID", "", "key field is blank"),
    ]


def _install_refusing_trigger(engine: Engine, dialect: str) -> None:
    """Make the database itself refuse tickets titled 'poison' (a stand-in for any refusal)."""
    with engine.begin() as conn:
        if dialect == "postgresql":
            conn.execute(
                text("""
                CREATE FUNCTION servicedesk.refuse_poison() RETURNS trigger AS $$
                BEGIN
                  IF NEW."TKT-Title" = 'poison' THEN RAISE EXCEPTION 'poison refused'; END IF;
                  RETURN NEW;
                END $$ LANGUAGE plpgsql""")
            )
            conn.execute(
                text("""
                CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON servicedesk.tickets
                FOR EACH ROW EXECUTE FUNCTION servicedesk.refuse_poison()""")
            )
        else:
            for event in ("INSERT", "UPDATE"):
                conn.execute(
                    text(f"""
                    CREATE TRIGGER refuse_poison_{event.lower()} BEFORE {event} ON tickets
                    WHEN NEW."TKT-Title" = 'poison'
                    BEGIN SELECT RAISE(ABORT, 'poison refused'); END""")
                )


def test_refused_chunk_isolates_exactly_the_bad_rows(engine: Engine, dialect: str) -> None:
    _install_refusing_trigger(engine, dialect)
    records = [ticket(i) for i in range(1, 201)]
    for bad in (7, 8, 150):
        records[bad - 1]["TKT-Title"] = "poison"
    summary = pipeline.load_view(engine, "tickets", records, chunk_size=50)
    assert counts(summary) == (197, 0, 0, 0, 3)
    assert_invariant(summary)
    with engine.connect() as conn:
        loaded = set(conn.scalars(select(Ticket.ticket_id)))
        rejects = conn.execute(
            select(EtlReject.source_position, EtlReject.reason, EtlReject.raw_record).where(
                EtlReject.run_id == summary.run_id
            )
        ).all()
    assert loaded == set(range(1, 201)) - {7, 8, 150}
    assert sorted(r.source_position for r in rejects) == [7, 8, 150]
    assert all("poison refused" in r.reason for r in rejects)
    assert all('"TKT-Title": "poison"' in r.raw_record for r in rejects)


def test_failure_mid_load_leaves_the_view_untouched(engine: Engine) -> None:
    pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 21)])
    before = table_rows(engine, Ticket)

    def broken_source() -> Iterator[dict[str, Any]]:
        for i in range(1, 500):
            if i == 250:
                raise ConnectionResetError("source went away")
            yield ticket(i, **{"TKT-Title": "overwritten"})

    summary = pipeline.load_view(engine, "tickets", broken_source(), chunk_size=32)
    assert summary.status == "failed" and summary.exit_code == 1
    assert "source went away" in (summary.error or "")
    assert table_rows(engine, Ticket) == before
    with engine.connect() as conn:
        run = conn.execute(select(EtlRun).where(EtlRun.id == summary.run_id)).one()
    assert run.load_status == "failed"
    assert run.last_load_time is None and run.load_end is not None
    assert "source went away" in run.error_message


@contextmanager
def tickets_load_held_after(
    engine: Engine, first: dict[str, Any], *rest: dict[str, Any]
) -> Iterator[list[pipeline.RunSummary]]:
    """A tickets load in a thread, held after its first record until the block ends."""
    started, release = threading.Event(), threading.Event()
    results: list[pipeline.RunSummary] = []

    def held_source() -> Iterator[dict[str, Any]]:
        yield first
        started.set()
        release.wait(30)
        yield from rest

    worker = threading.Thread(
        target=lambda: results.append(
            pipeline.load_view(engine, "tickets", held_source(), chunk_size=1)
        )
    )
    worker.start()
    try:
        assert started.wait(30)
        yield results
    finally:
        release.set()
        worker.join(30)


def test_concurrent_load_of_the_same_view_is_refused(engine: Engine) -> None:
    with tickets_load_held_after(engine, ticket(1), ticket(2)) as results:
        with pytest.raises(LoadLocked, match=r"another load of tickets is running \(run \d+"):
            pipeline.load_view(engine, "tickets", [ticket(3)])
        # Another view is not blocked by it on PostgreSQL; on SQLite it waits for the writer.
    assert results and results[0].status == "success" and results[0].inserted == 2


def test_while_a_view_is_read_readers_and_writers_go_on(
    engine: Engine, db_url: str, dialect: str
) -> None:
    """Nothing is locked until the merge begins: a reload that waits for its source
    keeps no other writer out (writers wait only from the merge to the commit)."""
    pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 4)])
    other = make_engine(db_url)
    try:
        with tickets_load_held_after(
            engine, ticket(1, **{"TKT-Title": "changed"}), ticket(4)
        ) as results:
            with other.connect() as conn:
                assert conn.scalar(select(func.count()).select_from(Ticket)) == 3
                if dialect == "postgresql":
                    conn.exec_driver_sql("SET lock_timeout = '300ms'")
                else:
                    conn.exec_driver_sql("PRAGMA busy_timeout = 300")
                conn.execute(insert(Ticket).values(ticket_id=99, title="written meanwhile"))
                conn.commit()
    finally:
        other.dispose()
    assert results and counts(results[0]) == (1, 1, 0, 0, 0)
    with engine.connect() as conn:
        assert conn.scalar(select(Ticket.title).where(Ticket.ticket_id == 99)) == "written meanwhile"


def test_a_run_left_running_becomes_interrupted(engine: Engine) -> None:
    run_id = runs.open_run(engine, "comments", "killed.json")
    summary = pipeline.load_view(
        engine, "comments", [{"TKTCT-CommentID": "1", "TKTCT-TicketID": "5"}]
    )
    assert summary.status == "success"
    with engine.connect() as conn:
        old = conn.execute(select(EtlRun).where(EtlRun.id == run_id)).one()
    assert old.load_status == "interrupted"
    assert old.error_message == runs.INTERRUPTED_MESSAGE


def test_dry_run_writes_nothing_and_reports_what_would_change(engine: Engine) -> None:
    pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 4)])
    with engine.connect() as conn:
        runs_before = conn.scalar(select(func.count()).select_from(EtlRun))
    records = [
        ticket(1, **{"TKT-Title": "new"}),
        ticket(2),
        ticket(9),
        ticket(10, **{"TKT-Due Date": "bad"}),
    ]
    summary = pipeline.load_view(engine, "tickets", records, dry_run=True)
    assert summary.status == "dry-run" and summary.run_id is None
    assert counts(summary) == (1, 1, 1, 0, 1)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Ticket)) == 3
        assert conn.scalar(select(func.count()).select_from(EtlRun)) == runs_before
        assert conn.scalar(select(func.count()).select_from(EtlReject)) == 0


def test_run_record_has_every_count_and_the_newest_source_time(engine: Engine) -> None:
    records = [
        ticket(i, **{"TKT-Modified Time": f"0{i}/02/2026 10:00", "Extra": "x"}) for i in range(1, 6)
    ]
    records.append(ticket(1))
    summary = pipeline.load_view(engine, "tickets", records)
    with engine.connect() as conn:
        run = conn.execute(select(EtlRun).where(EtlRun.id == summary.run_id)).one()
    assert (run.load_status, run.records_fetched, run.records_inserted, run.records_duplicates) == (
        "success",
        6,
        5,
        1,
    )
    assert run.records_unchanged == 0 and run.records_rejected == 0 and run.records_updated == 0
    assert run.source == "records" and run.load_start <= run.load_end
    assert run.warnings == "unknown fields ignored: 'Extra'"
    # Ticket 1's last occurrence has no modified time; the newest of the rest is 5 Feb.
    assert run.latest_source_time.strftime("%Y-%m-%d") == "2026-02-05"


def test_a_streamed_xlsx_loads_the_same_values_as_one_read_whole(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large sheets stream through openpyxl, small ones are read whole by calamine: same rows."""
    paths = write_sample(
        tmp_path, tickets=200, timesheets=400, comments=200, fmt="xlsx", seed=5, bad_share=0.05
    )
    whole = {view: pipeline.load_view(engine, view, path) for view, path in paths.items()}
    assert all(s.inserted > 100 and s.rejected > 0 for s in whole.values())
    monkeypatch.setattr(files, "XLSX_READ_WHOLE_MAX_BYTES", 0)
    for view, path in paths.items():
        streamed = pipeline.load_view(engine, view, path)
        assert (streamed.inserted, streamed.updated) == (0, 0), view
        assert streamed.unchanged == whole[view].inserted, view
        assert streamed.rejected == whole[view].rejected, view


def test_keys_whose_hashes_collide_are_still_told_apart(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key hashes only narrow the search; the keys themselves decide what is a repeat."""
    from otc_pipeline import chunks

    monkeypatch.setattr(chunks, "hash", lambda key: 7, raising=False)  # every key collides
    records = [timesheet(i) for i in range(40)]
    assert counts(pipeline.load_view(engine, "timesheets", records, chunk_size=8)) == (
        40,
        0,
        0,
        0,
        0,
    )
    records.append(timesheet(3, **{"TS-Description": "later"}))
    records.append(timesheet(41))
    summary = pipeline.load_view(engine, "timesheets", records, chunk_size=8)
    assert counts(summary) == (1, 1, 39, 1, 0)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Timesheet)) == 41


def test_a_row_the_orm_wrote_and_the_same_record_loaded_are_unchanged(engine: Engine) -> None:
    """Loaded values are stored as the ORM stores them (SQLite keeps dates and numbers as text)."""
    with engine.begin() as conn:
        conn.execute(
            insert(Timesheet).values(
                user_username="user1",
                user_full_name="User 1",
                date=datetime(2026, 1, 2),
                time_from="00:15",
                time_to="17:00",
                hours=Decimal("1.5"),
                crm_id=1001,
                description="work 1",
                billable=True,
            )
        )
    summary = pipeline.load_view(engine, "timesheets", [timesheet(1)])
    assert counts(summary) == (0, 0, 1, 0, 0)
