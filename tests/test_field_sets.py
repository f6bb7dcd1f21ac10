"""Records that carry different sets of fields (APIs that omit nulls) load like uniform ones."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, delete, event
from test_load import counts, table_rows, ticket

from otc_pipeline import pipeline
from otc_pipeline.models import Ticket

OPTIONAL = ("TKT-Title", "TKT-Status", "TKT-Team", "TKT-Assigned To User", "TKT-Description")


def left_out(i: int) -> set[str]:
    """The fields record ``i`` omits: a different subset for nearly every record."""
    return {f for j, f in enumerate(OPTIONAL) if (i * 7 + i // 3) >> j & 1}


def uniform(i: int, **fields: Any) -> dict[str, Any]:
    record = ticket(i, **fields)
    return {f: (None if f in left_out(i) else v) for f, v in record.items()}


def varying(i: int, **fields: Any) -> dict[str, Any]:
    return {f: v for f, v in uniform(i, **fields).items() if f not in left_out(i)}


@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_varying_field_sets_give_the_same_rows_as_uniform_records(
    engine: Engine, chunk_size: int
) -> None:
    assert len({tuple(varying(i)) for i in range(1, 61)}) > 20
    summaries = {}
    rows = {}
    for name, make in (("uniform", uniform), ("varying", varying)):
        with engine.begin() as conn:
            conn.execute(delete(Ticket))
        summaries[name] = pipeline.load_view(
            engine, "tickets", [make(i) for i in range(1, 61)], chunk_size=chunk_size
        )
        rows[name] = table_rows(engine, Ticket)
    assert rows["varying"] == rows["uniform"]
    assert counts(summaries["varying"]) == counts(summaries["uniform"]) == (60, 0, 0, 0, 0)


def _assert_new_values_over_old(engine: Engine) -> None:
    """Each row holds the new value of every field its narrower record carried, the old
    value of every other."""
    names = [c.key for c in Ticket.__table__.columns]
    by_id = {row[0]: dict(zip(names, row, strict=True)) for row in table_rows(engine, Ticket)}
    for i in range(1, 41):
        for f in OPTIONAL:
            expected = f"{f} {i}" if f in left_out(i) else f"new {f} {i}"
            assert by_id[i][f] == expected, (i, f)


FULL = [ticket(i, **{f: f"{f} {i}" for f in OPTIONAL}) for i in range(1, 41)]
NARROWER = [varying(i, **{f: f"new {f} {i}" for f in OPTIONAL}) for i in range(1, 41)]


@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_absent_columns_never_blank_held_values(engine: Engine, chunk_size: int) -> None:
    pipeline.load_view(engine, "tickets", FULL)
    summary = pipeline.load_view(engine, "tickets", NARROWER, chunk_size=chunk_size)
    # A record that carries none of the changed fields leaves its row as it was.
    unchanged = sum(1 for i in range(1, 41) if left_out(i) == set(OPTIONAL))
    assert unchanged and counts(summary) == (0, 40 - unchanged, unchanged, 0, 0)
    _assert_new_values_over_old(engine)


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_narrower_repeat_in_a_later_chunk_of_a_first_load_keeps_the_other_fields(
    engine: Engine,
) -> None:
    """A first load from a file merges chunk by chunk: the later record meets the earlier row."""
    summary = pipeline.load_view(engine, "tickets", FULL + NARROWER, chunk_size=40)
    assert counts(summary) == (40, 0, 0, 40, 0)
    _assert_new_values_over_old(engine)


def test_varying_field_sets_take_no_more_statements_than_uniform_records(
    engine: Engine,
) -> None:
    """One statement per chunk and step whatever the sets (it was one per set: 100x slower)."""
    statements = {}
    for name, make in (("uniform", uniform), ("varying", varying)):
        with engine.begin() as conn:
            conn.execute(delete(Ticket))
        seen: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)  # noqa: B023 - read right after this load

        event.listen(engine, "before_cursor_execute", count)
        try:
            records = [make(i) for i in range(1, 201)]
            pipeline.load_view(engine, "tickets", records, chunk_size=50)
            pipeline.load_view(engine, "tickets", records, chunk_size=50)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        statements[name] = len(seen)
    assert statements["varying"] <= statements["uniform"] + 4


def test_varying_records_with_unknown_and_respelled_fields(engine: Engine) -> None:
    """Past the first few sets, records still get their unknown fields named and their
    fields spelled otherwise ('TKT-Title ') matched, as records of one set do."""
    records = []
    for i in range(1, 61):
        record = varying(i, **{"TKT-Title": f"title {i}"})
        record["Extra Field"] = "x"
        if i % 10 == 0 and "TKT-Title" in record:
            record["TKT-Title "] = record.pop("TKT-Title")
        records.append(record)
    summary = pipeline.load_view(engine, "tickets", records)
    assert summary.inserted == 60
    assert any("Extra Field" in w for w in summary.warnings)
    titles = {row[0]: row for row in table_rows(engine, Ticket)}
    names = [c.key for c in Ticket.__table__.columns]
    for i in range(1, 61):
        title = dict(zip(names, titles[i], strict=True))["TKT-Title"]
        assert title == (None if "TKT-Title" in left_out(i) else f"title {i}"), i
