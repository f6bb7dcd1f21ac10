"""Hostile files and records: each is a reject or a clear error, in bounded memory and time.

Every load of a hostile file runs in a subprocess under RLIMIT_AS, so a regression
fails the test instead of taking the machine's memory; the peak RSS of the load
(its reading processes included) is measured with ``wait4``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from otc_pipeline.db import make_engine
from otc_pipeline.errors import SourceError
from otc_pipeline.models import EtlReject, Timesheet
from otc_pipeline.sources import json_guard
from otc_pipeline.sources.files import read_file
from otc_pipeline.sources.json_guard import JsonGuard

ADDRESS_SPACE_LIMIT = 2_000_000_000  # bytes: a regression fails, the machine is shared
PEAK_RSS_LIMIT_MB = 300


@dataclass
class Load:
    exit_code: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    seconds: float


# Runs the command under RLIMIT_AS and writes its peak RSS (KB) to the file named
# first. A small launcher, not pytest itself, forks it: a child forked from pytest
# counts pytest's own pages in its peak until it execs.
_LAUNCHER = """
import resource, subprocess, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
code = subprocess.call(sys.argv[3:])
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code if code >= 0 else 128 - code)
"""


def run_load(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Load:
    """`otc load …` in a subprocess under RLIMIT_AS, with its peak RSS (readers included)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak"
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                _LAUNCHER,
                str(peak_file),
                str(ADDRESS_SPACE_LIMIT),
                sys.executable,
                "-m",
                "otc_pipeline",
                "load",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        peak_kb = int(peak_file.read_text())
    return Load(
        result.returncode,
        result.stdout,
        result.stderr,
        peak_kb / 1024,
        time.monotonic() - started,
    )


def timesheet(i: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "TS-User Username": f"user{i}",
        "TS-User Full Name": f"User {i}",
        "TS-Date": "01/02/2024",
        "TS-Time From": "09:00",
        "TS-Time To": "10:00",
        "TS-Hours": "1",
        "TS-Crm ID": 1000 + i,
        "TS-Description": "checked the firewall",
    }
    record.update(fields)
    return record


def export_with(bad_record_json: str) -> str:
    """A JSON export: two good records around the hostile one (record 2)."""
    return f"[{json.dumps(timesheet(1))},\n{bad_record_json},\n{json.dumps(timesheet(3))}]"


def bad(replace: str, by: str) -> str:
    text = json.dumps(timesheet(2))
    assert replace in text
    return text.replace(replace, by)


HOSTILE_RECORDS: dict[str, tuple[Callable[[], str], str | None, str]] = {
    # name: (record 2 as JSON text, the field named, words of the reason)
    "nul in text": (
        lambda: bad('"checked the firewall"', '"checked\\u0000firewall"'),
        "TS-Description",
        "NUL character",
    ),
    "nul in a date": (
        lambda: bad('"01/02/2024"', '"01/02\\u0000/2024"'),
        "TS-Date",
        "not a date",
    ),
    "nested 20,000 deep": (
        lambda: bad('"checked the firewall"', "[" * 20_000 + "]" * 20_000),
        "TS-Description",
        "nested more than",
    ),
    "nested in an unknown field": (
        lambda: bad(
            '"TS-Hours"', '"TS-Extra": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + ', "TS-Hours"'
        ),
        "TS-Extra",
        "nested more than",
    ),
    "5,000-digit key": (
        lambda: bad('"TS-Crm ID": 1002', '"TS-Crm ID": ' + "9" * 5000),
        "TS-Crm ID",
        "number of more than",
    ),
    "1,000,000-digit key": (
        lambda: bad('"TS-Crm ID": 1002', '"TS-Crm ID": -' + "9" * 1_000_000),
        "TS-Crm ID",
        "number of more than",
    ),
    "1,000,000-digit key as text": (
        lambda: bad('"TS-Crm ID": 1002', '"TS-Crm ID": "' + "9" * 1_000_000 + '"'),
        "TS-Crm ID",
        "out of range",
    ),
    "1e200000 hours": (
        lambda: bad('"TS-Hours": "1"', '"TS-Hours": 1e200000'),
        "TS-Hours",
        "out of range",
    ),
    "lone low surrogate": (
        lambda: bad('"checked the firewall"', '"checked \\udfff"'),
        "TS-Description",
        "lone surrogate",
    ),
    "a field named twice": (
        lambda: bad('"TS-Hours": "1"', '"TS-Hours": "1", "TS-Hours": "7.5"'),
        "TS-Hours",
        "named 2 times in one record",
    ),
    "a key field named three times": (
        lambda: bad('"TS-Crm ID": 1002', '"TS-Crm ID": 1002, "TS-Crm ID": 9, "TS-Crm ID": 8'),
        "TS-Crm ID",
        "named 3 times in one record",
    ),
    "lone high surrogate": (
        lambda: bad('"checked the firewall"', '"checked \\ud800 firewall"'),
        "TS-Description",
        "lone surrogate",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_RECORDS))
def test_hostile_record_is_a_reject_and_the_rest_loads(
    case: str, db_url: str, tmp_path: Path
) -> None:
    make, field, reason = HOSTILE_RECORDS[case]
    source = tmp_path / "timesheets.json"
    source.write_text(export_with(make()), encoding="utf-8")
    load = run_load("timesheets", "--from", str(source), "--database-url", db_url, "--json")
    assert load.exit_code == 3, load.stderr
    assert load.stderr == ""
    summary = json.loads(load.stdout)
    assert (summary["inserted"], summary["rejected"]) == (2, 1)
    assert load.peak_rss_mb < PEAK_RSS_LIMIT_MB
    assert load.seconds < 30  # constant-time refusals: no quadratic int() or repr()
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            users = sorted(conn.execute(select(Timesheet.user_username)).scalars())
            rejects = conn.execute(select(EtlReject.__table__)).all()
    finally:
        engine.dispose()
    assert users == ["user1", "user3"]
    (reject,) = rejects
    assert reject.source_position == 2
    assert reject.field == field
    assert reason in reject.reason
    assert reject.raw_record is not None and "user2" in reject.raw_record
    assert len(reject.raw_record) < 2_100_000


# --- the guard never changes an honest export -------------------------------------------


def _honest_value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.randrange(-(10**30), 10**30)
    if kind == 1:
        return rng.random() * 10 ** rng.randrange(-20, 20)
    if kind in (2, 3, 4):
        alphabet = 'ab c"\\/[]{}:,\n\t\u00e9\u20ac\U0001f600-+.e0123456789'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
    if kind == 5:
        return rng.choice([None, True, False])
    if kind in (6, 7):
        return {
            _honest_value(rng, 9) if False else f'k{i}\\"': _honest_value(rng, depth + 1)
            for i in range(rng.randrange(0, 5))
        }
    return [_honest_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]


@pytest.mark.parametrize("seed", range(40))
def test_guard_passes_honest_json_unchanged_however_it_is_cut(seed: int) -> None:
    rng = random.Random(seed)
    document = [_honest_value(rng, 1) for _ in range(60)]
    ensure_ascii = seed % 2 == 0
    data = json.dumps(document, ensure_ascii=ensure_ascii, indent=seed % 3 or None).encode()
    guard = JsonGuard()
    passed = []
    position = 0
    while position < len(data):
        size = rng.choice([1, 2, 3, 7, 64, 1000, 65536])
        passed.append(guard.feed(data[position : position + size]))
        position += size
    passed.append(guard.end())
    assert b"".join(passed) == data
    assert guard.markers == 0


def _read_guarded(data: bytes, prefix: str, rng: random.Random) -> list[Any]:
    """The records ijson builds from ``data`` through a counting guard, read in random cuts."""
    import ijson

    class Cut:
        position = 0

        def read(self, size: int = -1) -> bytes:
            chunk = data[self.position : self.position + rng.choice([1, 2, 3, 7, 64, 1000, 65536])]
            self.position += len(chunk)
            return chunk

    guarded = json_guard.GuardedFile(Cut(), JsonGuard(prefix))
    return list(map(guarded.guard.checked, ijson.items(guarded, prefix)))


@pytest.mark.parametrize("seed", range(40))
def test_counting_guard_never_refuses_honest_records(seed: int) -> None:
    rng = random.Random(seed)
    document = [_honest_value(rng, 1) for _ in range(60)]
    data = json.dumps(document, ensure_ascii=seed % 2 == 0, indent=seed % 3 or None).encode()
    from decimal import Decimal

    assert _read_guarded(data, "item", rng) == json.loads(data, parse_float=Decimal)


def _pairs(pairs: list[tuple[str, Any]]) -> Any:
    """json.loads' view of an object: the field named twice, if any, else the dict."""
    names = [name for name, _ in pairs]
    twice = next((name for name in names if names.count(name) > 1), None)
    return ("twice", twice) if twice is not None else dict(pairs)


@pytest.mark.parametrize("seed", range(30))
def test_fields_named_twice_are_found_however_the_bytes_are_cut(seed: int) -> None:
    rng = random.Random(seed)
    records = []
    for i in range(80):
        fields = [(f'f{k}:"{{', _honest_value(rng, 3)) for k in range(rng.randrange(0, 6))]
        if rng.random() < 0.3 and fields:
            fields.insert(rng.randrange(len(fields) + 1), (rng.choice(fields)[0], i))
        records.append("{" + ", ".join(f"{json.dumps(n)}: {json.dumps(v)}" for n, v in fields) + "}")
    # Objects outside the record array (and inside records) are no records.
    decoy = '{"x": {"y": {"z": 1, "z": 2}}}'
    text = (
        f'{{"meta": {decoy}, "message": {{"errors": [{{"q": 1, "q": 2}}], '
        f'"data": [{", ".join(records)}], "after": {decoy}}}}}'
    )
    from decimal import Decimal

    expected = json.loads(text, object_pairs_hook=_pairs, parse_float=Decimal)["message"]["data"]
    got = _read_guarded(text.encode(), "message.data.item", rng)
    assert len(got) == len(expected)
    for record, wanted in zip(got, expected, strict=True):
        if isinstance(wanted, tuple):
            assert isinstance(record, json_guard.RefusedRecord), record
            assert record.field == wanted[1] and "named" in record.reason
        else:
            assert record == wanted


def test_guard_follows_depth_across_chunks() -> None:
    deep = b"[" * 40 + b"1" + b"]" * 40
    guard = JsonGuard()
    out = b"".join([*(guard.feed(deep[i : i + 3]) for i in range(0, len(deep), 3)), guard.end()])
    expected: Any = json_guard.MARKER + f"nested more than {json_guard.MAX_DEPTH} levels deep\x00"
    for _ in range(json_guard.MAX_DEPTH):
        expected = [expected]
    assert json.loads(out) == expected
    assert guard.markers == 1


# --- sources that are not regular files ----------------------------------------------------


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_symlink_to_a_device_is_refused(tmp_path: Path, target: str) -> None:
    link = tmp_path / "timesheets.json"
    link.symlink_to(target)
    with pytest.raises(SourceError, match="not a regular file"):
        read_file(link)


def test_fifo_is_refused_without_blocking(tmp_path: Path, db_url: str) -> None:
    fifo = tmp_path / "timesheets.csv"
    os.mkfifo(fifo)
    load = run_load("timesheets", "--from", str(fifo), "--database-url", db_url, timeout=30)
    assert load.exit_code == 1
    assert load.stderr.startswith("Error: ") and "FIFO" in load.stderr
    assert len(load.stderr.splitlines()) == 1


# --- hostile CSV and XLSX files: refused or read in bounded memory -----------------------


def timesheet_csv_header() -> str:
    return ",".join(timesheet(0)) + "\n"


def timesheet_csv_row(i: int, **fields: Any) -> str:
    return ",".join(str(v) for v in timesheet(i, **fields).values()) + "\n"


def test_csv_line_of_millions_of_small_fields_is_refused_in_bounded_memory(
    tmp_path: Path, db_url: str
) -> None:
    source = tmp_path / "timesheets.csv"
    with source.open("w") as out:
        out.write(timesheet_csv_header() + timesheet_csv_row(1))
        for _ in range(40):
            out.write("a," * 500_000)  # 40 MB on one line
        out.write("\n" + timesheet_csv_row(3))
    load = run_load("timesheets", "--from", str(source), "--database-url", db_url)
    assert load.exit_code == 1
    assert load.stderr.startswith(f"Error: timesheets: {source}: line 3 is longer than 16 MiB")
    assert len(load.stderr.splitlines()) == 1
    assert load.peak_rss_mb < PEAK_RSS_LIMIT_MB


def test_csv_record_over_many_lines_is_bounded_too(tmp_path: Path) -> None:
    source = tmp_path / "timesheets.csv"
    with source.open("w") as out:
        out.write(timesheet_csv_header())
        out.write('"x\n",' * 4_000_000 + "\n")  # 20 MB: small quoted fields holding line breaks
    with pytest.raises(SourceError, match="record starting at line 2 is longer than 16 MiB"):
        list(read_file(source))


def test_csv_nul_is_a_reject_naming_the_field(tmp_path: Path, db_url: str) -> None:
    source = tmp_path / "timesheets.csv"
    source.write_text(
        timesheet_csv_header()
        + timesheet_csv_row(1)
        + timesheet_csv_row(2, **{"TS-Description": "bad\x00byte"})
        + timesheet_csv_row(3),
        encoding="utf-8",
    )
    load = run_load("timesheets", "--from", str(source), "--database-url", db_url, "--json")
    assert load.exit_code == 3, load.stderr
    summary = json.loads(load.stdout)
    assert (summary["inserted"], summary["rejected"]) == (2, 1)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            (reject,) = conn.execute(select(EtlReject.__table__)).all()
    finally:
        engine.dispose()
    assert (reject.source_position, reject.field) == (3, "TS-Description")
    assert "NUL" in reject.reason


def xlsx_with(path: Path, cells: dict[str, Any]) -> None:
    import xlsxwriter

    workbook = xlsxwriter.Workbook(str(path), {"constant_memory": False})
    sheet = workbook.add_worksheet("timesheets")
    for column, name in enumerate(timesheet(0)):
        sheet.write(0, column, name)
    for row in (1, 2):
        for column, value in enumerate(timesheet(row).values()):
            sheet.write(row, column, value)
    for where, value in cells.items():
        sheet.write(where, value)
    workbook.close()


@pytest.mark.parametrize(
    ("corner", "rejected"),
    [("XFD5000", 0), ("ZZ60000", 0), ("A1048576", 1)],  # a cell in column A is a record
)
def test_xlsx_with_a_stray_far_cell_loads_in_bounded_memory(
    tmp_path: Path, db_url: str, corner: str, rejected: int
) -> None:
    source = tmp_path / "timesheets.xlsx"
    xlsx_with(source, {corner: "stray"})
    assert source.stat().st_size < 10_000
    load = run_load("timesheets", "--from", str(source), "--database-url", db_url, "--json")
    assert load.exit_code == (3 if rejected else 0), load.stderr
    summary = json.loads(load.stdout)
    assert (summary["inserted"], summary["rejected"]) == (2, rejected)
    assert load.peak_rss_mb < PEAK_RSS_LIMIT_MB
    assert len(load.stdout) < 2000  # no warning naming thousands of empty columns
    assert load.stderr == ""


def test_xlsx_whitespace_bomb_is_refused(tmp_path: Path, db_url: str) -> None:
    import zipfile

    plain = tmp_path / "plain.xlsx"
    xlsx_with(plain, {})
    source = tmp_path / "timesheets.xlsx"
    with (
        zipfile.ZipFile(plain) as original,
        zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED) as bomb,
    ):
        for info in original.infolist():
            data = original.read(info)
            if info.filename != "xl/worksheets/sheet1.xml":
                bomb.writestr(info, data)
                continue
            head, tail = data.split(b"<sheetData>", 1)
            with bomb.open(info.filename, "w", force_zip64=True) as member:
                member.write(head + b"<sheetData>")
                for _ in range(200):
                    member.write(b" " * 1_000_000)  # 200 MB of whitespace
                member.write(tail)
    assert source.stat().st_size < 2_000_000
    load = run_load("timesheets", "--from", str(source), "--database-url", db_url)
    assert load.exit_code == 1
    assert "zip bomb" in load.stderr and len(load.stderr.splitlines()) == 1
    assert load.peak_rss_mb < PEAK_RSS_LIMIT_MB
