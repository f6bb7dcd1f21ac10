"""A reload reads a large JSON export in two halves side by side: the same rows, counts
and rejects as one reader, and a wrong guess of the middle is found out and read whole."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from test_load import (
    _install_refusing_trigger,
    assert_invariant,
    counts,
    table_rows,
    ticket,
    timesheet,
)

from otc_pipeline import pipeline, reading
from otc_pipeline.errors import SourceError
from otc_pipeline.models import EtlReject, EtlRun, Ticket, Timesheet
from otc_pipeline.sources import files
from otc_pipeline.sources.records import RefusedRecord

ENVELOPES = {
    "message": lambda body: '{"message": {"data": [\n' + body + "\n]}}\n",
    "data": lambda body: '{"count": 3, "data": [' + body + '], "more": [{"a": 1}, {"b": 2}]}',
    "bare": lambda body: "[" + body + "]",
}


def write_export(
    path: Path, records: list[Any], envelope: str = "message", separator: str = ",\n"
) -> Path:
    body = separator.join(json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text(ENVELOPES[envelope](body), encoding="utf-8")
    return path


@pytest.fixture
def halves(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Split every JSON export a reload reads; the list records what split_json gave."""
    seen: list[Any] = []

    def spy(path: Path, min_bytes: int) -> Any:
        result = files.split_json(path, min_bytes)
        seen.append(result)
        return result

    monkeypatch.setattr(reading, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(reading, "split_json", spy)
    return seen


# --- the halves themselves ------------------------------------------------------------


@pytest.mark.parametrize("envelope", sorted(ENVELOPES))
@pytest.mark.parametrize("separator", [",", ",\n", " ,\r\n  "])
def test_the_two_halves_hold_every_record_once_in_order(
    tmp_path: Path, envelope: str, separator: str
) -> None:
    records = [
        timesheet(i, **{"TS-Notes": {"nested": [{"a": i}, {"b": "}, {"}]}}) for i in range(301)
    ]
    path = write_export(tmp_path / "t.json", records, envelope, separator)
    split = files.split_json(path, 0)
    assert split is not None
    first, second = split
    read_first = list(files.read_json_part(first, 1))
    read_second = list(files.read_json_part(second, 1000))
    assert [p for p, _ in read_first] == list(range(1, len(read_first) + 1))
    assert [p for p, _ in read_second] == list(range(1000, 1000 + len(read_second)))
    assert 100 < len(read_first) < 200  # near the middle
    assert [r for _, r in read_first + read_second] == [r for _, r in files.read_file(path)]


def _nested_note(rng: random.Random, depth: int) -> Any:
    """An honest nested value whose strings hold what the guard's structure is made of."""
    kind = rng.randrange(6 if depth < 4 else 3)
    if kind == 0:
        return rng.randrange(-(10**12), 10**12)
    if kind == 1:
        alphabet = 'a }{][:,"\\/\n\u00e9\U0001f600'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
    if kind == 2:
        return rng.choice([None, True, False, "}, {", '": "', '}, {"TS-User Username": '])
    if kind in (3, 4):
        # Nested objects may reuse the record's field names: only the record's own count.
        names = ["a", "b:", "}{", '"q"', "TS-Date", "TS-Notes"]
        return {
            rng.choice(names) + str(k): _nested_note(rng, depth + 1)
            for k in range(rng.randrange(0, 4))
        }
    return [_nested_note(rng, depth + 1) for _ in range(rng.randrange(0, 4))]


def _read_in_random_cuts(monkeypatch: pytest.MonkeyPatch, rng: random.Random) -> None:
    """Every JSON part is read in reads of random sizes, as chunk boundaries fall anywhere."""
    read = files._SplicedFile.read

    def cut(self: Any, size: int = -1) -> bytes:
        wanted = rng.choice([1, 2, 7, 64, 500, 4096, 20000, 65536])
        return read(self, wanted if size < 0 else min(size, wanted))

    monkeypatch.setattr(files._SplicedFile, "read", cut)


def _whole_and_halves(path: Path) -> tuple[list[Any], list[Any], list[Any]]:
    split = files.split_json(path, 0)
    assert split is not None
    first, second = split
    return (
        [r for _, r in files.read_file(path)],
        [r for _, r in files.read_json_part(first, 1)],
        [r for _, r in files.read_json_part(second, 1)],
    )


@pytest.mark.parametrize("seed", range(16))
def test_honest_nested_records_are_never_refused_however_split_and_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # Chunks of records with nested values are walked by the guard (its depth bound is
    # loose); each chunk must still reach the key counter once, read whole or in halves.
    rng = random.Random(seed)
    _read_in_random_cuts(monkeypatch, rng)
    records = [
        timesheet(i, **{"TS-Notes": _nested_note(rng, 1)}) for i in range(rng.randrange(30, 120))
    ]
    envelope = sorted(ENVELOPES)[seed % 3]
    separator = [",", ",\n", " ,\r\n  "][seed // 3 % 3]
    body = separator.join(json.dumps(r, ensure_ascii=seed % 2 == 0) for r in records)
    path = tmp_path / "t.json"
    path.write_text(ENVELOPES[envelope](body), encoding="utf-8")
    whole, first, second = _whole_and_halves(path)
    assert whole == records
    assert first + second == records
    assert first and second

    # A field truly named twice in a record of the second half is still refused, named.
    at = rng.randrange(len(first) + len(second) // 2, len(records))
    description = json.dumps(records[at]["TS-Description"])
    doubled = body.replace(
        f'"TS-Description": {description}', f'"TS-Description": {description}, "TS-Date": "x"', 1
    )
    assert doubled != body
    path.write_text(ENVELOPES[envelope](doubled), encoding="utf-8")
    whole, first, second = _whole_and_halves(path)
    assert len(first) <= at  # the record is in the second half
    for read in (whole, first + second):
        refused = [(i, r) for i, r in enumerate(read) if isinstance(r, RefusedRecord)]
        assert [(i, r.field) for i, r in refused] == [(at, "TS-Date")]
        assert "named 2 times" in refused[0][1].reason
        assert read[:at] + read[at + 1 :] == records[:at] + records[at + 1 :]


def test_a_byte_order_mark_is_skipped_by_the_first_half(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([timesheet(i) for i in range(50)]).encode())
    split = files.split_json(path, 0)
    assert split is not None
    read = [r for part in split for _, r in files.read_json_part(part, 1)]
    assert read == [timesheet(i) for i in range(50)]


def test_small_files_and_other_types_are_not_split(tmp_path: Path) -> None:
    path = write_export(tmp_path / "t.json", [timesheet(i) for i in range(50)])
    assert files.split_json(path, path.stat().st_size + 1) is None
    (tmp_path / "t.csv").write_text("TS-User Username\nx\n")
    assert files.split_json(tmp_path / "t.csv", 0) is None
    one = write_export(tmp_path / "one.json", [timesheet(1)])
    assert files.split_json(one, 0) is None  # no comma between two records


def _nested_boundary_past_the_middle(path: Path) -> Path:
    """Two records; the first boundary-like comma past the middle is inside the first one.

    Its unknown field holds an array of objects that open with the records' first field.
    """
    nested = [{"TS-User Username": "x" * 2000}, {"TS-User Username": "y"}]
    records = [
        {**timesheet(1), "TS-Extra": nested},
        timesheet(2, **{"TS-Description": "c" * 1700}),
    ]
    return write_export(path, records)


def test_a_split_inside_a_record_fails_the_first_half(tmp_path: Path) -> None:
    path = _nested_boundary_past_the_middle(tmp_path / "t.json")
    split = files.split_json(path, 0)
    assert split is not None
    first, _ = split
    assert first.end is not None and path.read_bytes()[first.end - 5 : first.end] == b'xxx"}'
    with pytest.raises(SourceError, match="truncated or malformed"):
        list(files.read_json_part(first, 1))


def test_no_text_can_look_like_a_boundary(tmp_path: Path) -> None:
    """A quote in a text is escaped, so '}, {"TS-User Username":' never matches inside one."""
    text = "a" * 2000 + '}, {"TS-User Username": "b"}' + "c" * 10
    records = [timesheet(1, **{"TS-Description": text}), timesheet(2), timesheet(3)]
    path = write_export(path=tmp_path / "t.json", records=records)
    split = files.split_json(path, 0)
    assert split is not None
    read = [r for part in split for _, r in files.read_json_part(part, 1)]
    assert read == records
    assert len(list(files.read_json_part(split[1], 1))) == 2


def test_an_error_in_a_half_says_where_in_the_file(tmp_path: Path) -> None:
    path = write_export(tmp_path / "t.json", [timesheet(i) for i in range(100)])
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - 200])  # truncated
    split = files.split_json(path, 0)
    assert split is not None
    list(files.read_json_part(split[0], 1))
    with pytest.raises(SourceError) as error:
        list(files.read_json_part(split[1], 1))
    assert f"of {size - 200:,} bytes" in str(error.value)
    assert f"after reading {size - 200:,}" in str(error.value)


# --- loads read in halves -------------------------------------------------------------


def _reload_scenario(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A first export, and a second one with new, changed, unchanged, repeated and bad rows.

    The second, in source order: the first's 400 records (every ninth changed; record
    50 with a date that does not exist), with a twin of record 20 just before it; 40
    new records (420 with hours that are no number); then records 3, 5, 150 and 301
    again, changed; then records 60 (the same), 70 (other hours) and the new 500
    without a description. Halfway is near record 222: repeats within and across
    the halves.
    """
    first = [timesheet(i) for i in range(400)]
    second = []
    for i in range(400):
        if i == 20:
            second.append(timesheet(20, **{"TS-Description": "early twin"}))
        if i == 50:
            second.append(timesheet(50, **{"TS-Date": "31/02/2026"}))
        elif i % 9 == 0:
            second.append(timesheet(i, **{"TS-Description": f"changed {i}"}))
        else:
            second.append(timesheet(i))
    second += [timesheet(i) for i in range(400, 440)]
    second[421] = timesheet(420, **{"TS-Hours": "lots"})
    second += [timesheet(i, **{"TS-Description": f"repeated {i}"}) for i in (3, 5, 150, 301)]
    # Narrower records (no description): another column set, compared on its own columns.
    narrow = [timesheet(60), timesheet(70, **{"TS-Hours": "2"}), timesheet(500)]
    second += [{k: v for k, v in r.items() if k != "TS-Description"} for r in narrow]
    return first, second


def _load_twice(
    engine: Engine, tmp_path: Path, first: list[Any], second: list[Any]
) -> tuple[pipeline.RunSummary, list[Any], list[Any]]:
    pipeline.load_view(engine, "timesheets", write_export(tmp_path / "first.json", first))
    summary = pipeline.load_view(
        engine, "timesheets", write_export(tmp_path / "second.json", second), chunk_size=64
    )
    with engine.connect() as conn:
        rejects = conn.execute(
            select(EtlReject.source_position, EtlReject.field, EtlReject.reason)
            .where(EtlReject.run_id == summary.run_id)
            .order_by(EtlReject.source_position)
        ).all()
    rows = [row[1:] for row in table_rows(engine, Timesheet)]  # without the id
    return summary, sorted(rows, key=repr), [tuple(r) for r in rejects]


def test_a_reload_in_halves_matches_one_reader(
    engine: Engine, db_url: str, tmp_path: Path, halves: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _reload_scenario(tmp_path)
    in_halves, rows, rejects = _load_twice(engine, tmp_path, first, second)
    assert halves and halves[-1] is not None  # the reload really was split

    monkeypatch.setattr(reading, "SPLIT_MIN_BYTES", 1 << 60)
    with engine.begin() as conn:  # the same database, emptied
        conn.execute(Timesheet.__table__.delete())
    whole, whole_rows, whole_rejects = _load_twice(engine, tmp_path, first, second)

    assert counts(in_halves) == counts(whole) == (40, 50, 349, 7, 2)
    assert_invariant(in_halves)
    assert rows == whole_rows
    assert rejects == whole_rejects
    assert [(position, field) for position, field, _ in rejects] == [
        (52, "TS-Date"),
        (422, "TS-Hours"),
    ]
    descriptions = {row[10] for row in rows}  # TS-Description
    assert {"repeated 3", "repeated 5", "repeated 150", "repeated 301", "changed 9"} <= descriptions
    assert "early twin" not in descriptions and "work 20" in descriptions
    assert {"work 60", "work 70", None} <= descriptions  # narrower records left them alone


def test_a_refused_row_of_the_second_half_is_stored_at_its_position(
    engine: Engine, dialect: str, tmp_path: Path, halves: list[Any]
) -> None:
    records = [ticket(i) for i in range(1, 201)]
    pipeline.load_view(engine, "tickets", write_export(tmp_path / "a.json", records))
    _install_refusing_trigger(engine, dialect)
    for bad in (7, 180):
        records[bad - 1]["TKT-Title"] = "poison"
    summary = pipeline.load_view(
        engine, "tickets", write_export(tmp_path / "b.json", records), chunk_size=32
    )
    assert halves[-1] is not None
    assert counts(summary) == (0, 0, 198, 0, 2)
    with engine.connect() as conn:
        positions = conn.scalars(
            select(EtlReject.source_position).where(EtlReject.run_id == summary.run_id)
        ).all()
    assert sorted(positions) == [7, 180]


def test_a_wrong_split_is_read_again_whole(
    engine: Engine, tmp_path: Path, halves: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _nested_boundary_past_the_middle(tmp_path / "t.json")
    pipeline.load_view(engine, "timesheets", [timesheet(1, **{"TS-Description": "old"})])
    attempts: list[bool] = []
    chunks = reading.read_chunks

    def spy(plan: reading.ReadPlan) -> Any:
        attempts.append(plan.halves is not None)
        return chunks(plan)

    monkeypatch.setattr(pipeline, "read_chunks", spy)
    summary = pipeline.load_view(engine, "timesheets", path)
    assert halves[-1] is not None and attempts == [True, False]  # split, refuted, read whole
    assert (summary.status, counts(summary)) == ("success", (1, 1, 0, 0, 0))
    assert_invariant(summary)
    assert summary.warnings[0] == "unknown fields ignored: 'TS-Extra'"
    with engine.connect() as conn:
        descriptions = sorted(conn.scalars(select(Timesheet.description)))
        runs = conn.scalar(select(func.count()).select_from(EtlRun))
    assert descriptions == ["c" * 1700, "work 1"]
    assert runs == 2  # one run record for the load, whatever it took


@pytest.mark.parametrize("broken", ["first half", "second half"])
def test_a_broken_export_read_in_halves_fails_and_changes_nothing(
    engine: Engine, tmp_path: Path, halves: list[Any], broken: str
) -> None:
    records = [ticket(i) for i in range(1, 101)]
    pipeline.load_view(engine, "tickets", records)
    before = table_rows(engine, Ticket)
    path = write_export(
        tmp_path / "t.json", [ticket(i, **{"TKT-Title": "new"}) for i in range(1, 101)]
    )
    raw = path.read_bytes()
    if broken == "first half":
        path.write_bytes(raw.replace(b'"TKT-Ticket ID": "10"', b'"TKT-Ticket ID" "10"'))
    else:
        path.write_bytes(raw[: len(raw) - 300])
    summary = pipeline.load_view(engine, "tickets", path)
    assert halves[-1] is not None
    assert summary.status == "failed"
    assert "JSON is truncated or malformed" in (summary.error or "")
    assert table_rows(engine, Ticket) == before
    with engine.connect() as conn:
        status = conn.scalar(select(EtlRun.load_status).where(EtlRun.id == summary.run_id))
    assert status == "failed"


def test_a_first_load_reads_from_one_reader(
    engine: Engine, tmp_path: Path, halves: list[Any]
) -> None:
    """Into an empty table chunks are merged as they come, so they must come in order."""
    path = write_export(tmp_path / "t.json", [timesheet(i) for i in range(200)])
    summary = pipeline.load_view(engine, "timesheets", path, chunk_size=16)
    assert counts(summary) == (200, 0, 0, 0, 0)
    assert halves == []


def test_an_identical_reload_in_halves_touches_no_row(
    engine: Engine, dialect: str, tmp_path: Path, halves: list[Any]
) -> None:
    """Not rewritten, not even locked (an upsert that skips a row still locks it)."""
    records = [ticket(i) for i in range(1, 151)]
    records += [
        {k: v for k, v in ticket(i).items() if k != "TKT-Description"} for i in range(151, 201)
    ]
    path = write_export(tmp_path / "t.json", records)
    pipeline.load_view(engine, "tickets", path)
    if dialect == "postgresql":
        # A rewritten row gets a new xmin; a locked one an xmax.
        query = text('SELECT "TKT-Ticket ID", xmin::text, xmax::text FROM servicedesk.tickets')
    else:
        query = text('SELECT "TKT-Ticket ID", rowid FROM tickets')
    with engine.connect() as conn:
        before = sorted(conn.execute(query).all())
    summary = pipeline.load_view(engine, "tickets", path, chunk_size=32)
    assert halves[-1] is not None
    assert counts(summary) == (0, 0, 200, 0, 0)
    with engine.connect() as conn:
        assert sorted(conn.execute(query).all()) == before
