"""Two promises the other tests could miss (each checked by breaking the code once):

- an identical reload leaves rows untouched even where fields are blank (NULL):
  a compare that is not NULL-safe would send, lock and count every such row;
- views are locked one by one: a held view keeps out loads of that view only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select, text, update
from test_load import ticket, timesheet

from otc_pipeline import pipeline, runs
from otc_pipeline.errors import LoadLocked
from otc_pipeline.models import Ticket, Timesheet

_PG_COUNTING = """
CREATE TABLE servicedesk.row_writes (tbl TEXT);
CREATE FUNCTION servicedesk.count_write() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO servicedesk.row_writes VALUES (TG_TABLE_NAME); RETURN NEW; END $$;
CREATE TRIGGER count_tickets AFTER UPDATE ON servicedesk.tickets
  FOR EACH ROW EXECUTE FUNCTION servicedesk.count_write();
CREATE TRIGGER count_timesheets AFTER UPDATE ON servicedesk.timesheets
  FOR EACH ROW EXECUTE FUNCTION servicedesk.count_write();
"""
_SQLITE_COUNTING = [
    "CREATE TABLE row_writes (tbl TEXT)",
    "CREATE TRIGGER count_tickets AFTER UPDATE ON tickets "
    "BEGIN INSERT INTO row_writes VALUES ('tickets'); END",
    "CREATE TRIGGER count_timesheets AFTER UPDATE ON timesheets "
    "BEGIN INSERT INTO row_writes VALUES ('timesheets'); END",
]


@pytest.fixture
def updates_counted(engine: Engine, dialect: str) -> Iterator[None]:
    """A trigger that counts every UPDATE of a ticket or timesheet row (written or not)."""
    with engine.begin() as conn:
        if dialect == "postgresql":
            conn.exec_driver_sql(_PG_COUNTING)
        else:
            for statement in _SQLITE_COUNTING:
                conn.exec_driver_sql(statement)
    yield


def writes(engine: Engine) -> int:
    postgresql = engine.dialect.name == "postgresql"
    table = "servicedesk.row_writes" if postgresql else "row_writes"
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(text(table))).scalar_one())


BLANKS = {"TKT-Team": "", "TKT-Assigned To User": None, "TKT-Description": ""}


@pytest.mark.usefixtures("updates_counted")
@pytest.mark.parametrize("fields", ["uniform", "varying"])
def test_an_identical_reload_with_blank_fields_touches_no_row(engine: Engine, fields: str) -> None:
    tickets = [ticket(i, **BLANKS) for i in range(1, 41)]
    sheets = [timesheet(i, **{"TS-Description": "", "TS-Crm ID": ""}) for i in range(40)]
    if fields == "varying":
        for i, record in enumerate(tickets):  # APIs leave out null fields, each its own set
            for name in list(BLANKS)[: i % 3]:
                del record[name]
    pipeline.load_view(engine, "tickets", tickets, chunk_size=16)
    pipeline.load_view(engine, "timesheets", sheets, chunk_size=16)
    again = pipeline.load_view(engine, "tickets", tickets, chunk_size=16)
    assert (again.unchanged, again.updated, again.inserted) == (40, 0, 0)
    again = pipeline.load_view(engine, "timesheets", sheets, chunk_size=16)
    assert (again.unchanged, again.updated, again.inserted) == (40, 0, 0)
    assert writes(engine) == 0
    with engine.connect() as conn:
        assert conn.scalar(select(Ticket.team).where(Ticket.ticket_id == 1)) is None


@pytest.mark.usefixtures("updates_counted")
def test_a_value_blanked_in_the_source_is_blanked_in_the_table(engine: Engine) -> None:
    pipeline.load_view(engine, "tickets", [ticket(1), ticket(2)])
    summary = pipeline.load_view(engine, "tickets", [ticket(1, **{"TKT-Team": ""}), ticket(2)])
    assert (summary.updated, summary.unchanged) == (1, 1)
    assert writes(engine) == 1
    with engine.connect() as conn:
        assert conn.scalar(select(Ticket.team).where(Ticket.ticket_id == 1)) is None


def test_a_held_view_keeps_out_its_own_loads_only(engine: Engine) -> None:
    with runs.view_lock(engine, "tickets"):
        started = time.monotonic()
        # Another view loads at once; a broken lock (one for all views) fails within a second.
        summary = pipeline.load_view(engine, "timesheets", [timesheet(1)], wait_s=1.0)
        assert summary.status == "success"
        with pytest.raises(LoadLocked):
            pipeline.load_view(engine, "tickets", [ticket(1)], wait_s=0.2)
        assert time.monotonic() - started < 30
    summary = pipeline.load_view(engine, "tickets", [ticket(1)], wait_s=1.0)
    assert summary.status == "success"
    with engine.begin() as conn:  # the rows are there, once each
        conn.execute(update(Timesheet).values(description="seen"))
        assert conn.scalar(select(Ticket.ticket_id)) == 1


def test_a_first_load_that_finds_rows_at_its_first_merge_changes_nothing(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer filled the table between the first load's look and its first merge:
    the load is refused for now (exit 75) and the next run compares."""
    import importlib

    # The module, not the package's load() function of the same name.
    load = importlib.import_module("otc_pipeline.load")
    pipeline.load_view(engine, "tickets", [ticket(1, **{"TKT-Status": "Closed"})])
    monkeypatch.setattr(load, "table_looks_empty", lambda conn, view: True)  # the race
    summary = pipeline.load_view(engine, "tickets", [ticket(1), ticket(2)])
    assert (summary.status, summary.exit_code) == ("failed", 75)
    assert summary.error is not None and "run the load again" in summary.error
    monkeypatch.undo()
    with engine.connect() as conn:
        assert conn.execute(select(Ticket.ticket_id, Ticket.status)).all() == [(1, "Closed")]
    again = pipeline.load_view(engine, "tickets", [ticket(1), ticket(2)])
    assert (again.status, again.inserted, again.updated) == ("success", 1, 1)


def test_a_reload_that_writes_other_than_it_sent_fails_and_commits_nothing(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every compared row sent to the upsert must be written; a miscount is never papered over."""
    from otc_pipeline import merge

    pipeline.load_view(engine, "tickets", [ticket(1), ticket(2)])
    upsert = merge.Merge._upsert

    def one_short(self: merge.Merge, *args: object, **kwargs: object) -> merge.Written:
        written = upsert(self, *args, **kwargs)  # type: ignore[arg-type]
        written.written -= 1 if written.written else 0
        return written

    monkeypatch.setattr(merge.Merge, "_upsert", one_short)
    summary = pipeline.load_view(engine, "tickets", [ticket(1, **{"TKT-Status": "Closed"})])
    assert summary.status == "failed" and "sent to the upsert" in (summary.error or "")
    with engine.connect() as conn:
        assert set(conn.scalars(select(Ticket.status))) == {"Open"}
