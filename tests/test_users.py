"""user_lookup from timesheets: pairs added, manual rows untouched, conflicts left alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Connection, Engine, Table, delete, insert, select
from typer.testing import CliRunner

from otc_pipeline import pipeline, users
from otc_pipeline.cli import app
from otc_pipeline.db import make_engine
from otc_pipeline.models import EtlRun, Timesheet, UserLookup
from otc_pipeline.runs import utcnow

TS = cast(Table, Timesheet.__table__)
UL = cast(Table, UserLookup.__table__)


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def add_timesheets(conn: Connection, *pairs: tuple[str, str]) -> None:
    """One timesheet entry per pair, each with its own start time (a distinct entry key)."""
    day = datetime(2026, 1, 5)
    rows = [
        {
            "TS-User Username": short,
            "TS-User Full Name": full,
            "TS-Date": day,
            "TS-Time From": f"{8 + i // 4:02d}:{i % 4 * 15:02d}",
            "TS-Hours": 0.25,
            "TS-Crm ID": 1000 + i,
        }
        for i, (short, full) in enumerate(pairs)
    ]
    conn.execute(insert(TS), rows)


def add_user(conn: Connection, short: str, full: str, source: str | None, **extra: Any) -> None:
    values = {
        "short_username": short,
        "full_name": full,
        "source": source,
        "updated_at": datetime(2020, 1, 1),
        **extra,
    }
    conn.execute(insert(UL).values(**values))


def lookup(conn: Connection) -> dict[str, dict[str, Any]]:
    return {
        row["short_username"]: row for row in (dict(r._mapping) for r in conn.execute(select(UL)))
    }


def test_refresh_adds_timesheet_pairs_once(db: Engine) -> None:
    with db.begin() as conn:
        add_timesheets(
            conn,
            ("djewell", "Dion Jewell"),
            ("djewell", "Dion Jewell"),
            ("asmith", "Alice Smith"),
            ("bjones", "Bob Jones"),
        )
        result = users.refresh(conn)
        assert result == {"added": 3, "adopted": 0, "conflicts": 0, "warnings": []}
        rows = lookup(conn)
    assert {short: row["full_name"] for short, row in rows.items()} == {
        "djewell": "Dion Jewell",
        "asmith": "Alice Smith",
        "bjones": "Bob Jones",
    }
    assert {row["source"] for row in rows.values()} == {"auto_timesheet"}
    stamp = rows["djewell"]["updated_at"]
    assert abs(utcnow() - stamp) < timedelta(minutes=5)

    with db.begin() as conn:
        again = users.refresh(conn)
        assert again == {"added": 0, "adopted": 0, "conflicts": 0, "warnings": []}
        # Unchanged rows are not rewritten: the timestamp stays.
        assert lookup(conn)["djewell"]["updated_at"] == stamp


def test_manual_rows_are_never_changed(db: Engine) -> None:
    with db.begin() as conn:
        add_user(conn, "djewell", "Dion J. Jewell", "manual", email="dj@example.com", team="NOC")
        add_user(conn, "asmith", "Alice Smith", "manual", team="Cloud - Security")
        add_timesheets(conn, ("djewell", "Dion Jewell"), ("asmith", "Alice Smith"))
        before = lookup(conn)
        result = users.refresh(conn)
        after = lookup(conn)
    assert after == before
    # The manual row settles its names: no conflict, and no second row for the other spelling.
    assert result == {"added": 0, "adopted": 0, "conflicts": 0, "warnings": []}


def test_short_name_with_two_full_names_is_reported_not_written(db: Engine) -> None:
    with db.begin() as conn:
        add_timesheets(
            conn, ("jsmith", "John Smith"), ("jsmith", "Jon Smith"), ("bjones", "Bob Jones")
        )
        result = users.refresh(conn)
        rows = lookup(conn)
    assert set(rows) == {"bjones"}
    assert result["added"] == 1 and result["conflicts"] == 1
    first, summary = result["warnings"]
    assert first.startswith("user_lookup: short name 'jsmith' has 2 full names")
    assert "'John Smith' in 1 timesheet entries" in first and "'Jon Smith'" in first
    assert first.endswith("left as it was")
    assert "1 name conflicts" in summary and "otc users conflicts" in summary


@pytest.mark.parametrize("order", ["old spelling first", "new spelling first"])
def test_existing_row_is_not_overwritten_by_whichever_came_last(db: Engine, order: str) -> None:
    spellings = [("jsmith", "John Smith"), ("jsmith", "Jon Smith")]
    if order == "new spelling first":
        spellings.reverse()
    with db.begin() as conn:
        add_user(conn, "jsmith", "John Smith", "auto_timesheet")
        add_timesheets(conn, *spellings)
        result = users.refresh(conn)
        rows = lookup(conn)
    assert rows["jsmith"]["full_name"] == "John Smith"
    assert rows["jsmith"]["updated_at"] == datetime(2020, 1, 1)
    assert result["conflicts"] == 1
    assert "user_lookup (auto_timesheet)" in result["warnings"][0]


def test_full_name_with_two_short_names_is_reported(db: Engine) -> None:
    with db.begin() as conn:
        add_timesheets(conn, ("asmith", "Alice Smith"), ("alsmith", "Alice Smith"))
        result = users.refresh(conn)
        assert lookup(conn) == {}
        found = users.conflicts(conn)
    assert result["conflicts"] == 1
    assert result["warnings"][0].startswith(
        "user_lookup: full name 'Alice Smith' has 2 short names"
    )
    assert found == [
        {
            "kind": "full_name",
            "name": "Alice Smith",
            "pairs": [
                {
                    "short_username": "alsmith",
                    "full_name": "Alice Smith",
                    "timesheet_entries": 1,
                    "last_seen": datetime(2026, 1, 5),
                    "user_lookup_source": None,
                },
                {
                    "short_username": "asmith",
                    "full_name": "Alice Smith",
                    "timesheet_entries": 1,
                    "last_seen": datetime(2026, 1, 5),
                    "user_lookup_source": None,
                },
            ],
        }
    ]


def test_disagreeing_automatic_row_is_a_conflict_and_matching_one_is_adopted(
    db: Engine,
) -> None:
    with db.begin() as conn:
        # The old scripts' guesses: one wrong, one right, one of unknown origin.
        add_user(conn, "asmith", "Alice Smyth", "auto_etl")
        add_user(conn, "bjones", "Bob Jones", "auto_etl")
        add_user(conn, "cchen", "Chris Chen", None)
        add_timesheets(
            conn, ("asmith", "Alice Smith"), ("bjones", "Bob Jones"), ("cchen", "Chris Chen")
        )
        result = users.refresh(conn)
        rows = lookup(conn)
    assert rows["asmith"]["full_name"] == "Alice Smyth"
    assert rows["asmith"]["source"] == "auto_etl"
    assert rows["bjones"]["source"] == "auto_timesheet"
    assert rows["bjones"]["updated_at"] > datetime(2020, 1, 1)
    assert rows["cchen"]["source"] == "auto_timesheet"
    assert result["added"] == 0 and result["adopted"] == 2 and result["conflicts"] == 1
    assert "'Alice Smyth' in user_lookup (auto_etl)" in result["warnings"][0]


def test_a_manual_row_settles_a_conflict(db: Engine) -> None:
    with db.begin() as conn:
        add_timesheets(conn, ("jsmith", "John Smith"), ("jsmith", "Jon Smith"))
        assert users.refresh(conn)["conflicts"] == 1
        add_user(conn, "jsmith", "John Smith", "manual")
        assert users.refresh(conn) == {"added": 0, "adopted": 0, "conflicts": 0, "warnings": []}
        assert users.conflicts(conn) == []
        assert [r["full_name"] for r in users.list_users(conn)] == ["John Smith"]


def test_warnings_are_capped_with_a_count(db: Engine) -> None:
    pairs = []
    for i in range(15):
        pairs += [(f"user{i:02d}", f"User {i}"), (f"user{i:02d}", f"User {i} Other")]
    with db.begin() as conn:
        add_timesheets(conn, *pairs)
        result = users.refresh(conn)
    assert result["conflicts"] == 15
    assert len(result["warnings"]) == users.WARNING_LINES + 1
    assert result["warnings"][-1].startswith("user_lookup: 15 name conflicts (10 shown)")
    with db.begin() as conn:
        assert users.refresh_from_timesheets(conn) == result["warnings"]


def test_list_users_shape(db: Engine) -> None:
    with db.begin() as conn:
        add_user(conn, "zed", "Zed Zulu", "manual", email="z@example.com", team="NOC")
        add_timesheets(conn, ("amy", "Amy Adams"))
        users.refresh(conn)
        listed = users.list_users(conn)
    assert [(r["short_username"], r["full_name"], r["source"]) for r in listed] == [
        ("amy", "Amy Adams", "auto_timesheet"),
        ("zed", "Zed Zulu", "manual"),
    ]
    assert set(listed[0]) == {
        "id",
        "short_username",
        "full_name",
        "email",
        "team",
        "source",
        "updated_at",
    }


def _write_timesheets(path: Path, pairs: list[tuple[str, str]]) -> Path:
    records = [
        {
            "TS-User Username": short,
            "TS-User Full Name": full,
            "TS-Date": "2026-01-05",
            "TS-Time From": f"09:{i:02d}",
            "TS-Hours": "0,5",
            "TS-Crm ID": "",
        }
        for i, (short, full) in enumerate(pairs)
    ]
    path.write_text(json.dumps({"message": {"data": records}}), encoding="utf-8")
    return path


def test_timesheets_load_refreshes_user_lookup_and_reports_conflicts(
    db: Engine, tmp_path: Path
) -> None:
    source = _write_timesheets(
        tmp_path / "timesheets.json",
        [("djewell", "Dion Jewell"), ("jsmith", "John Smith"), ("jsmith", "Jon Smith")],
    )
    summary = pipeline.load_view(db, "timesheets", source)
    assert summary.status == "success"
    conflict_lines = [w for w in summary.warnings if w.startswith("user_lookup:")]
    assert len(conflict_lines) == 2
    assert "short name 'jsmith' has 2 full names" in conflict_lines[0]
    with db.connect() as conn:
        assert {r["short_username"] for r in users.list_users(conn)} == {"djewell"}
        stored = conn.execute(select(EtlRun.warnings).where(EtlRun.id == summary.run_id)).scalar()
    assert stored is not None and "short name 'jsmith'" in stored


def test_a_timesheets_load_that_writes_nothing_leaves_user_lookup_alone(
    db: Engine, tmp_path: Path
) -> None:
    source = _write_timesheets(
        tmp_path / "timesheets.json", [("djewell", "Dion Jewell"), ("amason", "Ann Mason")]
    )
    pipeline.load_view(db, "timesheets", source)
    with db.begin() as conn:
        conn.execute(delete(UserLookup).where(UserLookup.short_username == "amason"))
    again = pipeline.load_view(db, "timesheets", source)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    with db.connect() as conn:
        assert {r["short_username"] for r in users.list_users(conn)} == {"djewell"}
    # The next load that writes timesheet rows refreshes it again.
    changed = _write_timesheets(
        tmp_path / "changed.json", [("djewell", "Dion Jewell"), ("amason", "Ann Mason")]
    )
    records = json.loads(changed.read_text(encoding="utf-8"))
    records["message"]["data"][0]["TS-Description"] = "edited"
    changed.write_text(json.dumps(records), encoding="utf-8")
    assert pipeline.load_view(db, "timesheets", changed).updated == 1
    with db.connect() as conn:
        assert {r["short_username"] for r in users.list_users(conn)} == {"djewell", "amason"}


def test_cli_users_commands(db_url: str, db: Engine) -> None:
    with db.begin() as conn:
        add_timesheets(
            conn, ("djewell", "Dion Jewell"), ("jsmith", "John Smith"), ("jsmith", "Jon Smith")
        )
    runner = CliRunner()

    refreshed = runner.invoke(app, ["users", "refresh", "--database-url", db_url])
    assert refreshed.exit_code == 0, refreshed.output
    lines = refreshed.output.splitlines()
    assert lines[0] == (
        "user_lookup: 1 added, 0 adopted from other automatic sources, "
        "1 conflicts left as they were"
    )
    assert lines[1].startswith("  warning: user_lookup: short name 'jsmith' has 2 full names")

    listed = runner.invoke(app, ["users", "list", "--json", "--database-url", db_url])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)["users"]
    assert [(r["short_username"], r["full_name"], r["source"]) for r in rows] == [
        ("djewell", "Dion Jewell", "auto_timesheet")
    ]
    text_list = runner.invoke(app, ["users", "list", "--database-url", db_url])
    assert text_list.output.split() == ["djewell", "Dion", "Jewell", "-", "auto_timesheet"]

    found = runner.invoke(app, ["users", "conflicts", "--json", "--database-url", db_url])
    assert found.exit_code == 0, found.output
    assert [(c["kind"], c["name"]) for c in json.loads(found.output)["conflicts"]] == [
        ("short_username", "jsmith")
    ]
    plain = runner.invoke(app, ["users", "conflicts", "--database-url", db_url])
    assert plain.output.startswith("user_lookup: short name 'jsmith' has 2 full names")


def test_cli_users_on_an_empty_database_says_what_to_do(empty_db_url: str) -> None:
    result = CliRunner().invoke(app, ["users", "list", "--database-url", empty_db_url])
    assert result.exit_code != 0
    assert "Error:" in result.output and "otc load" in result.output
