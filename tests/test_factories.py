"""The factory-boy factories: realistic values, keys that never collide, links, seeds."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from otc_pipeline.models import Comment, EtlReject, EtlRun, Ticket, Timesheet, UserLookup
from otc_pipeline.testing import NoTestSession, bind_session
from otc_pipeline.testing import factories as f


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on a fresh migrated database of each dialect, bound to the factories."""
    with Session(engine) as db, bind_session(db):
        yield db


def columns(obj: Any) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__mapper__.column_attrs}


def test_five_hundred_timesheets_never_collide_on_the_unique_entry(session: Session) -> None:
    # The worst case: one person, one ticket, so only date and start time differ.
    f.TimesheetFactory.create_batch(500, user_full_name="Dion Jewell", crm_id=4242)
    f.TimesheetFactory.create_batch(500)
    session.commit()
    keys = session.execute(
        select(Timesheet.user_username, Timesheet.date, Timesheet.time_from, Timesheet.crm_id)
    ).all()
    assert len(keys) == len(set(keys)) == 1000


def test_timesheet_slots_are_unique_far_beyond_a_test_suite() -> None:
    slots = [f._timesheet_slot(n) for n in range(60_000)]
    assert len(set(slots)) == len(slots)
    # A test that pins the date still gets 48 distinct start times.
    assert len({slot[1] for slot in slots[:48]}) == 48


def test_values_have_the_shapes_of_real_otc_data() -> None:
    sheets = f.TimesheetFactory.build_batch(200)
    for sheet in sheets:
        assert sheet.user_username == f.short_username(sheet.user_full_name)
        assert isinstance(sheet.hours, Decimal) and sheet.hours % Decimal("0.25") == 0
        assert Decimal("0.25") <= sheet.hours <= 8
        assert re.fullmatch(r"\d\d:[0-5][05]", sheet.time_from)
        assert re.fullmatch(r"\d\d:\d\d", sheet.time_to) and sheet.time_to > sheet.time_from
        assert sheet.date.hour == sheet.date.minute == 0
    tickets = f.TicketFactory.build_batch(300)
    assert {t.team for t in tickets} <= set(f.TEAMS)
    assert {t.category for t in tickets} >= {"Alert", "Incident", "Service Request"}
    statuses = {t.status for t in tickets}
    assert {"Closed", "Incident Resolved"} <= statuses
    assert statuses & set(f.OPEN_STATUSES)
    assert f.PENDING_ASSIGNMENT in {t.assigned_to_user for t in tickets}
    for ticket in tickets:
        assert ticket.created_time <= ticket.modified_time
        if ticket.assigned_to_user == f.PENDING_ASSIGNMENT:
            assert ticket.assigned_to_userid is None


def test_short_username_is_derived_from_the_full_name() -> None:
    assert f.short_username("Dion Jewell") == "djewell"
    assert f.short_username("Mary-Kate O'Neil") == "moneil"
    sheet = f.TimesheetFactory.build(user_full_name="Grace Okafor")
    assert (sheet.user_username, sheet.user_full_name) == ("gokafor", "Grace Okafor")
    assert f.UserLookupFactory.build(full_name="Dion Jewell").short_username == "djewell"


def test_ticket_traits(session: Session) -> None:
    opened = f.TicketFactory.create_batch(20, open=True)
    closed = f.TicketFactory.create_batch(20, closed=True)
    unassigned = f.TicketFactory.create_batch(20, unassigned=True)
    assert {t.status for t in opened} <= set(f.OPEN_STATUSES)
    assert all(t.closure_date is None for t in opened)
    assert {t.status for t in closed} <= {"Closed", "Incident Resolved"}
    assert all(t.closure_date is not None for t in closed)
    assert {t.assigned_to_user for t in unassigned} == {" PendingAssignment"}
    assert {t.status for t in unassigned} <= set(f.OPEN_STATUSES)


def test_orphaned_rows_point_at_tickets_that_do_not_exist(session: Session) -> None:
    f.TicketFactory.create_batch(5)
    sheets = f.TimesheetFactory.create_batch(5, orphaned=True)
    comment = f.CommentFactory(orphaned=True)
    ticket_ids = set(session.scalars(select(Ticket.ticket_id)))
    assert len(ticket_ids) == 5  # the orphaned comment made no ticket of its own
    orphan_ids = {s.crm_id for s in sheets} | {comment.ticket_id}
    assert None not in orphan_ids and not orphan_ids & ticket_ids


def test_with_timesheets_and_comments_creates_linked_rows(session: Session) -> None:
    ticket = f.TicketFactory.create(
        assigned_to_user="Dion Jewell", with_timesheets=3, with_comments=2
    )
    session.commit()
    session.expire_all()
    assert len(ticket.timesheets) == 3 and len(ticket.comments) == 2
    assert {(s.user_username, s.user_full_name) for s in ticket.timesheets} == {
        ("djewell", "Dion Jewell")
    }
    assert {s.account_name for s in ticket.timesheets} == {ticket.account_name}
    assert all(c.ticket_id == ticket.ticket_id for c in ticket.comments)
    # Keyword arguments reach the linked rows.
    other = f.TicketFactory.create(with_timesheets=2, with_timesheets__hours=Decimal("1.5"))
    assert [s.hours for s in other.timesheets] == [Decimal("1.5")] * 2
    assert session.scalar(select(func.count()).select_from(Ticket)) == 2
    assert session.scalar(select(func.count()).select_from(Comment)) == 2


def test_seeded_factories_reproduce_the_same_data() -> None:
    def generate() -> list[dict[str, Any]]:
        f.seed_factories(1234)
        rows: list[Any] = f.TicketFactory.build_batch(5)
        rows += f.TimesheetFactory.build_batch(5)
        rows += f.CommentFactory.build_batch(3)
        rows += f.UserLookupFactory.build_batch(3)
        rows += f.EtlRunFactory.build_batch(2)
        return [columns(row) for row in rows]

    first = generate()
    assert generate() == first
    f.seed_factories(99)
    assert [columns(t) for t in f.TicketFactory.build_batch(5)] != first[:5]


def test_user_lookup_names_stay_unique_past_the_name_list(session: Session) -> None:
    f.UserLookupFactory.create_batch(400)
    f.UserLookupFactory(full_name="Dion Jewell", manual=True)
    session.commit()
    rows = session.execute(select(UserLookup.short_username, UserLookup.full_name)).all()
    assert len(rows) == 401
    assert all(short == f.short_username(full) for short, full in rows)
    assert (
        session.scalar(select(UserLookup.source).where(UserLookup.short_username == "djewell"))
        == "manual"
    )


def test_run_records_add_up_and_rejects_belong_to_a_run(session: Session) -> None:
    for run in [*f.EtlRunFactory.create_batch(5), f.EtlRunFactory(partial=True)]:
        outcomes = (
            run.records_inserted,
            run.records_updated,
            run.records_unchanged,
            run.records_duplicates,
            run.records_rejected,
        )
        assert run.records_fetched == sum(outcomes)
    failed = f.EtlRunFactory(failed=True)
    assert failed.load_status == "failed" and failed.error_message
    reject = f.EtlRejectFactory()
    session.commit()
    run = session.get(EtlRun, reject.run_id)
    assert run is not None and run.load_status == "partial"
    assert reject.view_name == run.view_name
    assert session.scalar(select(func.count()).select_from(EtlReject)) == 1


def test_creating_without_a_session_says_what_to_do() -> None:
    with pytest.raises(NoTestSession, match="otc_session"):
        f.TicketFactory()
    assert f.TicketFactory.build().ticket_id >= f.TICKET_ID_BASE


def test_factories_and_sample_exports_speak_one_vocabulary(tmp_path: Any) -> None:
    """Dashboards tested against factory rows meet the same words in `otc sample` exports."""
    import json

    from otc_pipeline import vocabulary
    from otc_pipeline.sample import write_sample

    tickets = f.TicketFactory.build_batch(300)
    assert {t.severity for t in tickets} <= set(vocabulary.SEVERITIES)
    write_sample(tmp_path, tickets=300, timesheets=0, comments=0, fmt="json", seed=3)
    records = json.loads((tmp_path / "tickets.json").read_text())["message"]["data"]
    severities = {r["TKT-Severity"] for r in records}
    assert severities <= set(vocabulary.SEVERITIES) and len(severities) > 1
    assert {t.severity for t in tickets} & severities
