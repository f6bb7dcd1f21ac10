"""`otc load` and friends through the CLI: exit codes, one-line errors, tables left as they were."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import xlsxwriter
from sqlalchemy import select
from typer.testing import CliRunner

from otc_pipeline.cli import app
from otc_pipeline.db import make_engine
from otc_pipeline.models import EtlReject, EtlRun, Ticket, Timesheet
from otc_pipeline.sample import write_sample

runner = CliRunner()


def otc(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    write_sample(folder, tickets=300, timesheets=1000, comments=400, fmt="json", seed=3)
    return folder


def snapshot(db_url: str) -> tuple[list[Any], list[Any]]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            tickets = [
                tuple(r) for r in conn.execute(select(Ticket.__table__).order_by(Ticket.ticket_id))
            ]
            sheets = [
                tuple(r) for r in conn.execute(select(Timesheet.__table__).order_by(Timesheet.id))
            ]
        return tickets, sheets
    finally:
        engine.dispose()


def test_load_all_then_status_runs_rejects(db_url: str, samples: Path) -> None:
    result = otc("load", "all", "--from", str(samples), "--database-url", db_url, "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["view"] for o in lines] == ["tickets", "timesheets", "comments"]
    for o in lines:
        assert set(o) >= {
            "view",
            "run_id",
            "status",
            "source",
            "fetched",
            "inserted",
            "updated",
            "unchanged",
            "duplicates",
            "rejected",
            "duration_s",
        }
        assert (
            o["fetched"]
            == o["inserted"] + o["updated"] + o["unchanged"] + o["duplicates"] + o["rejected"]
        )
        assert o["status"] == "success"
    assert lines[1]["duplicates"] > 0  # the sample carries in-file duplicate timesheets

    status = otc("status", "--database-url", db_url, "--json")
    assert status.exit_code == 0
    by_view = {v["view"]: v for v in json.loads(status.stdout)["views"]}
    assert by_view["tickets"]["rows"] == 300 and by_view["tickets"]["stale"] is False
    assert by_view["timesheets"]["last_status"] == "success"

    history = json.loads(
        otc("runs", "--database-url", db_url, "--json", "--view", "comments").stdout
    )["runs"]
    assert [r["view"] for r in history] == ["comments"]
    assert otc("rejects", "--database-url", db_url).stdout.strip() == "no rejected rows"
    text_status = otc("status", "--database-url", db_url).stdout
    assert "timesheets" in text_status and "STALE" not in text_status


def test_one_percent_bad_rows_load_the_rest_and_exit_3(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    write_sample(
        folder, tickets=1000, timesheets=10, comments=10, fmt="csv", seed=5, bad_share=0.01
    )
    result = otc(
        "load", "tickets", "--from", str(folder / "tickets.csv"), "--database-url", db_url, "--json"
    )
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "partial" and summary["rejected"] > 0
    assert summary["fetched"] == 1000
    engine = make_engine(db_url)
    with engine.connect() as conn:
        stored = conn.scalars(
            select(EtlReject.source_position).where(EtlReject.run_id == summary["run_id"])
        ).all()
        loaded = conn.scalar(select(Ticket.ticket_id).limit(1))
    engine.dispose()
    assert len(stored) == summary["rejected"] and loaded is not None
    text = otc("rejects", "--run", str(summary["run_id"]), "--database-url", db_url).stdout
    assert f"run {summary['run_id']} tickets position" in text


def _write_xlsx(path: Path, rows: list[list[Any]]) -> None:
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet()
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            sheet.write(r, c, value)
    book.close()


BAD_INPUTS = {
    "truncated.json": lambda p: p.write_text(
        '{"message": {"data": [{"TKT-Ticket ID": 1}, {"TKT-Tit'
    ),
    "malformed.json": lambda p: p.write_text('{"data": [{"TKT-Ticket ID": 1,, }]}'),
    "binary.json": lambda p: p.write_bytes(
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    ),
    "broken.csv": lambda p: p.write_text(
        'TKT-Ticket ID,TKT-Title\n1,"fine"\n2,"never closed\n3,x\n'
    ),
    "nokey.xlsx": lambda p: _write_xlsx(p, [["TKT-Title", "TKT-Status"], ["a", "Open"]]),
    "comments.json": lambda p: p.write_text(
        json.dumps([{"TKTCT-CommentID": 1, "TKTCT-TicketID": 2, "TKTCT-Comment": "hi"}])
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_one_error_line_exit_1_and_loses_nothing(
    db_url: str, samples: Path, tmp_path: Path, name: str
) -> None:
    assert otc("load", "all", "--from", str(samples), "--database-url", db_url).exit_code == 0
    before = snapshot(db_url)
    bad = tmp_path / name
    BAD_INPUTS[name](bad)
    result = otc("load", "tickets", "--from", str(bad), "--database-url", db_url)
    assert result.exit_code == 1, result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("Error: tickets: ")
    assert name in errors[0]
    assert "Traceback" not in result.output
    assert snapshot(db_url) == before
    engine = make_engine(db_url)
    with engine.connect() as conn:
        last = conn.execute(select(EtlRun).order_by(EtlRun.id.desc()).limit(1)).one()
    engine.dispose()
    assert last.load_status == "failed" and name in last.error_message


def test_file_of_another_view_names_it(db_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "comments.json"
    BAD_INPUTS["comments.json"](bad)
    result = otc("load", "tickets", "--from", str(bad), "--database-url", db_url)
    assert "looks like a comments export" in result.stderr


def test_empty_file_is_a_successful_load_of_nothing(db_url: str, tmp_path: Path) -> None:
    empty = tmp_path / "tickets.json"
    empty.write_text("")
    result = otc("load", "tickets", "--from", str(empty), "--database-url", db_url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fetched"] == 0


def test_missing_file_and_usage_errors(db_url: str, tmp_path: Path) -> None:
    missing = otc(
        "load", "tickets", "--from", str(tmp_path / "nope.json"), "--database-url", db_url
    )
    assert missing.exit_code == 2
    assert (
        missing.stderr.strip()
        == f"Error: {tmp_path / 'nope.json'} does not exist; give a file (.json, .csv, .xlsx) or a folder to --from"
    )
    unknown = otc("load", "widgets", "--from", str(tmp_path), "--database-url", db_url)
    assert unknown.exit_code == 2 and unknown.stderr.startswith("Error: unknown view 'widgets'")
    folder = otc("load", "tickets", "--from", str(tmp_path), "--database-url", db_url)
    assert folder.exit_code == 2 and "use `otc load all --from" in folder.stderr


def test_unreachable_database_is_one_line_without_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://otc:s3cret-pw@127.0.0.1:1/servicedesk"
    export = tmp_path / "tickets.json"
    export.write_text("[]")
    result = otc("load", "tickets", "--from", str(export), "--database-url", url)
    assert result.exit_code == 1  # a failure, not a usage mistake
    assert "s3cret-pw" not in result.output
    line = result.stderr.strip()
    assert line.startswith(
        "Error: cannot open database postgresql+psycopg2://otc:***@127.0.0.1:1/servicedesk"
    )
    assert len(line.splitlines()) == 1


def test_api_without_credentials_is_a_configuration_error(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTC_API_USER", raising=False)
    monkeypatch.delenv("OTC_API_PASSWORD", raising=False)
    result = otc("load", "all", "--database-url", db_url)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: OTC_API_USER and OTC_API_PASSWORD not set")
    assert snapshot(db_url) == ([], [])


def test_load_on_an_empty_database_creates_the_schema(empty_db_url: str, samples: Path) -> None:
    result = otc(
        "load", "tickets", "--from", str(samples / "tickets.json"), "--database-url", empty_db_url
    )
    assert result.exit_code == 0, result.output
    assert "tickets: success — 300 fetched: 300 inserted" in result.stdout
    current = otc("db", "current", "--database-url", empty_db_url)
    assert "head" in current.stdout


def test_load_refuses_a_database_behind_head(empty_db_url: str, samples: Path) -> None:
    assert (
        otc("db", "upgrade", "0002_timesheets_dedup", "--database-url", empty_db_url).exit_code == 0
    )
    result = otc(
        "load", "tickets", "--from", str(samples / "tickets.json"), "--database-url", empty_db_url
    )
    assert result.exit_code == 2
    assert "run `otc db upgrade`" in result.stderr


def test_load_refuses_a_legacy_database_not_yet_adopted(
    empty_db_url: str, samples: Path, dialect: str
) -> None:
    assert otc("db", "upgrade", "0001_baseline", "--database-url", empty_db_url).exit_code == 0
    engine = make_engine(empty_db_url)
    with engine.begin() as conn:  # what the old scripts left: the tables, no Alembic version
        table = "servicedesk.alembic_version" if dialect == "postgresql" else "alembic_version"
        conn.exec_driver_sql(f"DROP TABLE {table}")
    engine.dispose()
    result = otc(
        "load", "tickets", "--from", str(samples / "tickets.json"), "--database-url", empty_db_url
    )
    assert result.exit_code == 2
    assert "run `otc db adopt` first" in result.stderr


def test_dry_run_through_the_cli(db_url: str, samples: Path) -> None:
    result = otc(
        "load",
        "tickets",
        "--from",
        str(samples / "tickets.json"),
        "--database-url",
        db_url,
        "--dry-run",
    )
    assert result.exit_code == 0
    assert result.stdout.startswith("tickets: would load — 300 fetched: 300 inserted")
    assert snapshot(db_url) == ([], [])


def test_xlsx_history_export_loads(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "xlsx"
    write_sample(folder, tickets=200, timesheets=500, comments=100, fmt="xlsx", seed=9)
    result = otc("load", "all", "--from", str(folder), "--database-url", db_url, "--json")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["status"] for line in result.stdout.splitlines()] == ["success"] * 3


def test_json_summary_keys_come_in_the_documented_order(tmp_path: Path) -> None:
    """product.md's `--json` object: the run first, then the counts, then the duration."""
    paths = write_sample(tmp_path, tickets=5, timesheets=0, comments=0, fmt="json", seed=1)
    result = CliRunner().invoke(
        app,
        [
            "load",
            "tickets",
            "--from",
            str(paths["tickets"]),
            "--database-url",
            f"sqlite:///{tmp_path / 'otc.db'}",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.output.splitlines()[0])) == [
        "view",
        "run_id",
        "status",
        "source",
        "fetched",
        "inserted",
        "updated",
        "unchanged",
        "stale",
        "duplicates",
        "rejected",
        "removed",
        "duration_s",
        "database",
    ]
