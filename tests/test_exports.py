"""One entry, one row, from any real export: the same timesheets from every shape a tool
saves them in land as the same rows (load one, then the other: nothing inserted, every
row unchanged), compared field by field, on both databases.

The LibreOffice files are under tests/data (see its README for how each was made); the
other shapes are generated here from tests/data/timesheets.csv.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import datetime, time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import xlsxwriter

from otc_pipeline import pipeline
from otc_pipeline.models import SCHEMA, Base
from otc_pipeline.parse import DateTimeCoercer, coerce_time_of_day, load_timezone
from otc_pipeline.sources import files
from otc_pipeline.sources.files import ReadOptions

DATA = Path(__file__).resolve().parent / "data"
BASE = DATA / "timesheets.csv"
TIMESHEETS = Base.metadata.tables[f"{SCHEMA}.timesheets"]
COLUMNS = [c for c in TIMESHEETS.columns if c.name != "id"]
KEY = ("TS-User Username", "TS-Date", "TS-Time From", "TS-Crm ID")
DATE_FIELDS = ("TS-Date", "TS-Modified Time")
TIME_FIELDS = ("TS-Time From", "TS-Time To")


def base_records() -> list[dict[str, str]]:
    with BASE.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def stored(engine: sa.Engine) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Every timesheet row by its entry, all its values (the id aside)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*COLUMNS)).all()
    by_key = {tuple(r._mapping[k] for k in KEY): tuple(r) for r in rows}
    assert len(by_key) == len(rows)
    return by_key


def load(engine: sa.Engine, path: Path, **options: Any) -> pipeline.RunSummary:
    summary = pipeline.load_view(engine, "timesheets", path, options=ReadOptions(**options))
    assert summary.status in ("success", "partial"), summary.error
    return summary


# --- generated variants of tests/data/timesheets.csv -----------------------------------


def write_csv(
    path: Path,
    records: list[dict[str, Any]],
    *,
    delimiter: str = ",",
    encoding: str = "utf-8",
    header: Callable[[str], str] = str,
) -> Path:
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    fields = list(records[0])
    writer.writerow([header(f) for f in fields])
    for record in records:
        writer.writerow([record[f] for f in fields])
    path.write_bytes(out.getvalue().encode(encoding))
    return path


def h_mm(text: str, index: int) -> str:
    """07:00 as an h:mm CSV (7:00), a 12-hour one (7:00 PM) or a time cell (07:00:00)."""
    if not text:
        return text
    hour, minute = (int(part) for part in text.split(":"))
    shape = index % 3
    if shape == 0:
        return f"{hour}:{minute:02d}"
    if shape == 1:
        return f"{(hour % 12) or 12}:{minute:02d} {'PM' if hour >= 12 else 'AM'}"
    return f"{hour:02d}:{minute:02d}:00"


def spaced_header(name: str) -> str:
    """Headers as hand-edited sheets have them: stray spaces, other case, a BOM."""
    if name == "TS-Hours":
        return "TS-Hours "
    if name == "TS-Date":
        return "\u00a0ts-date"
    if name == "TS-Time From":
        return "TS-Time  From"
    return name


def variant_json(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "timesheets.json"
    path.write_text(json.dumps({"message": {"data": base_records()}}), encoding="utf-8")
    return path, {}


def variant_json_utf16(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """PowerShell's default: UTF-16 little-endian with a byte-order mark."""
    path = tmp_path / "timesheets.json"
    text = json.dumps({"message": {"data": base_records()}}, ensure_ascii=False)
    path.write_bytes(text.encode("utf-16"))  # Python's utf-16 writes the BOM, LE here
    return path, {}


def variant_clocks_and_headers(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    records = base_records()
    for index, record in enumerate(records):
        for name in TIME_FIELDS:
            record[name] = h_mm(record[name], index)
    return write_csv(tmp_path / "timesheets.csv", records, header=spaced_header), {}


def variant_tab_utf16(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    # Python's utf-16 codec writes the BOM, as Excel's "Unicode text" does.
    return write_csv(tmp_path / "t.csv", base_records(), delimiter="\t", encoding="utf-16"), {}


def variant_pipe_utf8_bom(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = write_csv(tmp_path / "t.csv", base_records(), delimiter="|", encoding="utf-8-sig")
    return path, {}


def variant_forced_semicolon_cp1252(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = write_csv(tmp_path / "t.csv", base_records(), delimiter=";", encoding="cp1252")
    return path, {"delimiter": ";", "encoding": "cp1252"}


def variant_xlsx_numbers(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """Dates as Excel serial numbers in plain numeric cells, times as fractions of a day."""
    dates = DateTimeCoercer(load_timezone("UTC"))
    path = tmp_path / "timesheets.xlsx"
    workbook = xlsxwriter.Workbook(str(path))
    sheet = workbook.add_worksheet("Export")
    records = base_records()
    fields = list(records[0])
    sheet.write_row(0, 0, fields)
    for row, record in enumerate(records, 1):
        for column, name in enumerate(fields):
            value: Any = record[name]
            if value and name in DATE_FIELDS:
                moment = dates(value)
                assert moment is not None
                value = (moment - datetime(1899, 12, 30)).total_seconds() / 86400
            elif value and name in TIME_FIELDS:
                canonical = coerce_time_of_day(value)
                assert canonical is not None
                value = time.fromisoformat(canonical)  # a time cell: a fraction of a day
            if isinstance(value, time):
                sheet.write_datetime(
                    row, column, value, workbook.add_format({"num_format": "hh:mm"})
                )
            elif isinstance(value, float):
                sheet.write_number(row, column, value)
            else:
                sheet.write_string(row, column, value) if value else None
    workbook.close()
    return path, {}


def libreoffice(name: str, **options: Any) -> Callable[[Path], tuple[Path, dict[str, Any]]]:
    return lambda tmp_path: (DATA / name, options)


VARIANTS: dict[str, Callable[[Path], tuple[Path, dict[str, Any]]]] = {
    "libreoffice-xlsx": libreoffice("timesheets-libreoffice.xlsx"),
    "libreoffice-semicolon-cp1252-csv": libreoffice(
        "timesheets-libreoffice-semicolon-cp1252.csv", encoding="cp1252", date_order="mdy"
    ),
    "libreoffice-sheet2-title-xlsx": libreoffice("timesheets-libreoffice-sheet2-title.xlsx"),
    "json": variant_json,
    "json-utf16": variant_json_utf16,
    "h:mm-12-hour-and-spaced-headers-csv": variant_clocks_and_headers,
    "tab-utf16-csv": variant_tab_utf16,
    "pipe-utf8-bom-csv": variant_pipe_utf8_bom,
    "forced-semicolon-cp1252-csv": variant_forced_semicolon_cp1252,
    "xlsx-serial-dates-and-time-fractions": variant_xlsx_numbers,
}


XLSX_VARIANTS = [v for v in VARIANTS if "xlsx" in v]
CASES = [(v, "calamine") for v in VARIANTS] + [(v, "openpyxl") for v in XLSX_VARIANTS]


@pytest.mark.parametrize(("variant", "xlsx_reader"), CASES)
def test_same_entries_from_every_shape_are_the_same_rows(
    engine: sa.Engine,
    tmp_path: Path,
    variant: str,
    xlsx_reader: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if xlsx_reader == "openpyxl":
        # The streaming reader, which large sheets take: the same values as calamine's.
        monkeypatch.setattr(files, "XLSX_READ_WHOLE_MAX_BYTES", 0)
    path, options = VARIANTS[variant](tmp_path)
    first = load(engine, BASE)
    assert first.rejected == 0 and first.inserted > 30
    rows = stored(engine)

    again = load(engine, path, **options)
    assert (again.inserted, again.updated, again.rejected) == (0, 0, 0), again
    assert again.unchanged + again.duplicates == again.fetched == first.fetched
    assert stored(engine) == rows  # field by field

    # And the other way round: that shape first, then the CSV.
    with engine.begin() as conn:
        conn.execute(TIMESHEETS.delete())
    load(engine, path, **options)
    assert stored(engine) == rows
    last = load(engine, BASE)
    assert (last.inserted, last.updated, last.rejected) == (0, 0, 0), last


def test_json_then_libreoffice_xlsx_then_libreoffice_csv_add_nothing(
    engine: sa.Engine, tmp_path: Path
) -> None:
    json_path, _ = variant_json(tmp_path)
    assert load(engine, json_path).inserted > 30
    rows = stored(engine)
    for name, options in (
        ("timesheets-libreoffice.xlsx", {}),
        ("timesheets-libreoffice-semicolon-cp1252.csv", {"encoding": "cp1252", "date_order": "mdy"}),
        ("timesheets-libreoffice-sheet2-title.xlsx", {}),
    ):
        summary = load(engine, DATA / name, **options)
        assert (summary.inserted, summary.updated, summary.rejected) == (0, 0, 0), name
    assert stored(engine) == rows


def test_a_broken_utf16_json_names_the_export_not_its_copy(tmp_path: Path) -> None:
    path = tmp_path / "timesheets.json"
    path.write_bytes('[{"TS-User Username": "djewell"'.encode("utf-16"))  # cut short
    with pytest.raises(files.SourceError) as caught:
        list(files.read_file(path))
    message = str(caught.value)
    assert message.startswith(f"{path} (read as UTF-16): JSON is truncated or malformed")
    assert "otc-utf16-" not in message
