"""Newer wins: a record older than the row held (by OTC's modified time) changes nothing.

Both databases; every way of loading (a first load merging as it reads, a
reload merging at the end, repeats inside one chunk and across chunks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from test_load import ticket, timesheet

from otc_pipeline import pipeline
from otc_pipeline.cli import app
from otc_pipeline.models import Ticket, Timesheet

NEW = "2026-11-30T10:00:00"
OLD = "2026-11-01T10:00:00"


def all_counts(summary: pipeline.RunSummary) -> dict[str, int]:
    names = ("inserted", "updated", "unchanged", "duplicates", "stale", "rejected")
    counted = {name: getattr(summary, name) for name in names}
    assert summary.fetched == sum(counted.values())  # the invariant, in every case
    return counted


def statuses(engine: Engine) -> dict[int, str | None]:
    with engine.connect() as conn:
        return {row[0]: row[1] for row in conn.execute(select(Ticket.ticket_id, Ticket.status))}


def row_versions(engine: Engine) -> list[Any]:
    """PostgreSQL's xmin of each ticket: it changes whenever a row is written."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text('SELECT xmin::text FROM servicedesk.tickets ORDER BY "TKT-Ticket ID"')
            )
        )


def test_an_older_export_after_a_newer_load_changes_nothing(engine: Engine, dialect: str) -> None:
    newer = [ticket(i, **{"TKT-Status": "Closed", "TKT-Modified Time": NEW}) for i in range(1, 51)]
    pipeline.load_view(engine, "tickets", newer)
    before = row_versions(engine) if dialect == "postgresql" else None
    older = [ticket(i, **{"TKT-Status": "New", "TKT-Modified Time": OLD}) for i in range(1, 51)]
    summary = pipeline.load_view(engine, "tickets", older, chunk_size=16)
    assert all_counts(summary) == dict(
        inserted=0, updated=0, unchanged=0, duplicates=0, stale=50, rejected=0
    )
    assert set(statuses(engine).values()) == {"Closed"}
    if dialect == "postgresql":
        assert row_versions(engine) == before  # not even rewritten


def test_a_newer_record_still_updates_and_a_timeless_one_as_before(engine: Engine) -> None:
    pipeline.load_view(engine, "tickets", [ticket(1, **{"TKT-Modified Time": OLD}), ticket(2)])
    later = [
        ticket(1, **{"TKT-Status": "Closed", "TKT-Modified Time": NEW}),
        ticket(2, **{"TKT-Status": "Closed"}),  # no time on either side: written as before
        ticket(3, **{"TKT-Modified Time": OLD}),
    ]
    summary = pipeline.load_view(engine, "tickets", later)
    assert all_counts(summary) == dict(
        inserted=1, updated=2, unchanged=0, duplicates=0, stale=0, rejected=0
    )
    # A record without a time over a row with one: as before the newer-wins rule, written.
    summary = pipeline.load_view(engine, "tickets", [ticket(1, **{"TKT-Status": "Reopened"})])
    assert (summary.updated, summary.stale) == (1, 0)
    assert statuses(engine) == {1: "Reopened", 2: "Closed", 3: "Open"}


VERSIONS = [
    ("2026-11-10T00:00:00", "In Progress"),
    ("2026-11-30T00:00:00", "Closed"),  # the newest, in the middle of the file
    ("2026-11-01T00:00:00", "New"),
]


@pytest.mark.parametrize("chunk_size", [100, 1], ids=["one-chunk", "chunk-per-record"])
@pytest.mark.parametrize("table", ["empty", "with-rows"])
def test_of_three_versions_in_one_load_the_newest_wins(
    engine: Engine, chunk_size: int, table: str
) -> None:
    if table == "with-rows":
        pipeline.load_view(engine, "tickets", [ticket(7, **{"TKT-Modified Time": OLD})])
    records = [ticket(i) for i in range(1, 6)]
    records[2:2] = [
        ticket(7, **{"TKT-Modified Time": when, "TKT-Status": status}) for when, status in VERSIONS
    ]
    summary = pipeline.load_view(engine, "tickets", records, chunk_size=chunk_size)
    counted = all_counts(summary)
    assert counted["duplicates"] == 2 and counted["stale"] == 0
    assert statuses(engine)[7] == "Closed"


def test_timesheets_keep_the_newer_entry_too(engine: Engine) -> None:
    entry = {"TS-Modified Time": NEW, "TS-Description": "corrected"}
    pipeline.load_view(engine, "timesheets", [timesheet(1, **entry), timesheet(2)])
    old = {"TS-Modified Time": OLD, "TS-Description": "first draft"}
    summary = pipeline.load_view(engine, "timesheets", [timesheet(1, **old), timesheet(2)])
    assert all_counts(summary) == dict(
        inserted=0, updated=0, unchanged=1, duplicates=0, stale=1, rejected=0
    )
    with engine.connect() as conn:
        assert set(conn.scalars(select(Timesheet.description))) == {"corrected", "work 2"}


def test_stale_is_counted_in_the_cli_json_and_the_run(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps([ticket(1, **{"TKT-Status": "Closed", "TKT-Modified Time": NEW})]))
    older = tmp_path / "older.json"
    older.write_text(json.dumps([ticket(1, **{"TKT-Status": "New", "TKT-Modified Time": OLD})]))
    runner = CliRunner()
    env = {"OTC_DATABASE_URL": db_url}
    assert runner.invoke(app, ["load", "tickets", "--from", str(newer)], env=env).exit_code == 0
    result = runner.invoke(app, ["load", "tickets", "--from", str(older), "--json"], env=env)
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert (line["updated"], line["stale"], line["fetched"]) == (0, 1, 1)
    assert statuses(engine) == {1: "Closed"}
