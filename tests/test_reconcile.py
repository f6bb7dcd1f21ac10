"""`otc load VIEW --reconcile`: the live table agrees with a complete source for its range.

Both databases. The guards are the point: a short, broken or mostly rejected source
never empties a table, and every row that leaves is kept and can be restored.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from test_load import ticket, timesheet
from typer.testing import CliRunner

from otc_pipeline import pipeline, removal
from otc_pipeline.cli import app
from otc_pipeline.errors import ConfigError
from otc_pipeline.models import Timesheet, TimesheetRemoved
from otc_pipeline.reconcile import Reconcile

DECEMBER = {"TS-Date": "15/12/2025", "TS-Description": "outside the range"}


def counted(summary: pipeline.RunSummary) -> pipeline.RunSummary:
    """The summary, once its invariant is checked (removed rows are not among fetched)."""
    parts = ("inserted", "updated", "unchanged", "duplicates", "stale", "rejected")
    assert summary.fetched == sum(getattr(summary, name) for name in parts)
    return summary


def live(engine: Engine) -> list[tuple[Any, ...]]:
    table = Timesheet.__table__
    keys = [table.c[k] for k in ("TS-User Username", "TS-Date", "TS-Time From", "TS-Crm ID")]
    columns = [*keys, table.c["TS-Hours"], table.c["TS-Description"]]
    with engine.connect() as conn:
        return sorted(
            (tuple(row) for row in conn.execute(select(*columns))),
            key=lambda row: tuple(str(v) for v in row),
        )


def hours(engine: Engine, **where: Any) -> Decimal:
    with engine.connect() as conn:
        query = select(func.coalesce(func.sum(Timesheet.hours), 0))
        if "month" in where:
            query = query.where(Timesheet.date >= where["month"])
        return Decimal(str(conn.scalar(query)))


def removed_run_ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.scalars(select(TimesheetRemoved.removed_run_id)))


def january(n: int = 60) -> list[dict[str, Any]]:
    return [timesheet(i) for i in range(n)]


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def held(engine: Engine) -> list[dict[str, Any]]:
    """January's entries plus one of December's, loaded: what the table holds before."""
    pipeline.load_view(engine, "timesheets", [*january(), timesheet(500, **DECEMBER)])
    return january()


def corrected_snapshot(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """January as OTC holds it now: one entry's start time corrected, one deleted."""
    snapshot = [dict(r) for r in records]
    snapshot[5]["TS-Time From"] = "23:45"  # re-keyed: a new unique entry in OTC
    del snapshot[10]
    return snapshot


def test_a_corrected_and_a_deleted_entry_leave_the_live_table(
    engine: Engine, db_url: str, held: list[dict[str, Any]], tmp_path: Path
) -> None:
    snapshot = corrected_snapshot(held)
    path = write(tmp_path / "timesheets.json", snapshot)
    december = hours(engine) - hours(engine, month="2026-01-01")
    result = CliRunner().invoke(
        app,
        ["load", "timesheets", "--from", str(path), "--reconcile", "--json"],
        env={"OTC_DATABASE_URL": db_url},
    )
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert (line["inserted"], line["unchanged"], line["removed"]) == (1, 58, 2)

    # The live table holds exactly the snapshot for January, December untouched.
    in_january = [row for row in live(engine) if row[1].year == 2026]
    with engine.begin() as conn:  # the snapshot alone, loaded into an emptied table
        conn.execute(Timesheet.__table__.delete())
        conn.execute(TimesheetRemoved.__table__.delete())
    pipeline.load_view(engine, "timesheets", snapshot)
    assert in_january == live(engine)
    pipeline.load_view(engine, "timesheets", [*held, timesheet(500, **DECEMBER)])
    reconciled = pipeline.load_view(engine, "timesheets", snapshot, reconcile=Reconcile())
    assert reconciled.removed == 2 and len(in_january) == len(snapshot)
    assert hours(engine, month="2026-01-01") == Decimal("1.5") * len(snapshot)
    assert hours(engine) - hours(engine, month="2026-01-01") == december
    assert [row for row in live(engine) if row[1].year == 2025] != []
    assert removed_run_ids(engine) == [reconciled.run_id] * 2

    listed = CliRunner().invoke(
        app,
        ["removed", "--run", str(reconciled.run_id), "--json"],
        env={"OTC_DATABASE_URL": db_url},
    )
    assert listed.exit_code == 0, listed.output
    assert "23:45" not in listed.output and held[5]["TS-Time From"] in listed.output

    restored = CliRunner().invoke(
        app,
        ["removed", "restore", "--run", str(reconciled.run_id)],
        env={"OTC_DATABASE_URL": db_url},
    )
    assert restored.exit_code == 0, restored.output
    assert removed_run_ids(engine) == []
    assert len(live(engine)) == len(snapshot) + 1 + 2  # the removed two are back


def test_reconcile_the_same_snapshot_again_removes_nothing(
    engine: Engine, held: list[dict[str, Any]]
) -> None:
    snapshot = corrected_snapshot(held)
    first = counted(pipeline.load_view(engine, "timesheets", snapshot, reconcile=Reconcile()))
    again = counted(pipeline.load_view(engine, "timesheets", snapshot, reconcile=Reconcile()))
    assert (first.removed, again.removed, again.unchanged) == (2, 0, len(snapshot))


def test_a_given_range_bounds_what_may_leave(engine: Engine, held: list[dict[str, Any]]) -> None:
    snapshot = corrected_snapshot(held)
    # Entries are on days 1-28; a range of days 1-5 only reaches the entries on those days.
    summary = counted(
        pipeline.load_view(
            engine,
            "timesheets",
            snapshot,
            reconcile=Reconcile(range=(date(2026, 1, 1), date(2026, 1, 5))),
        )
    )
    gone = [r for r in held if r not in snapshot]
    in_range = [r for r in gone if int(r["TS-Date"][:2]) <= 5]
    assert summary.removed == len(in_range)


# --- the guards: nothing leaves ---------------------------------------------------------


def assert_nothing_left(engine: Engine, before: list[tuple[Any, ...]]) -> None:
    assert live(engine) == before
    assert removed_run_ids(engine) == []


def test_an_empty_source_removes_nothing(engine: Engine, held: list[dict[str, Any]]) -> None:
    before = live(engine)
    summary = counted(pipeline.load_view(engine, "timesheets", [], reconcile=Reconcile()))
    assert summary.removed == 0 and "removed nothing" in " ".join(summary.warnings)
    assert_nothing_left(engine, before)


def test_a_truncated_export_removes_nothing(
    engine: Engine, held: list[dict[str, Any]], tmp_path: Path
) -> None:
    before = live(engine)
    path = write(tmp_path / "timesheets.json", held[:30])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    summary = pipeline.load_view(engine, "timesheets", path, reconcile=Reconcile())
    assert summary.status == "failed" and summary.removed == 0
    assert_nothing_left(engine, before)


@pytest.mark.parametrize("rejected", ["every", "one"])
def test_rejected_records_remove_nothing(
    engine: Engine, held: list[dict[str, Any]], rejected: str
) -> None:
    before = live(engine)
    # The whole of January: without the guard, the rejected record's row would leave.
    source = [dict(r) for r in held]
    for record in source if rejected == "every" else source[:1]:
        record["TS-Hours"] = "lots"
    summary = counted(pipeline.load_view(engine, "timesheets", source, reconcile=Reconcile()))
    assert summary.removed == 0
    if rejected == "one":
        assert summary.status == "partial" and "rejected" in " ".join(summary.warnings)
    assert removed_run_ids(engine) == []
    assert len(live(engine)) == len(before)


def test_more_than_the_limit_fails_the_view_and_changes_nothing(
    engine: Engine, held: list[dict[str, Any]]
) -> None:
    before = live(engine)
    summary = pipeline.load_view(engine, "timesheets", held[:40], reconcile=Reconcile())
    assert summary.status == "failed" and summary.exit_code == 1
    assert summary.error is not None and "--max-removed" in summary.error
    assert_nothing_left(engine, before)
    allowed = pipeline.load_view(
        engine, "timesheets", held[:40], reconcile=Reconcile(max_removed=20)
    )
    assert (allowed.status, allowed.removed) == ("success", 20)


def test_a_dry_run_lists_what_would_go_and_moves_nothing(
    engine: Engine, held: list[dict[str, Any]]
) -> None:
    before = live(engine)
    summary = pipeline.load_view(
        engine, "timesheets", corrected_snapshot(held), reconcile=Reconcile(), dry_run=True
    )
    assert (summary.status, summary.removed) == ("dry-run", 2)
    assert any(w.startswith("would remove 2 rows") for w in summary.warnings)
    assert_nothing_left(engine, before)


def test_the_api_tickets_view_cannot_be_reconciled(engine: Engine) -> None:
    with pytest.raises(ConfigError, match="window of modified times"):
        pipeline.load_view(engine, "tickets", "api", reconcile=Reconcile())


def test_tickets_reconcile_by_creation_time(engine: Engine) -> None:
    pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 41)])
    summary = counted(
        pipeline.load_view(
            engine, "tickets", [ticket(i) for i in range(2, 41)], reconcile=Reconcile()
        )
    )
    assert summary.removed == 1
    with engine.connect() as conn:
        assert removal.removed_rows(conn, summary.run_id)[0]["key"] == {"TKT-Ticket ID": 1}
