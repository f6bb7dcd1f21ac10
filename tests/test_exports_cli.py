"""Real exports through `otc`: what a load says about headers, dialects, encodings, sheets,
dates, folders and loads in which nothing loaded."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
import xlsxwriter
from typer.testing import CliRunner

from otc_pipeline.cli import app
from otc_pipeline.db import make_engine
from otc_pipeline.models import SCHEMA, Base
from otc_pipeline.sample import write_sample

runner = CliRunner()
DATA = Path(__file__).resolve().parent / "data"
TIMESHEETS = Base.metadata.tables[f"{SCHEMA}.timesheets"]
HEADER = "TS-User Username,TS-Date,TS-Time From,TS-Time To,TS-Crm ID,TS-Hours"


def otc(*args: str) -> object:
    return runner.invoke(app, [str(a) for a in args])


def count_rows(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(TIMESHEETS)).scalar() or 0)
    finally:
        engine.dispose()


def test_spaced_headers_are_taken_and_named_on_stderr(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'otc.db'}"
    path = tmp_path / "timesheets.csv"
    path.write_text(
        "TS-User Username,TS-Date,TS-Time From,TS-Crm ID,TS-Hours ,ts-time  to,TS-Other\n"
        "djewell,05/01/2026,7:00,1001,\"1,5\",8:30 AM,x\n",
        encoding="utf-8",
    )
    result = otc("load", "timesheets", "--from", path, "--database-url", url)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stdout
    warnings = result.stderr.strip().splitlines()
    assert warnings == [
        "warning: timesheets: fields read under their OTC names: 'TS-Hours ' as 'TS-Hours', "
        "'ts-time  to' as 'TS-Time To'",
        "warning: timesheets: unknown fields ignored: 'TS-Other'",
    ]
    engine = make_engine(url)
    with engine.connect() as conn:
        row = conn.execute(sa.select(TIMESHEETS)).one()._mapping
    engine.dispose()
    assert (float(row["TS-Hours"]), row["TS-Time From"], row["TS-Time To"]) == (1.5, "07:00", "08:30")

    again = otc("load", "timesheets", "--from", path, "--database-url", url, "--json")
    summary = json.loads(again.stdout)
    assert summary["warnings"][0].startswith("fields read under their OTC names: 'TS-Hours '")
    assert again.stderr == ""


def test_semicolons_are_sniffed_and_a_cp1252_file_names_its_true_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'otc.db'}"
    lines = [HEADER.replace(",", ";")]
    lines += [f"user{n};05/01/2026;07:{n:02d};;1;\"1,5\"" for n in range(40)]
    lines[36] = "zoë;05/01/2026;08:00;;1;2"  # line 37 of the file
    path = tmp_path / "timesheets.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("cp1252"))
    refused = otc("load", "timesheets", "--from", path, "--database-url", url)
    assert refused.exit_code == 1
    assert "line 37: not UTF-8 text (byte 0xeb)" in refused.stderr
    assert "--encoding cp1252" in refused.stderr

    loaded = otc("load", "timesheets", "--from", path, "--database-url", url, "--encoding", "cp1252")
    assert loaded.exit_code == 0, loaded.output
    assert count_rows(url) == 40
    engine = make_engine(url)
    with engine.connect() as conn:
        names = set(conn.execute(sa.select(TIMESHEETS.c["TS-User Username"])).scalars())
    engine.dispose()
    assert "zoë" in names

    unknown = otc("load", "timesheets", "--from", path, "--database-url", url, "--encoding", "nope")
    assert unknown.exit_code == 2 and "--encoding 'nope'" in unknown.stderr


def test_delimiter_forced(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'otc.db'}"
    path = tmp_path / "timesheets.csv"
    # A one-record file the sniffer would read as ',' ("1,5" holds the only comma).
    path.write_text(HEADER.replace(",", "|") + "\ndjewell|05/01/2026|07:00|08:00||1,5\n")
    result = otc("load", "timesheets", "--from", path, "--database-url", url, "--delimiter", "|")
    assert result.exit_code == 0, result.output
    assert count_rows(url) == 1


def write_book(path: Path, sheets: dict[str, list[list[object]]]) -> Path:
    workbook = xlsxwriter.Workbook(str(path))
    for name, rows in sheets.items():
        sheet = workbook.add_worksheet(name)
        for number, row in enumerate(rows):
            sheet.write_row(number, 0, row)
    workbook.close()
    return path


def test_xlsx_sheet_by_name_or_number_and_errors_that_name_sheet_and_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'otc.db'}"
    header = HEADER.split(",")
    data = [["djewell", "05/01/2026", "07:00", "08:00", 1001, 1]]
    path = write_book(
        tmp_path / "timesheets.xlsx",
        {
            "Summary": [["Timesheets, December"], [], ["Total hours", 1]],
            "Data": [["OTC export"], [], *[[] for _ in range(3)], header, *data],
            "Old": [header, ["ahughes", "06/01/2026", "09:00", "10:00", 1002, 1]],
        },
    )
    # Without --sheet: the first sheet whose header holds the key fields, below title rows.
    found = otc("load", "timesheets", "--from", path, "--database-url", url, "--json")
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["inserted"] == 1
    for choice in ("Old", "3", "old"):
        chosen = otc(
            "load", "timesheets", "--from", path, "--database-url", url, "--sheet", choice
        )
        assert chosen.exit_code == 0, chosen.output
    assert count_rows(url) == 2

    wrong = otc("load", "timesheets", "--from", path, "--database-url", url, "--sheet", "Summary")
    assert wrong.exit_code == 1
    assert "sheet 'Summary' row 1 holds 'Timesheets, December'" in wrong.stderr
    assert "the other sheets: 'Data', 'Old'" in wrong.stderr
    assert "--sheet NAME" in wrong.stderr
    missing = otc("load", "timesheets", "--from", path, "--database-url", url, "--sheet", "Nope")
    assert missing.exit_code == 1
    assert "no sheet 'Nope'; its sheets are 'Summary', 'Data', 'Old'" in missing.stderr

    tickets = otc("load", "tickets", "--from", path, "--database-url", url)
    assert tickets.exit_code == 1
    assert "no sheet has a header row holding 'TKT-Ticket ID' in rows 1–11" in tickets.stderr
    assert "sheet 'Summary' row 1 holds" in tickets.stderr
    assert "sheet 'Data' row 1 holds 'OTC export'" in tickets.stderr

    # Eleven title rows: the header is too far down to be taken for one.
    deep = write_book(tmp_path / "deep.xlsx", {"Data": [*[["title"]] * 11, header, *data]})
    refused = otc("load", "timesheets", "--from", deep, "--database-url", url)
    assert refused.exit_code == 1 and "in rows 1–11" in refused.stderr


def test_a_load_whose_every_record_is_rejected_fails(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "timesheets.csv"
    lines = [HEADER] + [f"djewell,05/01/2026,07:{n:02d},08:00,,abc" for n in range(12)]
    path.write_text("\n".join(lines) + "\n")
    result = otc("load", "timesheets", "--from", path, "--database-url", db_url)
    assert result.exit_code == 1, result.output
    assert "every one of the 12 records was rejected, nothing was loaded" in result.stderr
    assert "12 rejected: 'TS-Hours': value is not a number" in result.stdout
    assert count_rows(db_url) == 0
    as_json = otc("load", "timesheets", "--from", path, "--database-url", db_url, "--json")
    summary = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and summary["status"] == "failed"
    assert summary["reject_reasons"] == [
        {"field": "TS-Hours", "reason": "value is not a number", "count": 12}
    ]

    grouped = otc("rejects", "--summary", "--database-url", db_url, "--json")
    assert json.loads(grouped.stdout)["groups"] == [
        {
            "view": "timesheets",
            "run_id": summary["run_id"],
            "field": "TS-Hours",
            "reason": "value is not a number",
            "count": 12,
            "first_position": 2,
            "example_value": "abc",
        }
    ]
    text = otc("rejects", "--summary", "--database-url", db_url)
    assert text.stdout.strip() == (
        f"timesheets run {summary['run_id']}:      12 × 'TS-Hours': value is not a number "
        "(first at 2, e.g. 'abc')"
    )


def test_month_first_dates_fail_the_load_and_name_the_setting(db_url: str) -> None:
    source = DATA / "timesheets-libreoffice-semicolon-cp1252.csv"
    refused = otc("load", "timesheets", "--from", source, "--database-url", db_url, "--encoding", "cp1252")
    assert refused.exit_code == 1
    assert "reads as month-first" in refused.stderr and "--date-order mdy" in refused.stderr
    assert count_rows(db_url) == 0
    loaded = otc(
        "load", "timesheets", "--from", source, "--database-url", db_url,
        "--encoding", "cp1252", "--date-order", "mdy",
    )
    assert loaded.exit_code == 0, loaded.output
    assert count_rows(db_url) == 36


def test_folder_names_match_any_case_and_a_missing_view_is_named(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'otc.db'}"
    folder = tmp_path / "exports"
    write_sample(folder, tickets=20, timesheets=30, comments=0, fmt="csv", seed=4)
    (folder / "comments.csv").unlink()
    (folder / "tickets.csv").rename(folder / "Tickets.CSV")
    result = otc("load", "all", "--from", folder, "--database-url", url, "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(o["view"], o["status"]) for o in lines] == [
        ("tickets", "success"),
        ("timesheets", "success"),
        ("comments", "missing"),
    ]
    assert lines[0]["inserted"] == 20
    assert "holds no comments export" in lines[2]["warnings"][0]
    text = otc("load", "all", "--from", folder, "--database-url", url)
    assert f"warning: comments: {folder} holds no comments export" in text.stderr
    assert "comments" not in text.stdout


def test_sample_refuses_to_overwrite_exports_without_force(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "Timesheets.xlsx").write_bytes(b"a real export")
    refused = otc("sample", folder, "--tickets", "1", "--timesheets", "1", "--comments", "1")
    assert refused.exit_code == 2
    assert "already holds Timesheets.xlsx" in refused.stderr and "--force" in refused.stderr
    assert (folder / "Timesheets.xlsx").read_bytes() == b"a real export"
    assert sorted(p.name for p in folder.iterdir()) == ["Timesheets.xlsx"]
    forced = otc(
        "sample", folder, "--tickets", "1", "--timesheets", "1", "--comments", "1",
        "--format", "xlsx", "--force",
    )
    assert forced.exit_code == 0, forced.output
    assert (folder / "Timesheets.xlsx").read_bytes() != b"a real export"


def test_a_header_read_wrongly_says_how_it_was_read(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'otc.db'}"
    path = tmp_path / "timesheets.csv"
    path.write_text(HEADER.replace(",", ";") + "\ndjewell;05/01/2026;07:00;08:00;;1\n")
    result = otc("load", "timesheets", "--from", path, "--database-url", url, "--delimiter", ",")
    assert result.exit_code == 1
    assert "has no 'TS-User Username' field" in result.stderr
    assert "Its header read as comma-separated, utf-8 holds 'TS-User Username;TS-Date;" in (
        result.stderr
    )
    assert "give --delimiter or --encoding" in result.stderr
