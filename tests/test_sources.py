"""File sources: every envelope and format, source positions, and every bad-file case."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import xlsxwriter

from otc_pipeline.errors import SourceError
from otc_pipeline.sources import files
from otc_pipeline.sources.files import EXTRA_CELLS_KEY, read_file, read_header


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def records(path: Path) -> list[tuple[int, Any]]:
    return list(read_file(path))


# --- JSON ------------------------------------------------------------------------------

RECORDS_JSON = '[{"TS-Hours": 1.5, "n": 1}, {"TS-Hours": "1,5", "n": 2}, {"n": 3}]'


@pytest.mark.parametrize(
    "body",
    [
        '{"message": {"data": %s}}',
        '{"data": %s}',
        "%s",
        # Other keys around the array, in any order, do not matter.
        '{"status": "ok", "message": {"count": 3, "data": %s, "page": 1}}',
        '{"meta": {"data": "not this one"}, "data": %s}',
    ],
)
def test_json_envelopes(tmp_path: Path, body: str) -> None:
    path = write(tmp_path / "timesheets.json", body % RECORDS_JSON)
    assert records(path) == [
        (1, {"TS-Hours": Decimal("1.5"), "n": 1}),
        (2, {"TS-Hours": "1,5", "n": 2}),
        (3, {"n": 3}),
    ]


def test_json_with_bom_and_leading_whitespace(tmp_path: Path) -> None:
    path = write(tmp_path / "t.json", b'\xef\xbb\xbf \n {"data": [{"a": 1}]}')
    assert records(path) == [(1, {"a": 1})]


def test_json_item_that_is_not_an_object_is_yielded_for_parse_to_reject(tmp_path: Path) -> None:
    path = write(tmp_path / "t.json", '[{"a": 1}, 7, "x"]')
    assert records(path) == [(1, {"a": 1}), (2, 7), (3, "x")]


def test_json_empty_data_array_yields_nothing(tmp_path: Path) -> None:
    assert records(write(tmp_path / "t.json", '{"message": {"data": []}}')) == []


def test_json_streams_lazily(tmp_path: Path) -> None:
    # Records before a truncation arrive before the error: nothing is read up front.
    path = write(tmp_path / "tickets.json", '{"data": [{"a": 1}, {"a": 2}, {"a": ')
    rows = read_file(path)
    assert next(rows) == (1, {"a": 1})
    assert next(rows) == (2, {"a": 2})
    with pytest.raises(SourceError, match="truncated or malformed"):
        next(rows)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"data": [{"a": 1}, {"a": 2', "truncated or malformed"),
        ('[{"a": 1}, {"a": }]', "truncated or malformed"),
        ('[{"a": 1}] trailing', "truncated or malformed"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary file"),
        (b"PK\x03\x04\x14\x00\x06\x00", "not an OTC JSON export"),
        ("<html><body>Login</body></html>", "not an OTC JSON export"),
        ('"just a string"', "not an OTC JSON export"),
        ('{"message": "Unauthorized"}', "no 'message.data' or 'data' list"),
        ('{"data": null}', "no 'message.data' or 'data' list"),
    ],
)
def test_bad_json_names_the_file(tmp_path: Path, content: str | bytes, expected: str) -> None:
    path = write(tmp_path / "tickets.json", content)
    with pytest.raises(SourceError, match=expected) as info:
        records(path)
    assert str(path) in str(info.value)


def test_truncated_json_says_how_far_it_got(tmp_path: Path) -> None:
    path = write(tmp_path / "tickets.json", '{"data": [{"a": 1}, {"a": 2')
    with pytest.raises(SourceError, match=r"of 27 bytes.*re-export"):
        records(path)


# --- empty, missing, unknown -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("t.json", b""),
        ("t.json", b"  \n\t\r\n"),
        ("t.csv", b""),
        ("t.csv", b"  \n\t\r\n"),
        ("t.xlsx", b""),  # a zero-byte download; whitespace is no workbook at all
    ],
)
def test_empty_file_yields_nothing(tmp_path: Path, name: str, content: bytes) -> None:
    assert records(write(tmp_path / name, content)) == []


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "tickets.json"
    with pytest.raises(SourceError, match="does not exist") as info:
        read_file(path)
    assert str(path) in str(info.value)


def test_folder_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "tickets.json"
    folder.mkdir()
    with pytest.raises(SourceError, match="is a folder"):
        read_file(folder)


@pytest.mark.parametrize("name", ["tickets.txt", "tickets", "tickets.xls"])
def test_unknown_suffix(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "[]")
    with pytest.raises(SourceError, match=r"\.json, \.csv, \.xlsx") as info:
        read_file(path)
    assert str(path) in str(info.value)


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    assert records(write(tmp_path / "T.JSON", '[{"a": 1}]')) == [(1, {"a": 1})]


# --- CSV -------------------------------------------------------------------------------


def test_csv_positions_are_physical_start_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.csv",
        'id,text\n1,plain\n\n2,"two\nlines"\n3,after\r\n4,"x, ""quoted"""\n',
    )
    assert records(path) == [
        (2, {"id": "1", "text": "plain"}),
        (4, {"id": "2", "text": "two\nlines"}),
        (6, {"id": "3", "text": "after"}),
        (7, {"id": "4", "text": 'x, "quoted"'}),
    ]


def test_csv_bom_is_dropped_from_the_first_field_name(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "\ufeffTKT-Ticket ID,TKT-Title\n7,Hello\n".encode())
    assert records(path) == [(2, {"TKT-Ticket ID": "7", "TKT-Title": "Hello"})]
    assert read_header(path) == ["TKT-Ticket ID", "TKT-Title"]


def test_csv_short_and_long_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "a,b\n1\n1,2,3,4\n")
    assert records(path) == [
        (2, {"a": "1", "b": None}),
        (3, {"a": "1", "b": "2", EXTRA_CELLS_KEY: ["3", "4"]}),
    ]


def test_csv_blank_and_repeated_header_names_keep_their_cells(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "a,,a\n1,2,3\n")
    assert records(path) == [(2, {"a": "1", "(column 2)": "2", "a (column 3)": "3"})]


def test_csv_header_only_yields_nothing(tmp_path: Path) -> None:
    assert records(write(tmp_path / "t.csv", "a,b\n")) == []


def test_csv_long_field(tmp_path: Path) -> None:
    text = "x" * 1_000_000  # over csv's 128 KiB default field limit
    path = write(tmp_path / "t.csv", f'a,b\n1,"{text}"\n')
    assert records(path) == [(2, {"a": "1", "b": text})]


def test_csv_broken_quote_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "comments.csv", 'a,b\n1,ok\n2,"never closed\n3,x\n4,y\n')
    rows = read_file(path)
    assert next(rows) == (2, {"a": "1", "b": "ok"})
    with pytest.raises(SourceError, match="line 3") as info:
        next(rows)
    assert str(path) in str(info.value) and "quote" in str(info.value)


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", b"a,b\n1,caf\xe9\n")
    with pytest.raises(SourceError, match="not UTF-8") as info:
        records(path)
    assert str(path) in str(info.value)


# --- XLSX ------------------------------------------------------------------------------


@pytest.fixture(params=["read whole", "streamed"])
def xlsx_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each XLSX test runs with both readers: calamine (whole sheet) and openpyxl (streamed)."""
    if request.param == "streamed":
        monkeypatch.setattr(files, "XLSX_READ_WHOLE_MAX_BYTES", 0)
    return str(request.param)


def write_xlsx(path: Path, rows: list[list[object]], first_row: int = 0) -> Path:
    workbook = xlsxwriter.Workbook(str(path), {"default_date_format": "yyyy-mm-dd hh:mm"})
    sheet = workbook.add_worksheet()
    for offset, row in enumerate(rows):
        sheet.write_row(first_row + offset, 0, row)
    workbook.close()
    return path


def test_xlsx_typed_values_empty_cells_and_row_numbers(tmp_path: Path, xlsx_reader: str) -> None:
    path = write_xlsx(
        tmp_path / "timesheets.xlsx",
        [
            ["TS-User Username", "TS-Hours", "TS-Date", "TS-Billable", "TS-Crm ID"],
            ["djewell", 1.5, datetime(2025, 3, 4, 9, 15), True, 2400001],
            ["amason", "1,5", "04/03/2025", "", None],
            [None, None, None, None, None],
            ["bchen", None, None, False, 7],
        ],
    )
    assert read_header(path) == [
        "TS-User Username",
        "TS-Hours",
        "TS-Date",
        "TS-Billable",
        "TS-Crm ID",
    ]
    rows = records(path)
    assert [position for position, _ in rows] == [2, 3, 5]
    first, second, third = (record for _, record in rows)
    assert first == {
        "TS-User Username": "djewell",
        "TS-Hours": 1.5,
        "TS-Date": datetime(2025, 3, 4, 9, 15),
        "TS-Billable": True,
        "TS-Crm ID": 2400001,  # a whole number is an int from both readers
    }
    assert second == {
        "TS-User Username": "amason",
        "TS-Hours": "1,5",
        "TS-Date": "04/03/2025",
        "TS-Billable": None,
        "TS-Crm ID": None,
    }
    assert third["TS-Billable"] is False and third["TS-Hours"] is None


def test_xlsx_header_below_empty_rows_keeps_spreadsheet_row_numbers(
    tmp_path: Path, xlsx_reader: str
) -> None:
    path = write_xlsx(tmp_path / "t.xlsx", [["a", "b"], ["x", 1]], first_row=2)
    assert records(path) == [(4, {"a": "x", "b": 1})]


def test_xlsx_without_header_row(tmp_path: Path, xlsx_reader: str) -> None:
    path = write_xlsx(tmp_path / "t.xlsx", [[1, 2.5], [3, 4]])
    with pytest.raises(SourceError, match="header") as info:
        records(path)
    assert str(path) in str(info.value)


def test_xlsx_empty_sheet_has_no_header_row(tmp_path: Path, xlsx_reader: str) -> None:
    path = write_xlsx(tmp_path / "t.xlsx", [])
    with pytest.raises(SourceError, match="no header row") as info:
        records(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"not a zip at all", b"PK\x03\x04broken"])
def test_xlsx_that_cannot_be_opened(tmp_path: Path, content: bytes, xlsx_reader: str) -> None:
    path = write(tmp_path / "tickets.xlsx", content)
    with pytest.raises(SourceError, match="cannot be opened as an XLSX") as info:
        records(path)
    assert str(path) in str(info.value)


def test_read_header_is_none_for_json(tmp_path: Path) -> None:
    assert read_header(write(tmp_path / "t.json", "[]")) is None
