"""Read OTC exports from files (JSON, CSV, XLSX), one raw record at a time.

Every reader yields ``(source position, raw record)`` and never holds a whole
export in memory. File-level problems (missing file, unknown suffix, not JSON,
no header row, a broken CSV quote, truncated JSON) raise
:class:`~otc_pipeline.errors.SourceError` naming the file; problems with one
record are left to the parse stage, which rejects that record.

A CSV or XLSX row whose cells are all blank is not a record and is skipped.

Problems visible at the start of a file are raised when :func:`read_file` is
called; problems further in (truncation, a broken quote on line 90,000) are
raised while iterating, so the caller must treat the iteration as fallible and
roll back.

No database imports here.
"""

from __future__ import annotations

import csv
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, cast

import ijson

from ..errors import SourceError

SourceRecord = tuple[int, dict[str, Any]]
"""(source position, raw record as read).

Positions: JSON = 1-based index of the record in the data array; CSV = physical
line number where the record starts (the header is line 1); XLSX = spreadsheet
row number (the header is row 1).

A JSON array item that is not an object is yielded as it is (so the type is a
promise only for CSV and XLSX): the parse stage rejects it as one bad record
instead of failing the whole file.
"""

SUPPORTED_SUFFIXES = (".json", ".csv", ".xlsx")

# Cells that spill past the header in a CSV row (csv.DictReader's restkey idea):
# kept, not dropped, so the reject or warning can show them.
EXTRA_CELLS_KEY = "__extra__"

# Long ticket descriptions exceed csv's 128 KiB default; the cap still stops a
# broken quote from swallowing a 400 MB file into one field before failing.
_CSV_FIELD_LIMIT = 16 * 1024 * 1024

# The JSON paths the OTC API uses for the record array, outermost envelope first.
_JSON_ARRAY_PATHS = {"message.data": "message.data.item", "data": "data.item", "": "item"}

_UTF8_BOM = b"\xef\xbb\xbf"
_JSON_WHITESPACE = b" \t\r\n"


def read_file(path: Path) -> Iterator[SourceRecord]:
    """Yield every record of an OTC export file with its source position.

    The reader is chosen by suffix: ``.json``, ``.csv`` or ``.xlsx``. An empty
    file (no bytes, only whitespace, or only a header row) yields nothing.
    """
    path = Path(path)
    suffix = _checked_suffix(path)
    if path.stat().st_size == 0:
        # An empty export is a successful load of nothing, whatever its type.
        return _no_records()
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        return _read_csv(path)
    return _read_xlsx(path)


def read_header(path: Path) -> list[str] | None:
    """Return the field names in a CSV or XLSX header row; None for JSON or an empty file."""
    path = Path(path)
    suffix = _checked_suffix(path)
    if suffix == ".csv":
        with _open_csv(path) as f:
            reader = csv.reader(f, strict=True)
            header = _csv_header(path, reader)
        return header
    if suffix == ".xlsx":
        sheet_name, rows = _xlsx_rows(path)
        header, _ = _xlsx_header(path, sheet_name, rows)
        return header
    return None


def _checked_suffix(path: Path) -> str:
    """The file's suffix, once the file is known to be a readable export of a known type."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise SourceError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    _check_readable(path)
    return suffix


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"{path}: file does not exist; check the path")
    if path.is_dir():
        raise SourceError(f"{path}: is a folder, not a file; give the export file itself")


def _unique_names(cells: list[Any]) -> list[str]:
    """Header names as strings; blank or repeated names get the column number.

    A blank or repeated header would otherwise lose cells silently (a dict keeps
    one value per name); a numbered name shows up as an unknown-field warning.
    """
    names: list[str] = []
    seen: set[str] = set()
    for number, cell in enumerate(cells, 1):
        if cell is None or cell == "":
            name = f"(column {number})"
        elif isinstance(cell, float) and cell.is_integer():
            name = str(int(cell))  # Excel stores a numeric header 5 as 5.0
        else:
            name = str(cell)
        if name in seen:
            name = f"{name} (column {number})"
        seen.add(name)
        names.append(name)
    return names


# --- JSON ------------------------------------------------------------------------------


def _json_start(path: Path) -> int | None:
    """Byte offset of the first JSON token, or None when the file holds no JSON at all."""
    offset = 0
    with path.open("rb") as f:
        head = f.read(3)
        if head == _UTF8_BOM:
            offset = 3  # yajl does not accept a byte-order mark
        else:
            f.seek(0)
        while True:
            chunk = f.read(65536)
            if not chunk:
                return None
            stripped = chunk.lstrip(_JSON_WHITESPACE)
            if stripped:
                first = stripped[:1]
                break
            offset += len(chunk)
    offset += len(chunk) - len(stripped)
    if first not in (b"[", b"{"):
        if first.isascii() and first.decode().isprintable():
            shown = f"{first.decode()!r}"
            hint = "an OTC export is a JSON list or an object holding a 'data' list"
        else:
            shown = f"byte 0x{first[0]:02x}"
            hint = "it looks like a binary file, not JSON"
        raise SourceError(
            f"{path}: not an OTC JSON export: it starts with {shown} ({hint}); "
            "re-export the view as JSON"
        )
    return offset


def _json_items_prefix(path: Path, start: int) -> str:
    """The ijson prefix of the record array, read from the first parse events only."""
    top_keys: list[str] = []
    with path.open("rb") as f:
        f.seek(start)
        try:
            for prefix, event, value in ijson.parse(f):
                if event == "start_array" and prefix in _JSON_ARRAY_PATHS:
                    return _JSON_ARRAY_PATHS[prefix]
                if prefix == "" and event == "map_key" and len(top_keys) < 10:
                    top_keys.append(str(value))
                if prefix == "" and event == "end_map":
                    break
        except ijson.JSONError as exc:
            raise _json_error(path, f, exc) from exc
    keys = ", ".join(repr(k) for k in top_keys) or "none"
    raise SourceError(
        f"{path}: JSON object has no 'message.data' or 'data' list of records "
        f"(top-level keys: {keys}); expected an OTC export"
    )


def _json_error(path: Path, f: Any, exc: Exception) -> SourceError:
    try:
        read, size = f.tell(), path.stat().st_size
        where = f" after reading {read:,} of {size:,} bytes"
    except (OSError, ValueError):
        where = ""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SourceError(
        f"{path}: JSON is truncated or malformed{where} (ijson: {detail}); "
        "re-export or download the file again"
    )


def _read_json(path: Path) -> Iterator[SourceRecord]:
    start = _json_start(path)
    if start is None:
        return _no_records()
    prefix = _json_items_prefix(path, start)
    return read_json_part(JsonPart(path, start, None, b"", b"", prefix), 1)


def _no_records() -> Iterator[SourceRecord]:
    return iter(())


# --- JSON in two halves ----------------------------------------------------------------

_BOUNDARY_WINDOW = 1 << 20  # bytes searched for a boundary, from the middle of the file


@dataclass(frozen=True)
class JsonPart:
    """A JSON export's records to read: the whole file, or one half readable on its own.

    The first half is the file up to a comma between two records, then the
    closing brackets of the envelope; the second is the envelope's opening, then
    the rest of the file after that comma. Each is a JSON text that ijson reads
    like a whole export. Which comma is a guess (see :func:`split_json`), and only
    reading the first half to its end proves it: see :func:`read_json_part`.
    """

    path: Path
    start: int  # the file's bytes [start, end) are read, between `before` and `after`
    end: int | None  # None: to the end of the file
    before: bytes
    after: bytes
    prefix: str  # the records' ijson prefix


def split_json(path: Path, min_bytes: int) -> tuple[JsonPart, JsonPart] | None:
    """Two halves of a JSON export of at least ``min_bytes``, or None (read it whole).

    The split is at the first comma past the middle of the file that stands
    between a '}' and a '{' opening with the first record's first field, e.g.
    ``}, {"TS-User Username":``. No text can hold that (its quote would end the
    text), so the comma is one between two objects in an array: two records,
    unless records nest arrays of such objects. Then the first half does not
    parse to its end (its closing brackets close the wrong things), so a wrong
    guess is always found out.
    """
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    size = path.stat().st_size
    start = _json_start(path)
    if start is None or size - start < min_bytes:
        return None
    prefix = _json_items_prefix(path, start)
    first_field = _first_field(path, start, prefix)
    if first_field is None:
        return None
    # The field name as exports write it; spelled otherwise, nothing matches: no split.
    boundary_pattern = re.compile(
        rb"\}[ \t\r\n]*(,)[ \t\r\n]*\{[ \t\r\n]*"
        + re.escape(json.dumps(first_field, ensure_ascii=False).encode())
        + rb"[ \t\r\n]*:"
    )
    keys = prefix.split(".")[:-1]  # "message.data.item": the record array is at message.data
    with path.open("rb") as f:
        middle = start + (size - start) // 2
        f.seek(middle)
        boundary = boundary_pattern.search(f.read(_BOUNDARY_WINDOW))
    if boundary is None:
        return None
    comma = middle + boundary.start(1)
    # The envelope's names are the fixed ones of _JSON_ARRAY_PATHS, never text from the file.
    opening = ("".join("{" + json.dumps(key) + ":" for key in keys) + "[").encode()
    closing = ("]" + "}" * len(keys)).encode()
    return (
        JsonPart(path, start, comma, b"", closing, prefix),
        JsonPart(path, comma + 1, None, opening, b"", prefix),
    )


def _first_field(path: Path, start: int, prefix: str) -> str | None:
    """The first field name of the first record, or None when it is not an object."""
    record = prefix[: -len(".item")] if prefix != "item" else ""
    with path.open("rb") as f:
        f.seek(start)
        try:
            for event_prefix, event, value in ijson.parse(f):
                if event_prefix == prefix and event == "map_key":
                    return str(value)
                if event_prefix == prefix and event != "start_map":
                    return None  # the first item is no object, or an empty one
                if event_prefix == record and event == "end_array":
                    return None  # no items
        except ijson.JSONError:
            return None  # the reader says what is wrong
    return None


class _SplicedFile:
    """A file-like reader of one JsonPart: ``before``, the file's bytes, then ``after``.

    ``tell()`` is the offset in the file itself, so error messages say where in
    the export the reader was.
    """

    def __init__(self, part: JsonPart) -> None:
        self._file = part.path.open("rb")
        self._file.seek(part.start)
        self._offset = part.start
        self._left = None if part.end is None else part.end - part.start
        self._before, self._after = part.before, part.after

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""  # ijson asks for nothing first, to see that it gets bytes
        if self._before:
            data, self._before = self._before, b""
            return data
        if self._left != 0:
            wanted = size if size >= 0 else -1
            if self._left is not None:
                wanted = self._left if wanted < 0 else min(wanted, self._left)
            data = self._file.read(wanted)
            if data:
                self._offset += len(data)
                if self._left is not None:
                    self._left -= len(data)
                return data
        data, self._after = self._after, b""
        return data

    def tell(self) -> int:
        return self._offset

    def close(self) -> None:
        self._file.close()


def read_json_part(part: JsonPart, first_position: int) -> Iterator[SourceRecord]:
    """Yield the records of a JsonPart, numbered from ``first_position``.

    Raises SourceError naming the file where the JSON does not parse. For the
    first half of a split that is also what a wrong split looks like: its reader
    fails at the latest on its last bytes.
    """
    f = _SplicedFile(part)
    try:
        # ijson.items builds each record in C; numbers that are not integers arrive
        # as Decimal, which keeps hours such as 0.1 exact.
        yield from enumerate(ijson.items(f, part.prefix), first_position)
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise _json_error(part.path, f, exc) from exc
    finally:
        f.close()


# --- CSV -------------------------------------------------------------------------------


def _open_csv(path: Path) -> Any:
    # utf-8-sig drops the byte-order mark Excel writes; newline="" lets csv see
    # line breaks inside quoted fields.
    return path.open("r", encoding="utf-8-sig", newline="")


def _csv_error(path: Path, line: int, exc: Exception) -> SourceError:
    if isinstance(exc, UnicodeDecodeError):
        return SourceError(
            f"{path}: not UTF-8 text near line {line} ({exc.reason}); save the export as CSV UTF-8"
        )
    return SourceError(
        f"{path}: broken CSV in the record starting at line {line} (csv: {exc}); "
        "check for an unclosed quote there, or re-export the file"
    )


def _csv_header(path: Path, reader: Any) -> list[str] | None:
    line = 1
    try:
        for row in reader:
            if row and "".join(row).strip():
                return _unique_names(row)
            line = reader.line_num + 1
    except (csv.Error, UnicodeDecodeError) as exc:
        raise _csv_error(path, line, exc) from exc
    return None


def _read_csv(path: Path) -> Iterator[SourceRecord]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    header = read_header(path)
    if header is None:
        return _no_records()
    return _iter_csv(path, header)


def _iter_csv(path: Path, header: list[str]) -> Iterator[SourceRecord]:
    width = len(header)
    with _open_csv(path) as f:
        # strict: an unclosed quote fails the file instead of silently swallowing
        # every following line into one field.
        reader = csv.reader(f, strict=True)
        start = 1
        try:
            for row in reader:
                start = reader.line_num + 1
                if row and "".join(row).strip():
                    break  # the header, already read by read_header; blank lines precede it
            for row in reader:
                if row and "".join(row).strip():
                    if len(row) == width:
                        record: dict[str, Any] = dict(zip(header, row, strict=True))
                    elif len(row) < width:
                        # csv.DictReader's restval: cells the row lacks are None.
                        record = dict(zip(header, row + [None] * (width - len(row)), strict=True))
                    else:
                        record = dict(zip(header, row[:width], strict=True))
                        record[EXTRA_CELLS_KEY] = row[width:]
                    yield start, record
                start = reader.line_num + 1
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _csv_error(path, start, exc) from exc


# --- XLSX ------------------------------------------------------------------------------

XlsxCell = int | float | str | bool | datetime | date | time | timedelta | None
XlsxRows = Iterator[tuple[int, list[Any]]]  # (spreadsheet row number, its cells)

# A sheet of at most this much XML (about 30k timesheet rows) is read whole by
# calamine: Rust, fast, but about 1.7 bytes of memory per byte of XML. A larger one
# streams through openpyxl's read-only mode: flat memory, about 8x slower. Measured
# loading 200k timesheets (212 MB of XML): read whole, peak 528 MB; streamed, peak
# 183 MB at 7,800 rows/s. Reading 50k rows alone: calamine 0.7 s, openpyxl 5.7 s.
XLSX_READ_WHOLE_MAX_BYTES = 32 * 1024 * 1024


def _read_xlsx(path: Path) -> Iterator[SourceRecord]:
    sheet_name, rows = _xlsx_rows(path)
    header, _ = _xlsx_header(path, sheet_name, rows)
    return _xlsx_records(rows, header)


def _xlsx_header(path: Path, sheet_name: str, rows: XlsxRows) -> tuple[list[str], int]:
    """The header's names and row number: the first row with any cell filled."""
    for number, cells in rows:
        values = [_xlsx_value(cell) for cell in cells]
        if any(value is not None for value in values):
            if not any(isinstance(value, str) and value.strip() for value in values):
                raise SourceError(
                    f"{path}: row {number} of sheet {sheet_name!r} holds no field "
                    "names; the first row must be the header of OTC field names"
                )
            return _unique_names(values), number
    raise SourceError(
        f"{path}: the first sheet {sheet_name!r} is empty: no header row of OTC field names"
    )


def _xlsx_records(rows: XlsxRows, header: list[str]) -> Iterator[SourceRecord]:
    width = len(header)
    for number, cells in rows:
        values: list[XlsxCell] = [_xlsx_value(cell) for cell in cells[:width]]
        if all(value is None for value in values):
            continue  # a blank spreadsheet row is not a record
        values.extend([None] * (width - len(values)))
        yield number, dict(zip(header, values, strict=True))


def _xlsx_value(cell: Any) -> XlsxCell:
    """A cell as both readers agree on it: empty is None, a whole number an int.

    Excel keeps every number as a float; openpyxl hands whole ones back as int,
    calamine as float. One type for both keeps a value's text the same however
    the sheet was read (a Decimal of 1.0 would print 1.0, of 1 print 1).
    """
    if cell == "":
        return None
    if cell.__class__ is float and cell.is_integer():
        return int(cell)
    return cast(XlsxCell, cell)


def _xlsx_rows(path: Path) -> tuple[str, XlsxRows]:
    """The first sheet's name and its rows, from spreadsheet row 1, read whole or streamed."""
    size = _largest_sheet_xml(path)
    if size is not None and size > XLSX_READ_WHOLE_MAX_BYTES:
        return _streamed_xlsx_rows(path)
    return _whole_xlsx_rows(path)


def _largest_sheet_xml(path: Path) -> int | None:
    """Bytes of the largest worksheet's XML, from the zip directory (None: not a zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            sizes = [
                info.file_size
                for info in archive.infolist()
                if info.filename.startswith("xl/worksheets/")
            ]
    except (zipfile.BadZipFile, OSError):
        return None  # the reader says what is wrong with it
    return max(sizes, default=0)


def _cannot_open(path: Path, exc: Exception) -> SourceError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SourceError(
        f"{path}: cannot be opened as an XLSX workbook ({detail}); "
        "check it is an .xlsx export and not damaged"
    )


def _whole_xlsx_rows(path: Path) -> tuple[str, XlsxRows]:
    # Imported here: only XLSX loads pay for the Rust extension.
    import python_calamine

    try:
        workbook = python_calamine.CalamineWorkbook.from_path(str(path))
        if not workbook.sheet_names:
            raise SourceError(f"{path}: workbook has no sheets; re-export the view as XLSX")
        sheet = workbook.get_sheet_by_index(0)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - calamine raises several unrelated types
        raise _cannot_open(path, exc) from exc
    # calamine holds the cells in compact Rust memory and builds Python objects a row
    # at a time. iter_rows starts at row 1 even when the data starts lower (it trims
    # empty columns, not rows).
    return sheet.name, enumerate(sheet.iter_rows(), 1)


def _streamed_xlsx_rows(path: Path) -> tuple[str, XlsxRows]:
    # Imported here: only large XLSX loads need it.
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
        if not workbook.worksheets:
            raise SourceError(f"{path}: workbook has no sheets; re-export the view as XLSX")
        sheet = workbook.worksheets[0]
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - openpyxl raises several unrelated types
        raise _cannot_open(path, exc) from exc

    def rows() -> XlsxRows:
        try:
            # Read-only rows start at row 1 and fill gaps, like calamine's.
            for number, cells in enumerate(sheet.iter_rows(values_only=True), 1):
                yield number, list(cells)
        finally:
            workbook.close()

    return sheet.title, rows()
