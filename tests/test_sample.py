"""`otc sample`: realistic, deterministic synthetic exports that read back through the sources."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from otc_pipeline.cli import app
from otc_pipeline.errors import ConfigError
from otc_pipeline.sample import (
    PENDING_ASSIGNMENT,
    UNKNOWN_TIMESHEET_FIELD,
    SampleFormat,
    write_sample,
)
from otc_pipeline.sources.files import read_file
from otc_pipeline.views import COMMENTS, TICKETS, TIMESHEETS

COUNTS = {"tickets": 120, "timesheets": 900, "comments": 150}


def make(directory: Path, fmt: SampleFormat, seed: int = 1, **options: Any) -> dict[str, Path]:
    counts: dict[str, Any] = {**COUNTS, **options}
    return write_sample(directory, fmt=fmt, seed=seed, **counts)


def rows(path: Path) -> list[dict[str, Any]]:
    return [record for _, record in read_file(path)]


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_same_seed_same_bytes(tmp_path: Path, fmt: SampleFormat) -> None:
    first = make(tmp_path / "a", fmt, seed=7)
    second = make(tmp_path / "b", fmt, seed=7)
    other = make(tmp_path / "c", fmt, seed=8)
    for view in COUNTS:
        assert first[view].read_bytes() == second[view].read_bytes()
        assert first[view].read_bytes() != other[view].read_bytes()


def test_same_seed_same_xlsx(tmp_path: Path) -> None:
    first = make(tmp_path / "a", "xlsx", seed=7, timesheets=50)
    second = make(tmp_path / "b", "xlsx", seed=7, timesheets=50)
    assert first["timesheets"].read_bytes() == second["timesheets"].read_bytes()


def test_more_of_one_view_leaves_the_others_unchanged(tmp_path: Path) -> None:
    first = make(tmp_path / "a", "csv")
    second = make(tmp_path / "b", "csv", comments=10)
    assert first["timesheets"].read_bytes() == second["timesheets"].read_bytes()
    assert first["tickets"].read_bytes() == second["tickets"].read_bytes()


@pytest.mark.parametrize("fmt", ["json", "csv", "xlsx"])
def test_row_counts_and_field_names_read_back(tmp_path: Path, fmt: SampleFormat) -> None:
    written = make(tmp_path, fmt)
    assert {view: path.name for view, path in written.items()} == {
        view: f"{view}.{fmt}" for view in COUNTS
    }
    known = {
        "tickets": set(TICKETS.fields),
        "timesheets": set(TIMESHEETS.fields) | {UNKNOWN_TIMESHEET_FIELD},
        "comments": set(COMMENTS.fields),
    }
    for view, path in written.items():
        records = rows(path)
        assert len(records) == COUNTS[view]
        assert set().union(*records) == known[view], view


def test_zero_rows_is_a_valid_empty_export(tmp_path: Path) -> None:
    written = make(tmp_path, "json", tickets=0, timesheets=0, comments=0)
    assert all(rows(path) == [] for path in written.values())


def _as_text(value: Any) -> str:
    return "" if value is None else str(value)


@pytest.mark.parametrize("fmt", ["json", "csv", "xlsx"])
def test_the_mess_is_there(tmp_path: Path, fmt: SampleFormat) -> None:
    written = make(tmp_path, fmt)
    tickets = rows(written["tickets"])
    timesheets = rows(written["timesheets"])
    comments = rows(written["comments"])

    hours = [_as_text(r["TS-Hours"]) for r in timesheets]
    assert any(re.fullmatch(r"\d+,\d+", h) for h in hours), "no decimal comma"
    assert any(re.fullmatch(r"\d+\.\d+", h) for h in hours)

    times = [_as_text(r["TKT-Created Time"]) for r in tickets]
    times += [_as_text(r["TKTCT-Created Time"]) for r in comments]
    assert any(re.fullmatch(r"\d\d/\d\d/\d{4}", t) for t in times), "no day-first date"
    assert any(re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d", t) for t in times)
    assert any(t.endswith("Z") for t in times)
    assert any(t.endswith("+10:00") for t in times)
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", t) for t in times)
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", t) for t in times)

    assignees = {r["TKT-Assigned To User"] for r in tickets}
    assert PENDING_ASSIGNMENT in assignees and PENDING_ASSIGNMENT == " PendingAssignment"
    teams = {r["TKT-Team"] for r in tickets}
    assert {"Cloud - Infrastructure", "NOC"} <= teams
    assert {"Closed", "Incident Resolved"} <= {r["TKT-Status"] for r in tickets}
    assert {"Alert", "Incident", "Service Request"} <= {r["TKT-Category"] for r in tickets}

    booleans = {_as_text(r["TS-Billable"]) for r in timesheets}
    assert {"Yes", "No", "Y", "N", "true", "1", "0", ""} <= booleans

    ticket_ids = {int(float(r["TKT-Ticket ID"])) for r in tickets}
    crm = [r["TS-Crm ID"] for r in timesheets]
    assert any(c in (None, "") for c in crm), "no timesheet without a ticket"
    linked = [int(float(c)) for c in crm if c not in (None, "")]
    assert any(c in ticket_ids for c in linked) and any(c not in ticket_ids for c in linked)
    assert any(_as_text(r.get(UNKNOWN_TIMESHEET_FIELD)) for r in timesheets)


def test_users_have_one_consistent_full_name(tmp_path: Path) -> None:
    written = make(tmp_path, "csv", timesheets=5000)
    pairs = {(r["TS-User Username"], r["TS-User Full Name"]) for r in rows(written["timesheets"])}
    shorts = Counter(short for short, _ in pairs)
    fulls = Counter(full for _, full in pairs)
    assert max(shorts.values()) == 1 and max(fulls.values()) == 1
    assert 300 <= len(pairs) <= 350
    assert ("djewell", "Dion Jewell") in pairs


def _day(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).removesuffix("Z")
    if "/" in text:
        return datetime.strptime(text[:10], "%d/%m/%Y").date()
    return datetime.fromisoformat(text).date()


def _crm(value: Any) -> int | None:
    return None if value in (None, "") else int(float(value))


@pytest.mark.parametrize("fmt", ["json", "xlsx"])
def test_timesheet_keys_unique_except_a_small_share_of_duplicates(
    tmp_path: Path, fmt: SampleFormat
) -> None:
    written = make(tmp_path, fmt, timesheets=5000)
    # The key as the database sees it: the date parsed, the ticket an integer.
    keys = Counter(
        (r["TS-User Username"], _day(r["TS-Date"]), r["TS-Time From"], _crm(r["TS-Crm ID"]))
        for r in rows(written["timesheets"])
    )
    duplicates = sum(keys.values()) - len(keys)
    assert 10 <= duplicates <= 100  # about 1%


def test_valid_unless_bad_rows_are_asked_for(tmp_path: Path) -> None:
    clean = make(tmp_path / "clean", "csv", timesheets=2000)
    assert not any("not a date" in path.read_text(encoding="utf-8-sig") for path in clean.values())
    bad = make(tmp_path / "bad", "csv", timesheets=2000, bad_share=0.05)
    records = rows(bad["timesheets"])
    assert records[0]["TS-User Username"], "the first record always stays valid"
    broken = [
        r
        for r in records
        if r["TS-Date"] == "not a date" or r["TS-Hours"] == "abc" or not r["TS-User Username"]
    ]
    assert 40 <= len(broken) <= 160
    assert {r["TS-Date"] for r in broken} >= {"not a date"}


def test_bad_rows_in_json_lack_the_key_field(tmp_path: Path) -> None:
    written = make(tmp_path, "json", bad_share=0.2)
    assert any("TKT-Ticket ID" not in r for r in rows(written["tickets"]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fmt": "txt"}, "unknown sample format"),
        ({"tickets": -1}, "0 or more"),
        ({"bad_share": 1.5}, "between 0 and 1"),
        ({"fmt": "xlsx", "timesheets": 2_000_000}, "at most 1,048,575 rows"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {**COUNTS, "fmt": "json", "seed": 1, **options}
    with pytest.raises(ConfigError, match=message):
        write_sample(tmp_path, **arguments)


runner = CliRunner()


def test_cli_sample_writes_files_and_prints_counts(tmp_path: Path) -> None:
    target = tmp_path / "exports"
    result = runner.invoke(
        app,
        ["sample", str(target), "--tickets", "30", "--timesheets", "40", "--comments", "5"]
        + ["--format", "csv", "--seed", "4"],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{target / 'tickets.csv'}: 30 tickets",
        f"{target / 'timesheets.csv'}: 40 timesheets",
        f"{target / 'comments.csv'}: 5 comments",
    ]
    assert len(rows(target / "timesheets.csv")) == 40


def test_cli_sample_defaults(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sample", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "2,000 tickets" in result.stdout and "10,000 timesheets" in result.stdout
    assert "5,000 comments" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "comments.json",
        "tickets.json",
        "timesheets.json",
    ]


def test_cli_sample_rejects_unknown_format(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sample", str(tmp_path), "--format", "parquet"])
    assert result.exit_code == 2
    assert "Error: --format must be one of json, csv, xlsx" in result.output


def test_cli_sample_has_help() -> None:
    result = runner.invoke(app, ["sample", "--help"])
    assert result.exit_code == 0
    assert "synthetic OTC exports" in result.output
