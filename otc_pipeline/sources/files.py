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

import codecs
import csv
import io
import json
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, cast

import ijson

from .. import names
from ..errors import ConfigError, SourceError, first_line
from .json_guard import GuardedFile, JsonGuard

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


@dataclass(frozen=True)
class ReadOptions:
    """How to read an export that is not the usual shape (the `otc load` options)."""

    sheet: str | None = None  # --sheet: an XLSX sheet's name or 1-based number
    delimiter: str | None = None  # --delimiter: a CSV's, instead of sniffing it
    encoding: str | None = None  # --encoding: a CSV's, instead of UTF-8 / UTF-16 by BOM
    date_order: str | None = None  # --date-order (default OTC_DATE_ORDER), for the parse stage
    # Names the header row must hold (the view's key fields): how an XLSX sheet and its
    # header row are found. Empty: the first sheet, its first row with any cell filled.
    header_fields: tuple[str, ...] = ()

    def checked(self) -> ReadOptions:
        """These options with --delimiter and --encoding checked (ConfigError) and spelled out."""
        delimiter = self.delimiter
        if delimiter is not None:
            delimiter = {"tab": "\t", "\\t": "\t"}.get(delimiter.lower(), delimiter)
            if len(delimiter) != 1 or delimiter in '\r\n"':
                raise ConfigError(
                    f"--delimiter must be one character such as ';' or '|' (or 'tab'), "
                    f"not {self.delimiter!r}"
                )
        encoding = self.encoding
        if encoding is not None:
            encoding = csv_encoding(Path(), encoding)[0]
        return replace(self, delimiter=delimiter, encoding=encoding)


# Cells that spill past the header in a CSV row (csv.DictReader's restkey idea):
# kept, not dropped, so the reject or warning can show them.
EXTRA_CELLS_KEY = "__extra__"

# Long ticket descriptions exceed csv's 128 KiB default; the cap still stops a
# broken quote from swallowing a 400 MB file into one field before failing.
_CSV_FIELD_LIMIT = 16 * 1024 * 1024
# A line (and a record, over all its lines) holds at most this many characters: one
# 500 MB line of small fields would otherwise become a list of 250 million cells.
CSV_RECORD_LIMIT = 16 * 1024 * 1024
# Kept of the cells that spill past the header, for the warning or the reject.
_EXTRA_CELLS_KEPT = 100

# The JSON paths the OTC API uses for the record array, outermost envelope first.
_JSON_ARRAY_PATHS = {"message.data": "message.data.item", "data": "data.item", "": "item"}

_UTF8_BOM = b"\xef\xbb\xbf"
_JSON_WHITESPACE = b" \t\r\n"


def read_file(path: Path, options: ReadOptions | None = None) -> Iterator[SourceRecord]:
    """Yield every record of an OTC export file with its source position.

    The reader is chosen by suffix: ``.json``, ``.csv`` or ``.xlsx``. An empty
    file (no bytes, only whitespace, or only a header row) yields nothing.
    """
    path = Path(path)
    options = options or ReadOptions()
    suffix = _checked_suffix(path)
    if path.stat().st_size == 0:
        # An empty export is a successful load of nothing, whatever its type.
        return _no_records()
    if suffix == ".json":
        if _is_utf16(path):
            return _read_utf16_json(path)
        return _read_json(path)
    if suffix == ".csv":
        return _read_csv(path, options)
    return _read_xlsx(path, options)


def read_header(path: Path, options: ReadOptions | None = None) -> list[str] | None:
    """Return the field names in a CSV or XLSX header row; None for JSON or an empty file."""
    path = Path(path)
    options = options or ReadOptions()
    suffix = _checked_suffix(path)
    if suffix == ".csv":
        dialect = csv_dialect(path, options)
        with _open_csv(path, dialect) as f:
            reader = csv.reader(_CsvLines(path, f), delimiter=dialect.delimiter, strict=True)
            return _csv_header(path, reader, dialect)
    if suffix == ".xlsx":
        return _xlsx_sheet(path, options).header
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
    mode = path.stat().st_mode  # of the target, when the path is a symbolic link
    if not stat.S_ISREG(mode):
        # A device or FIFO has no size: read as "empty", it would load as a fresh
        # success of nothing (or never end: /dev/zero, /dev/urandom).
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
        raise SourceError(
            f"{path}: is {kind}, not a regular file; save the export to a file and load that"
        )


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
            for prefix, event, value in ijson.parse(GuardedFile(f)):
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
    detail = first_line(exc)
    return SourceError(
        f"{path}: JSON is truncated or malformed{where} (ijson: {detail}); "
        "re-export or download the file again"
    )


def _is_utf16(path: Path) -> bool:
    """Whether a file opens with a UTF-16 byte-order mark (PowerShell's default encoding)."""
    with path.open("rb") as f:
        return f.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _read_utf16_json(path: Path) -> Iterator[SourceRecord]:
    """A UTF-16 JSON export, read through a UTF-8 copy in a temporary folder.

    ijson reads bytes as UTF-8 only; the copy is made a megabyte at a time, so
    memory stays flat, and it is removed when the records have been read. Errors
    name the export, not the copy.
    """
    with tempfile.TemporaryDirectory(prefix="otc-utf16-") as folder:
        copy = Path(folder) / path.name
        try:
            with path.open(encoding="utf-16", newline="") as text, copy.open(
                "w", encoding="utf-8", newline=""
            ) as utf8:
                shutil.copyfileobj(text, utf8, 1 << 20)
        except UnicodeError as exc:
            raise SourceError(
                f"{path}: starts like UTF-16 text but is not valid UTF-16 ({exc}); "
                "re-export the view as JSON"
            ) from None
        try:
            yield from _read_json(copy)
        except SourceError as exc:
            raise SourceError(str(exc).replace(str(copy), f"{path} (read as UTF-16)")) from None


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
    if path.suffix.lower() != ".json" or not path.is_file() or _is_utf16(path):
        return None  # a UTF-16 export is read whole, through its UTF-8 copy
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
            for event_prefix, event, value in ijson.parse(GuardedFile(f)):
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
    guarded = GuardedFile(f, JsonGuard(part.prefix))  # the prefix: fields named twice too
    try:
        # ijson.items builds each record in C; numbers that are not integers arrive
        # as Decimal, which keeps hours such as 0.1 exact. The guard keeps hostile
        # values from it and makes a record that held one a RefusedRecord.
        records = map(guarded.guard.checked, ijson.items(guarded, part.prefix))
        yield from enumerate(records, first_position)
    except (ijson.JSONError, UnicodeDecodeError, ArithmeticError) as exc:
        # ArithmeticError: decimal refuses a number such as 1e99999999999999999999.
        raise _json_error(part.path, f, exc) from exc
    finally:
        f.close()


# --- CSV -------------------------------------------------------------------------------

# Delimiters a CSV export may use: Excel writes ';' where the decimal mark is a comma,
# and tab or '|' exports exist too. The csv module's Sniffer chooses among these only.
CSV_DELIMITERS = ",;\t|"
_SNIFF_BYTES = 64 * 1024
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


@dataclass(frozen=True)
class CsvDialect:
    """How one CSV file is read: its encoding and delimiter."""

    encoding: str  # a Python codec name; utf-8-sig and utf-16 drop their BOM
    delimiter: str
    forced_encoding: bool  # given with --encoding (else by BOM, or UTF-8)


def csv_encoding(path: Path, forced: str | None) -> tuple[str, bool]:
    """The codec to read a CSV with: --encoding, else by its BOM, else UTF-8."""
    if forced:
        try:
            return codecs.lookup(forced).name, True
        except LookupError:
            raise ConfigError(
                f"--encoding {forced!r} is not an encoding Python knows; "
                "use e.g. cp1252, latin-1 or utf-16"
            ) from None
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", False
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", False  # PowerShell's and Excel's "Unicode text"
    return "utf-8", False


def csv_dialect(path: Path, options: ReadOptions) -> CsvDialect:
    """The file's encoding and delimiter: as forced by the options, else detected."""
    options = options.checked()
    encoding, forced = csv_encoding(path, options.encoding)
    if options.delimiter is not None:
        return CsvDialect(encoding, options.delimiter, forced)
    dialect = CsvDialect(encoding, ",", forced)
    with path.open("rb") as f:
        sample_bytes = f.read(_SNIFF_BYTES)
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        sample = decoder.decode(sample_bytes, final=len(sample_bytes) < _SNIFF_BYTES)
    except UnicodeDecodeError as exc:
        raise _decode_error(path, dialect, exc) from exc
    if len(sample_bytes) == _SNIFF_BYTES:
        sample = sample[: sample.rfind("\n") + 1] or sample  # whole lines only
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        return dialect  # one column, or nothing to tell by: the comma, as exports use
    header = next(csv.reader(io.StringIO(sample)), [])
    sniffed_header = next(csv.reader(io.StringIO(sample), delimiter=sniffed), [])
    # The Sniffer weighs every line alike; the header line decides between near ties.
    if len(header) > len(sniffed_header):
        return dialect
    return CsvDialect(encoding, sniffed, forced)


def _open_csv(path: Path, dialect: CsvDialect) -> Any:
    # newline="" lets csv see line breaks inside quoted fields.
    return path.open("r", encoding=dialect.encoding, newline="")


def _bad_line(path: Path, encoding: str) -> tuple[int, int] | None:
    """(line number, offending byte) of the first bytes that do not decode, or None.

    The text reader decodes 8 KB at a time, so the csv reader's line is behind
    the real one: this walks the file's lines as bytes to name the true line.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as exc:
                return number, line[exc.start] if exc.start < len(line) else line[-1]
    return None


def _decode_error(path: Path, dialect: CsvDialect, exc: UnicodeDecodeError) -> SourceError:
    where = None
    if dialect.encoding.replace("_", "-") in ("utf-8", "utf-8-sig") or dialect.forced_encoding:
        where = _bad_line(path, dialect.encoding)
    if where is None:
        place, byte = "", exc.object[exc.start] if exc.start < len(exc.object) else 0
    else:
        place, byte = f"line {where[0]}: ", where[1]
    if dialect.forced_encoding:
        return SourceError(
            f"{path}: {place}byte 0x{byte:02x} is not {dialect.encoding} text; "
            "give the encoding the file was saved in with --encoding NAME"
        )
    return SourceError(
        f"{path}: {place}not UTF-8 text (byte 0x{byte:02x}); a CSV saved by Excel or "
        "another Windows program is often Windows-1252: load it with --encoding cp1252"
    )


def _csv_error(path: Path, line: int, exc: Exception, dialect: CsvDialect) -> SourceError:
    if isinstance(exc, UnicodeDecodeError):
        return _decode_error(path, dialect, exc)
    return SourceError(
        f"{path}: broken CSV in the record starting at line {line} (csv: {exc}); "
        "check for an unclosed quote there, or re-export the file"
    )


class _CsvLines:
    """The lines of a CSV file as csv.reader reads them, each and each record bounded.

    ``readline(limit)`` never builds a line longer than the limit, however long
    the line in the file; a record is bounded over all its lines (a quoted field
    may hold line breaks) until :meth:`record_done`.
    """

    def __init__(self, path: Path, f: Any) -> None:
        self._path = path
        self._readline = f.readline
        self._line = 0
        self._record_chars = 0
        self._record_line = 1

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        line = self._readline(CSV_RECORD_LIMIT + 1)
        if not line:
            raise StopIteration
        self._line += 1
        self._record_chars += len(line)
        if self._record_chars > CSV_RECORD_LIMIT:
            what = "line" if self._record_line == self._line else "record starting at line"
            raise SourceError(
                f"{self._path}: {what} {self._record_line} is longer than "
                f"{CSV_RECORD_LIMIT // (1024 * 1024)} MiB, more than any export record; "
                "check the file is a CSV export (one record per line, quotes closed)"
            )
        return line

    def record_done(self) -> None:
        """A record ended: the next one starts on the next line."""
        self._record_chars = 0
        self._record_line = self._line + 1


def _csv_header(path: Path, reader: Any, dialect: CsvDialect) -> list[str] | None:
    line = 1
    try:
        for row in reader:
            if row and "".join(row).strip():
                return _unique_names(row)
            line = reader.line_num + 1
    except (csv.Error, UnicodeDecodeError) as exc:
        raise _csv_error(path, line, exc, dialect) from exc
    return None


def describe_dialect(dialect: CsvDialect) -> str:
    """'semicolon-separated, cp1252': how a CSV was read, for messages."""
    name = _DELIMITER_NAMES.get(dialect.delimiter, repr(dialect.delimiter))
    return f"{name}-separated, {dialect.encoding}"


def _read_csv(path: Path, options: ReadOptions) -> Iterator[SourceRecord]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    dialect = csv_dialect(path, options)
    with _open_csv(path, dialect) as f:
        reader = csv.reader(_CsvLines(path, f), delimiter=dialect.delimiter, strict=True)
        header = _csv_header(path, reader, dialect)
    if header is None:
        return _no_records()
    return _iter_csv(path, header, dialect)


def _iter_csv(path: Path, header: list[str], dialect: CsvDialect) -> Iterator[SourceRecord]:
    width = len(header)
    with _open_csv(path, dialect) as f:
        # strict: an unclosed quote fails the file instead of silently swallowing
        # every following line into one field.
        lines = _CsvLines(path, f)
        reader = csv.reader(lines, delimiter=dialect.delimiter, strict=True)
        start = 1
        try:
            for row in reader:
                lines.record_done()
                start = reader.line_num + 1
                if row and "".join(row).strip():
                    break  # the header, already read by read_header; blank lines precede it
            for row in reader:
                lines.record_done()
                if row and "".join(row).strip():
                    if len(row) == width:
                        record: dict[str, Any] = dict(zip(header, row, strict=True))
                    elif len(row) < width:
                        # csv.DictReader's restval: cells the row lacks are None.
                        record = dict(zip(header, row + [None] * (width - len(row)), strict=True))
                    else:
                        record = dict(zip(header, row[:width], strict=True))
                        record[EXTRA_CELLS_KEY] = row[width : width + _EXTRA_CELLS_KEPT]
                    yield start, record
                start = reader.line_num + 1
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _csv_error(path, start, exc, dialect) from exc


# --- XLSX ------------------------------------------------------------------------------

XlsxCell = int | float | str | bool | datetime | date | time | timedelta | None
XlsxRows = Iterator[tuple[int, list[Any]]]  # (spreadsheet row number, its cells)

# A sheet of at most this much XML (about 30k timesheet rows) is read whole by
# calamine: Rust, fast, but about 1.7 bytes of memory per byte of XML. A larger one
# streams through openpyxl's read-only mode: flat memory, about 8x slower. Measured
# loading 200k timesheets (212 MB of XML): read whole, peak 528 MB; streamed, peak
# 183 MB at 7,800 rows/s. Reading 50k rows alone: calamine 0.7 s, openpyxl 5.7 s.
XLSX_READ_WHOLE_MAX_BYTES = 32 * 1024 * 1024
# calamine holds a sheet as a dense grid from its first to its last cell (about 32
# bytes a cell): one stray cell at XFD5000 made it 82 million cells, 2.6 GB. A sheet
# whose cells span more than this is streamed instead, and only its first
# XLSX_MAX_COLUMNS columns are read (an export has a few dozen).
XLSX_READ_WHOLE_MAX_CELLS = 4_000_000
XLSX_MAX_COLUMNS = 1000
# A member of the workbook that unpacks to more than this, at more than this ratio,
# is no export but a zip bomb (1 MB of zip held 2.2 GB of whitespace).
XLSX_BOMB_MIN_BYTES = 16 * 1024 * 1024
XLSX_BOMB_RATIO = 100
_XLSX_ROW = re.compile(rb'<row[^>]*? r="([0-9]+)"')
_XLSX_WIDE_CELL = re.compile(rb'<c[^>]*? r="([A-Z]{2,3})[0-9]')


# The header row may sit below up to this many title or blank rows.
HEADER_SEARCH_ROWS = 11


@dataclass
class XlsxSheet:
    """The sheet an XLSX export's records are read from, its header, and the rows below it."""

    name: str
    header: list[str]
    header_row: int
    rows: XlsxRows  # the rows after the header
    close: Callable[[], None]


def _read_xlsx(path: Path, options: ReadOptions) -> Iterator[SourceRecord]:
    sheet = _xlsx_sheet(path, options)
    return _xlsx_records(sheet)


def _xlsx_sheet(path: Path, options: ReadOptions) -> XlsxSheet:
    """The sheet to read (--sheet, else the first whose header holds the key fields)."""
    workbook = _open_xlsx(path)
    try:
        sheet_names = workbook.sheet_names
        if options.sheet is not None:
            candidates = [_sheet_index(path, sheet_names, options.sheet)]
        else:
            candidates = list(range(len(sheet_names)))
        seen: list[str] = []
        for index in candidates:
            name = sheet_names[index]
            rows = workbook.rows(index)
            found = _xlsx_header(path, name, rows, options.header_fields)
            if isinstance(found, tuple):
                header, number = found
                return XlsxSheet(name, header, number, rows, workbook.close)
            seen.append(found)
    except BaseException:
        workbook.close()
        raise
    workbook.close()
    wanted = ", ".join(repr(f) for f in options.header_fields)
    others = [n for i, n in enumerate(sheet_names) if i not in candidates]
    other_text = (
        f"; the other sheets: {', '.join(repr(n) for n in others)} (choose one with --sheet NAME)"
        if others
        else ""
    )
    if options.sheet is not None:
        raise SourceError(
            f"{path}: {seen[0]}, no header row holding {wanted} in rows 1–{HEADER_SEARCH_ROWS}"
            f"{other_text}"
        )
    raise SourceError(
        f"{path}: no sheet has a header row holding {wanted} in rows 1–{HEADER_SEARCH_ROWS} "
        f"({'; '.join(seen)}); is it an export of this view? Choose the sheet with --sheet NAME"
    )


def _sheet_index(path: Path, sheet_names: list[str], wanted: str) -> int:
    """--sheet NAME or NUMBER (1-based): the sheet's index; a name may differ in case."""
    if wanted in sheet_names:
        return sheet_names.index(wanted)
    if wanted.strip().isdigit() and 1 <= int(wanted) <= len(sheet_names):
        return int(wanted) - 1
    folded = [names.folded(n) for n in sheet_names]
    if names.folded(wanted) in folded:
        return folded.index(names.folded(wanted))
    listed = ", ".join(repr(n) for n in sheet_names)
    raise SourceError(
        f"{path}: no sheet {wanted!r}; its sheets are {listed} "
        f"(--sheet takes a name or a number 1–{len(sheet_names)})"
    )


def _shown_cells(values: list[Any]) -> str:
    shown = [repr(v) for v in values if v is not None][:4]
    more = ", …" if sum(v is not None for v in values) > 4 else ""
    return ", ".join(shown) + more


def _xlsx_header(
    path: Path, sheet_name: str, rows: XlsxRows, wanted: tuple[str, ...]
) -> tuple[list[str], int] | str:
    """The header's names and row number, or what was read instead (for the error).

    Without ``wanted``: the first row with any cell filled. With it: the first of
    the sheet's first HEADER_SEARCH_ROWS rows whose names hold every wanted field
    (compared with case and spacing folded, as the parse stage matches them).
    """
    wanted_folded = {names.folded(f) for f in wanted}
    first_filled: tuple[int, list[Any]] | None = None
    for number, cells in rows:
        values = [_xlsx_value(cell) for cell in cells]
        if any(value is not None for value in values):
            if first_filled is None:
                first_filled = (number, values)
            texts = {names.folded(v) for v in values if isinstance(v, str)}
            if not wanted:
                if not texts - {""}:
                    raise SourceError(
                        f"{path}: row {number} of sheet {sheet_name!r} holds no field "
                        "names; the header row must hold the OTC field names"
                    )
                return _unique_names(_without_trailing_blanks(values)), number
            if wanted_folded <= texts:
                return _unique_names(_without_trailing_blanks(values)), number
        if number >= HEADER_SEARCH_ROWS:
            break
    if first_filled is None:
        if not wanted:
            raise SourceError(
                f"{path}: sheet {sheet_name!r} is empty: no header row of OTC field names"
            )
        return f"sheet {sheet_name!r} is empty"
    number, values = first_filled
    return f"sheet {sheet_name!r} row {number} holds {_shown_cells(values)}"


def _without_trailing_blanks(values: list[Any]) -> list[Any]:
    """A header's cells up to its last name: empty cells after it are no columns."""
    end = len(values)
    while end and values[end - 1] is None:
        end -= 1
    return values[:end]


def _xlsx_records(sheet: XlsxSheet) -> Iterator[SourceRecord]:
    header = sheet.header
    width = len(header)
    try:
        for number, cells in sheet.rows:
            values: list[XlsxCell] = [_xlsx_value(cell) for cell in cells[:width]]
            if all(value is None for value in values):
                continue  # a blank spreadsheet row is not a record
            values.extend([None] * (width - len(values)))
            yield number, dict(zip(header, values, strict=True))
    finally:
        sheet.close()


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


class _Workbook:
    """A workbook's sheet names and each sheet's rows from row 1, read whole or streamed."""

    def __init__(
        self,
        sheet_names: list[str],
        rows: Callable[[int], XlsxRows],
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.sheet_names, self.rows, self.close = sheet_names, rows, close


def _open_xlsx(path: Path) -> _Workbook:
    size = _largest_sheet_xml(path)
    if size is not None and (
        size > XLSX_READ_WHOLE_MAX_BYTES or _sheet_cells(path) > XLSX_READ_WHOLE_MAX_CELLS
    ):
        return _streamed_xlsx(path)
    return _whole_xlsx(path)


def _largest_sheet_xml(path: Path) -> int | None:
    """Bytes of the largest worksheet's XML, from the zip directory (None: not a zip).

    Refuses a zip bomb: a member that unpacks to far more than a real export would.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return None  # the reader says what is wrong with it
    for info in members:
        ratio = info.file_size // max(info.compress_size, 1)
        if info.file_size > XLSX_BOMB_MIN_BYTES and ratio > XLSX_BOMB_RATIO:
            raise SourceError(
                f"{path}: {info.filename} unpacks to {info.file_size / 1e6:,.0f} MB from "
                f"{info.compress_size / 1e3:,.0f} KB ({ratio:,} times): no export "
                "compresses so well; is it a zip bomb? Re-export the view"
            )
    return max(
        (info.file_size for info in members if info.filename.startswith("xl/worksheets/")),
        default=0,
    )


def _sheet_cells(path: Path) -> int:
    """How many cells calamine's grid would hold for the largest sheet: rows x columns.

    From the sheet's XML, read in pieces: the last row number and the widest
    column letters (only two- and three-letter ones are looked at: A to Z are
    narrow anyway). The declared <dimension> is not trusted.
    """
    largest = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.startswith("xl/worksheets/") or info.is_dir():
                continue
            last_row, width, tail = 0, 26, b""
            with archive.open(info) as xml:
                while chunk := xml.read(1 << 20):
                    data = tail + chunk
                    rows = _XLSX_ROW.findall(data, max(0, data.rfind(b"<row")))
                    if rows:
                        last_row = max(last_row, int(rows[-1]))
                    for letters in set(_XLSX_WIDE_CELL.findall(data)):
                        width = max(width, _column_number(letters))
                    tail = data[-64:]
            largest = max(largest, last_row * width)
    return largest


def _column_number(letters: bytes) -> int:
    number = 0
    for letter in letters:
        number = number * 26 + letter - 64
    return number


def _cannot_open(path: Path, exc: Exception) -> SourceError:
    detail = first_line(exc)
    return SourceError(
        f"{path}: cannot be opened as an XLSX workbook ({detail}); "
        "check it is an .xlsx export and not damaged"
    )


def _whole_xlsx(path: Path) -> _Workbook:
    # Imported here: only XLSX loads pay for the Rust extension.
    import python_calamine

    try:
        workbook = python_calamine.CalamineWorkbook.from_path(str(path))
        sheet_names = list(workbook.sheet_names)
    except Exception as exc:  # noqa: BLE001 - calamine raises several unrelated types
        raise _cannot_open(path, exc) from exc
    if not sheet_names:
        raise SourceError(f"{path}: workbook has no sheets; re-export the view as XLSX")

    def rows(index: int) -> XlsxRows:
        try:
            sheet = workbook.get_sheet_by_index(index)
        except Exception as exc:  # noqa: BLE001 - calamine raises several unrelated types
            raise _cannot_open(path, exc) from exc
        # calamine holds the cells in compact Rust memory and builds Python objects a row
        # at a time. iter_rows starts at row 1 even when the data starts lower (it trims
        # empty columns, not rows).
        return enumerate(sheet.iter_rows(), 1)

    return _Workbook(sheet_names, rows)


def _streamed_xlsx(path: Path) -> _Workbook:
    # Imported here: only large XLSX loads need it.
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises several unrelated types
        raise _cannot_open(path, exc) from exc
    if not workbook.worksheets:
        workbook.close()
        raise SourceError(f"{path}: workbook has no sheets; re-export the view as XLSX")

    def rows(index: int) -> XlsxRows:
        # Read-only rows start at row 1 and fill gaps, like calamine's; at most
        # XLSX_MAX_COLUMNS cells each, whatever the sheet's declared width.
        cells = workbook.worksheets[index].iter_rows(values_only=True, max_col=XLSX_MAX_COLUMNS)
        return ((n, list(row)) for n, row in enumerate(cells, 1))

    return _Workbook([ws.title for ws in workbook.worksheets], rows, workbook.close)
