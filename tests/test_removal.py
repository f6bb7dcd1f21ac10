"""Rows moved out to <table>_removed and back (otc_pipeline.removal), on both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from typer.testing import CliRunner

from otc_pipeline import migrate, removal, runs
from otc_pipeline.cli import app
from otc_pipeline.db import make_engine
from otc_pipeline.models import SCHEMA
from otc_pipeline.views import COMMENTS, TICKETS, TIMESHEETS

KEY = TIMESHEETS.key
REASON = "not in the source for TS-Date 2025-03-01..2025-03-31"
LOW, HIGH = datetime(2025, 3, 1), datetime(2025, 3, 31, 23, 59, 59)


def entry(
    user: str, day: tuple[int, int], start: str, crm: int | None, **more: Any
) -> dict[str, Any]:
    row = {c.key: None for c in TIMESHEETS.table.columns if c.key != "id"}
    row.update(
        {
            "TS-User Username": user,
            "TS-User Full Name": user.title(),
            "TS-Date": datetime(2025, *day),
            "TS-Time From": start,
            "TS-Time To": "17:00",
            "TS-Hours": Decimal("1.25"),
            "TS-Crm ID": crm,
            "TS-Billable": True,
            "TS-Modified Time": datetime(2025, 4, 1, 8, 30),
        }
    )
    row.update(more)
    return row


# name -> (row, carried by the source?)
SEEDED = {
    "kept": (entry("alice", (3, 3), "09:00", 100), True),
    "kept, no ticket": (entry("alice", (3, 3), "10:00", None), True),
    "source has a ticket, row none": (entry("alice", (3, 4), "09:00", None), False),
    "source has no ticket, row one": (entry("bob", (3, 4), "11:00", 200), False),
    "gone": (entry("bob", (3, 5), "08:00", 300, **{"TS-Description": "deleted in OTC"}), False),
    "first moment of the range": (entry("bob", (3, 1), "00:00", 300), False),
    "before the range": (entry("carol", (2, 28), "09:00", None), False),
    "after the range": (entry("carol", (4, 1), "09:00", 400), False),
}
# What the source carries besides the kept rows: the same entries with the other crm id.
ALSO_IN_SOURCE = [
    {**SEEDED["source has a ticket, row none"][0], "TS-Crm ID": 100},
    {**SEEDED["source has no ticket, row one"][0], "TS-Crm ID": None},
]
MOVED = {"source has a ticket, row none", "source has no ticket, row one", "gone"}
MOVED |= {"first moment of the range"}


@pytest.fixture
def conn(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        yield connection


def keep_table(conn: Connection, view: Any, rows: list[dict[str, Any]]) -> sa.Table:
    """A stage of the view's key columns holding ``rows`` (what the source carried)."""
    columns = [sa.Column(k, view.table.c[k].type) for k in view.key]
    keep = sa.Table(f"keep_{view.name}", sa.MetaData(), *columns, prefixes=["TEMPORARY"])
    keep.create(conn)
    if rows:
        conn.execute(keep.insert(), [{k: r[k] for k in view.key} for r in rows])
    return keep


def a_run(conn: Connection, view: str, removed: int = 0) -> int:
    run_id = runs.open_run(conn, view, "test")
    runs.close_run(
        conn,
        run_id,
        status="success",
        fetched=0,
        inserted=0,
        updated=0,
        unchanged=0,
        duplicates=0,
        rejected=0,
        duration_s=0.1,
        warnings=[],
        error=None,
        latest_source_time=None,
        removed=removed,
    )
    return run_id


def seed_timesheets(conn: Connection) -> dict[str, dict[str, Any]]:
    """Insert SEEDED; every row as stored, id included, by name."""
    table = TIMESHEETS.table
    stored = {}
    for name, (row, _) in SEEDED.items():
        new_id = conn.execute(table.insert().values(row).returning(table.c.id)).scalar_one()
        stored[name] = {**row, "id": new_id}
    return stored


def read(conn: Connection, query: Any) -> list[dict[str, Any]]:
    """Rows of ``query``; a read outside the test's own transactions ends its own."""
    inside = conn.in_transaction()
    rows = [dict(r) for r in conn.execute(query).mappings()]
    if not inside:
        conn.rollback()
    return rows


def live(conn: Connection, view: Any = TIMESHEETS) -> list[dict[str, Any]]:
    return read(conn, sa.select(view.table))


def removed_of(conn: Connection, view: Any = TIMESHEETS) -> list[dict[str, Any]]:
    table = removal.removed_table(view)
    return read(conn, sa.select(table).order_by(table.c.removed_id))


def by_id(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["id"]: r for r in rows}


def live_columns(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in removal.REMOVAL_COLUMNS}


def move_timesheets(conn: Connection, run_id: int) -> int:
    keep = keep_table(conn, TIMESHEETS, [r for r, kept in SEEDED.values() if kept] + ALSO_IN_SOURCE)
    return removal.move_out(
        conn,
        TIMESHEETS,
        keep,
        column="TS-Date",
        low=LOW,
        high=HIGH,
        run_id=run_id,
        reason=REASON,
    )


def test_move_out_moves_what_the_source_lacks_in_its_range(conn: Connection) -> None:
    with conn.begin():
        run_id = a_run(conn, "timesheets")
        stored = seed_timesheets(conn)
        assert removal.rows_in_range(conn, TIMESHEETS, "TS-Date", LOW, HIGH) == 6
        moved = move_timesheets(conn, run_id)

    assert moved == len(MOVED) == 4
    left = by_id(live(conn))
    assert set(left) == {stored[n]["id"] for n in stored if n not in MOVED}
    for name in set(stored) - MOVED:  # untouched, value for value
        assert left[stored[name]["id"]] == stored[name]
    out = removed_of(conn)
    assert {r["id"] for r in out} == {stored[n]["id"] for n in MOVED}
    for row in out:
        # Equal in every column to what was live, with the run, the time and the reason.
        name = next(n for n in MOVED if stored[n]["id"] == row["id"])
        assert live_columns(row) == stored[name]
        assert (row["removed_run_id"], row["removed_reason"]) == (run_id, REASON)
        assert isinstance(row["removed_at"], datetime) and row["removed_at"].tzinfo is None
    assert removal.rows_in_range(conn, TIMESHEETS, "TS-Date", LOW, HIGH) == 2


def test_a_source_carrying_everything_moves_nothing(conn: Connection) -> None:
    with conn.begin():
        run_id = a_run(conn, "timesheets")
        seed_timesheets(conn)
        keep = keep_table(conn, TIMESHEETS, [r for r, _ in SEEDED.values()])
        moved = removal.move_out(
            conn, TIMESHEETS, keep, column="TS-Date", low=LOW, high=HIGH, run_id=run_id, reason="x"
        )
    assert moved == 0 and len(live(conn)) == len(SEEDED) and removed_of(conn) == []


def test_restore_brings_rows_back_but_never_over_a_live_key(conn: Connection) -> None:
    with conn.begin():
        run_id = a_run(conn, "timesheets")
        stored = seed_timesheets(conn)
        move_timesheets(conn, run_id)
    # Loaded again since: one entry without a ticket, one with (other values, new ids).
    again = {
        name: {**stored[name], "TS-Hours": Decimal("7.5")}
        for name in ("source has a ticket, row none", "gone")
    }
    with conn.begin():
        table = TIMESHEETS.table
        for name, row in again.items():
            values = {k: v for k, v in row.items() if k != "id"}
            again[name]["id"] = conn.execute(
                table.insert().values(values).returning(table.c.id)
            ).scalar_one()

    with conn.begin():
        preview = removal.restore_preview(conn, run_id)
    assert preview == {"timesheets": removal.RestoreResult("timesheets", 2, 2)}
    with conn.begin():
        result = removal.restore(conn, run_id)
    assert result == preview

    left = by_id(live(conn))
    for name in ("source has no ticket, row one", "first moment of the range"):
        assert left[stored[name]["id"]] == stored[name]  # back under its own id, as it was
    for name, row in again.items():
        assert left[row["id"]] == row  # the live row is untouched
        assert stored[name]["id"] not in left
    still = removed_of(conn)
    assert {r["id"] for r in still} == {stored[n]["id"] for n in again}
    assert len(left) == len(SEEDED) - 2 + 2

    with conn.begin():
        assert removal.restore(conn, run_id) == {
            "timesheets": removal.RestoreResult("timesheets", 0, 2)
        }
        assert removal.restore(conn, run_id + 1000) == {}


@pytest.mark.parametrize("view", [TICKETS, COMMENTS], ids=lambda v: v.name)
def test_tickets_and_comments_move_by_their_key_and_come_back(conn: Connection, view: Any) -> None:
    key = view.key[0]
    column = "TKT-Created Time" if view is TICKETS else "created_time"
    text = "TKT-Title" if view is TICKETS else "comment_text"
    rows = [{key: n, column: datetime(2025, 3, n), text: f"number {n}"} for n in range(1, 7)]
    with conn.begin():
        run_id = a_run(conn, view.name)
        conn.execute(view.table.insert(), rows)
        keep = keep_table(conn, view, [rows[0], rows[3]])
        moved = removal.move_out(
            conn,
            view,
            keep,
            column=column,
            low=datetime(2025, 3, 1),
            high=datetime(2025, 3, 5),
            run_id=run_id,
            reason="gone",
        )
    assert moved == 3  # 2, 3 and 5; 6 is outside the range
    assert sorted(r[key] for r in live(conn, view)) == [1, 4, 6]
    with conn.begin():
        listed = removal.removed_rows(conn, None)
    assert [(r["view"], r["key"]) for r in listed] == [(view.name, {key: n}) for n in (2, 3, 5)]
    assert listed[0]["row"][text] == "number 2"
    with conn.begin():
        assert removal.restore(conn, run_id)[view.name] == removal.RestoreResult(view.name, 3, 0)
    assert sorted(r[key] for r in live(conn, view)) == list(range(1, 7))
    assert removed_of(conn, view) == []


def test_removed_rows_lists_a_run_newest_by_default(conn: Connection) -> None:
    with conn.begin():
        first = a_run(conn, "timesheets")
        stored = seed_timesheets(conn)
        move_timesheets(conn, first)
        ticket_run = a_run(conn, "tickets")
        conn.execute(TICKETS.table.insert(), [{"TKT-Ticket ID": 9, "TKT-Created Time": LOW}])
        removal.move_out(
            conn,
            TICKETS,
            keep_table(conn, TICKETS, []),
            column="TKT-Created Time",
            low=LOW,
            high=HIGH,
            run_id=ticket_run,
            reason="r",
        )
    conn.begin()
    assert [r["run_id"] for r in removal.removed_rows(conn, None)] == [ticket_run]
    of_first = removal.removed_rows(conn, first)
    assert len(of_first) == 4 and {r["view"] for r in of_first} == {"timesheets"}
    gone = next(r for r in of_first if r["row"]["id"] == stored["gone"]["id"])
    assert gone["key"] == {k: stored["gone"][k] for k in KEY}
    assert gone["reason"] == REASON and gone["removed_at"] is not None
    assert len(removal.removed_rows(conn, first, limit=2)) == 2
    assert removal.removed_rows(conn, None, view="timesheets")[0]["run_id"] == first
    assert removal.removed_rows(conn, first, view="comments") == []
    assert removal.run_views(conn, first) == ["timesheets"]


# --- the migration ------------------------------------------------------------------------

OLD_FRESHNESS = ["view_name", "last_loaded", "age", "latest_data_date", "total_records"]
NEW_FRESHNESS = [*OLD_FRESHNESS, "last_removal_run_id", "last_removal_at", "last_removal_rows"]


def freshness(conn: Connection) -> list[dict[str, Any]]:
    table = (
        "servicedesk.v_data_freshness" if conn.dialect.name == "postgresql" else "v_data_freshness"
    )
    return [dict(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table}").mappings()]  # noqa: S608


def columns_of(engine: Engine, table: str) -> list[str]:
    schema = SCHEMA if engine.dialect.name == "postgresql" else None
    with engine.connect() as conn:
        return [c["name"] for c in sa.inspect(conn).get_columns(table, schema=schema)]


def view_definition(engine: Engine) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return str(
                conn.exec_driver_sql(
                    "SELECT pg_get_viewdef('servicedesk.v_data_freshness'::regclass)"
                ).scalar()
            )
        return str(
            conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'v_data_freshness'"
            ).scalar()
        )


def test_v_data_freshness_shows_the_last_committed_removal(conn: Connection) -> None:
    with conn.begin():
        a_run(conn, "timesheets", removed=3)
        latest = a_run(conn, "timesheets", removed=5)
        a_run(conn, "timesheets")  # removed nothing: the last removal stays
        failed = runs.open_run(conn, "comments", "test")  # rolled back: never removed
        conn.execute(
            sa.update(runs.EtlRun)
            .where(runs.EtlRun.id == failed)
            .values(load_status="failed", removed=9)
        )
    with conn.begin():
        shown = freshness(conn)
    assert list(shown[0]) == NEW_FRESHNESS
    by_view = {r["view_name"]: r for r in shown}
    assert by_view["timesheets"]["last_removal_run_id"] == latest
    assert by_view["timesheets"]["last_removal_rows"] == 5
    assert by_view["timesheets"]["last_removal_at"] is not None
    assert by_view["comments"]["last_removal_run_id"] is None
    assert by_view["tickets"]["last_removal_rows"] is None


def test_the_migration_up_and_down(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        migrate.upgrade(engine, "0005_canonical_times")
        before = view_definition(engine)
        etl_before = columns_of(engine, "etl_metadata")
        with engine.begin() as conn:
            conn.execute(
                runs.EtlRun.__table__.insert().values(view_name="timesheets", load_status="success")
            )
        migrate.upgrade(engine, "head")
        assert columns_of(engine, "etl_metadata") == [*etl_before, "stale", "removed"]
        with engine.connect() as conn:
            assert conn.execute(sa.select(runs.EtlRun.stale, runs.EtlRun.removed)).one() == (0, 0)
            assert list(freshness(conn)[0]) == NEW_FRESHNESS
        for view in (TICKETS, TIMESHEETS, COMMENTS):
            assert columns_of(engine, f"{view.name}_removed") == [
                *(c.name for c in view.table.columns),
                *removal.REMOVAL_COLUMNS,
            ]
        with engine.begin() as conn:  # no key of the live table: one key twice
            row = {
                "TKT-Ticket ID": 1,
                "removed_run_id": 1,
                "removed_at": LOW,
                "removed_reason": "r",
            }
            conn.execute(removal.removed_table(TICKETS).insert(), [row, row])

        migrate.downgrade(engine, "0005_canonical_times")
        assert view_definition(engine) == before
        assert columns_of(engine, "etl_metadata") == etl_before
        with engine.connect() as conn:
            assert list(freshness(conn)[0]) == OLD_FRESHNESS
            tables = sa.inspect(conn).get_table_names(
                schema=removal.removed_table(TICKETS).schema
                if engine.dialect.name == "postgresql"
                else None
            )
        assert not {"tickets_removed", "timesheets_removed", "comments_removed"} & set(tables)
        migrate.upgrade(engine, "head")
        assert migrate.state(engine) == "head"
    finally:
        engine.dispose()


# --- the commands ---------------------------------------------------------------------------

runner = CliRunner()


def otc(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def moved(db_url: str) -> Iterator[tuple[str, int, dict[str, dict[str, Any]]]]:
    """A database where a timesheets run moved 4 rows out: (url, run id, seeded rows)."""
    engine = make_engine(db_url)
    with engine.connect() as conn, conn.begin():
        run_id = a_run(conn, "timesheets", removed=len(MOVED))
        stored = seed_timesheets(conn)
        move_timesheets(conn, run_id)
    engine.dispose()
    yield db_url, run_id, stored


def test_otc_removed_lists_the_rows(moved: tuple[str, int, Any]) -> None:
    url, run_id, stored = moved
    result = otc("removed", "--database-url", url, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {"database", "run_id", "removed"} and document["run_id"] == run_id
    assert len(document["removed"]) == 4
    first = document["removed"][0]
    assert set(first) == {"view", "run_id", "removed_id", "removed_at", "reason", "key", "row"}
    assert set(first["key"]) == set(KEY) and first["row"]["TS-Hours"] == 1.25
    assert first["removed_at"].endswith("Z")

    text = otc(
        "removed",
        "--run",
        str(run_id),
        "--view",
        "timesheets",
        "--limit",
        "2",
        "--database-url",
        url,
    )
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert len(lines) == 3 and REASON in lines[0] and "'TS-Crm ID'" not in lines[0]
    assert f"otc removed restore --run {run_id}" in lines[-1]
    assert otc("removed", "--view", "comments", "--database-url", url).stdout == "no removed rows\n"


@pytest.mark.parametrize(
    "args", [["removed"], ["removed", "restore", "--run", "999"]], ids=" ".join
)
def test_a_run_that_does_not_exist_is_exit_2(moved: tuple[str, int, Any], args: list[str]) -> None:
    url = moved[0]
    result = (
        otc(*args, "--run", "999", "--database-url", url, "--json")
        if args == ["removed"]
        else otc(*args, "--database-url", url, "--json")
    )
    assert result.exit_code == 2, result.output
    assert (
        json.loads(result.stdout)["error"] == "there is no run 999; see `otc runs` for the run ids"
    )


@pytest.mark.parametrize("args", [["removed"], ["removed", "restore", "--run", "1", "--dry-run"]])
def test_removed_never_creates_a_database(tmp_path: Path, args: list[str]) -> None:
    typo = tmp_path / "typo.db"
    result = otc(*args, "--database-url", f"sqlite:///{typo}")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: there is no database at {typo}")
    assert list(tmp_path.iterdir()) == []


def test_otc_removed_restore(moved: tuple[str, int, Any]) -> None:
    url, run_id, stored = moved
    dry = otc("removed", "restore", "--run", str(run_id), "--dry-run", "--database-url", url)
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [
        "timesheets: would restore 4, would keep 0",
        "dry run: nothing was changed",
    ]
    as_json = otc(
        "removed", "restore", "--run", str(run_id), "--dry-run", "--json", "--database-url", url
    )
    assert json.loads(as_json.stdout)["views"] == [{"view": "timesheets", "restored": 4, "kept": 0}]
    assert len(json.loads(otc("removed", "--database-url", url, "--json").stdout)["removed"]) == 4

    done = otc("removed", "restore", "--run", str(run_id), "--json", "--database-url", url)
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    assert document["dry_run"] is False and document["run_id"] == run_id
    assert document["views"] == [{"view": "timesheets", "restored": 4, "kept": 0}]
    engine = make_engine(url)
    with engine.connect() as conn:
        assert by_id(live(conn)) == {row["id"]: row for row in stored.values()}
    engine.dispose()
    again = otc("removed", "restore", "--run", str(run_id), "--database-url", url)
    assert again.exit_code == 0 and "has no removed rows left" in again.stdout


def test_restore_waits_for_no_load(moved: tuple[str, int, Any]) -> None:
    """A load holding the view: the restore is refused for now (75) and changes nothing."""
    url, run_id, _ = moved
    engine = make_engine(url)
    with runs.view_lock(engine, "timesheets"):
        result = otc("removed", "restore", "--run", str(run_id), "--database-url", url)
    engine.dispose()
    assert result.exit_code == 75, result.output
    assert "another load of timesheets is running" in result.stderr
    assert len(json.loads(otc("removed", "--database-url", url, "--json").stdout)["removed"]) == 4


def test_runs_and_status_show_the_counts_and_the_last_removal(moved: tuple[str, int, Any]) -> None:
    url, run_id, _ = moved
    history = json.loads(otc("runs", "--database-url", url, "--json").stdout)["runs"]
    assert (history[0]["stale"], history[0]["removed"]) == (0, 4)
    assert "stale 0  rem 4" in otc("runs", "--database-url", url).stdout
    views = {
        v["view"]: v
        for v in json.loads(otc("status", "--database-url", url, "--json").stdout)["views"]
    }
    assert views["timesheets"]["last_removal_run_id"] == run_id
    assert views["timesheets"]["last_removal_rows"] == 4
    assert views["timesheets"]["last_removal_at"].endswith("Z")
    assert views["tickets"]["last_removal_run_id"] is None
    table = otc("status", "--database-url", url).stdout
    assert max(len(line) for line in table.splitlines()[1:]) <= 80
    said = " ".join(table.split())  # the line may wrap at 80 columns
    assert "timesheets: last removal 4 rows at " in said
    assert f"UTC (`otc removed --run {run_id}`)" in said
