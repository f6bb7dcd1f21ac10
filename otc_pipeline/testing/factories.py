"""factory-boy factories for every servicedesk model, with values shaped like real OTC data.

``TicketFactory()`` writes through the current test's session (the
``otc_session`` fixture, or :func:`otc_pipeline.testing.bind_session`);
``TicketFactory.build()`` makes an unsaved object and needs no session.

Useful switches::

    TicketFactory(open=True)        # status New / Assigned / In Progress / ...
    TicketFactory(closed=True)      # status Closed or Incident Resolved, closure date set
    TicketFactory(unassigned=True)  # open, assigned to ' PendingAssignment'
    TicketFactory(with_timesheets=3, with_comments=2)
    TimesheetFactory(ticket=ticket) # logged against that ticket
    TimesheetFactory(orphaned=True) # "TS-Crm ID" of a ticket that does not exist
    seed_factories(42)              # the same data on every run

Generated ticket ids start at :data:`TICKET_ID_BASE`, comment ids at
:data:`COMMENT_ID_BASE`; orphaned rows point at ids from
:data:`ORPHAN_TICKET_ID_BASE`, a range ``TicketFactory`` never uses. Timesheet
dates and start times come from the factory's sequence, so generated entries
never collide on ``timesheets_unique_entry`` whoever logs them and whichever
ticket they point at.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import factory
import factory.random
from factory.alchemy import SQLAlchemyModelFactory

from otc_pipeline.models import Comment, EtlReject, EtlRun, Ticket, Timesheet, UserLookup
from otc_pipeline.testing import current_session
from otc_pipeline.vocabulary import (
    CATEGORIES,
    CLOSED_STATUSES,
    ENGINEERING_TEAMS,
    OPEN_STATUSES,
    PENDING_ASSIGNMENT,
    PLATFORMS,
    SEVERITIES,
    SLA_HOURS,
    TEAMS,
)

__all__ = [
    "ALL_FACTORIES",
    "CLOSED_STATUSES",
    "COMMENT_ID_BASE",
    "CommentFactory",
    "ENGINEERING_TEAMS",
    "EtlRejectFactory",
    "EtlRunFactory",
    "OPEN_STATUSES",
    "ORPHAN_TICKET_ID_BASE",
    "PENDING_ASSIGNMENT",
    "STAFF",
    "TEAMS",
    "TICKET_ID_BASE",
    "TicketFactory",
    "TimesheetFactory",
    "UserLookupFactory",
    "seed_factories",
    "short_username",
]

TICKET_ID_BASE = 4_200_000
ORPHAN_TICKET_ID_BASE = 3_900_000
COMMENT_ID_BASE = 9_300_000

_CATEGORY_WEIGHTS = (40, 25, 20, 10, 5)
_SEVERITY_WEIGHTS = (3, 17, 50, 30)

# (full name, team): the people who work tickets and log time.
STAFF: tuple[tuple[str, str], ...] = (
    ("Dion Jewell", "Cloud - Infrastructure"),
    ("Priya Raman", "Cloud - Infrastructure"),
    ("Marcus Webb", "Cloud - Infrastructure"),
    ("Hannah Cole", "Cloud - Security"),
    ("Tomasz Nowak", "Cloud - Security"),
    ("Grace Okafor", "Cloud - L3 Escalation"),
    ("Samuel Ortiz", "Cloud - L3 Escalation"),
    ("Liam Fraser", "NOC"),
    ("Aisha Khan", "NOC"),
    ("Ben Carter", "NOC"),
    ("Sophie Tran", "Service Desk"),
    ("Ethan Brooks", "Service Desk"),
    ("Chloe Martin", "Service Desk"),
    ("Ravi Patel", "Network Operations"),
    ("Olivia Nguyen", "Network Operations"),
)

# (account name, client name)
ACCOUNTS = (
    ("Harbour City Council", "Harbour City Council"),
    ("Meridian Health", "Meridian Health Group"),
    ("Southern Freight", "Southern Freight Logistics"),
    ("Bluewater Energy", "Bluewater Energy Pty Ltd"),
    ("Kestrel Insurance", "Kestrel Insurance Australia"),
    ("Orro Internal", "Orro"),
)

_HOSTS = ("AZ-PRD-SQL01", "AWS-WEB-03", "VM-FS-02", "CORE-SW-01", "FW-EDGE-02", "DC-DC01")
_TITLES = {
    "Alert": (
        "CPU utilisation above 90% on {host}",
        "Disk C: below 10% free on {host}",
        "Backup job failed on {host}",
        "Host {host} not responding to ping",
    ),
    "Incident": (
        "Users unable to reach {host}",
        "VPN disconnects every few minutes",
        "Outlook not syncing for the finance team",
        "Intermittent packet loss through {host}",
    ),
    "Service Request": (
        "New starter: laptop and accounts",
        "Grant read access to the shared drive",
        "Reset MFA for a user",
        "Add firewall rule on {host}",
    ),
    "Change": (
        "Patch {host} in the maintenance window",
        "Upgrade firmware on {host}",
        "Resize {host} to the next VM size",
    ),
    "Problem": ("Recurring backup failures on {host}", "Root cause: repeated VPN drops"),
}
_COMMENTS = (
    "Investigating, will update shortly.",
    "Restarted the service; monitoring.",
    "Waiting on the customer to confirm.",
    "Escalated to L3 for review.",
    "Change approved by CAB.",
    "Resolved, please confirm and we will close the ticket.",
)
_INTERNAL_WORK = ("Team meeting", "Training", "Documentation", "Monitoring shift", "Admin")

# The first 48 quarter hours from 07:00; 48 and 365 are coprime (see _timesheet_slot).
_DAY_SLOTS = 48
_DAYS_BACK = 365

_rng = random.Random()
_anchor: datetime | None = None


def _now() -> datetime:
    # One "now" per process: timesheet dates derive from it, and a run that
    # crosses midnight must not shift them into each other.
    global _anchor
    if _anchor is None:
        _anchor = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    return _anchor


def short_username(full_name: str) -> str:
    """The OTC short username for a full name: ``Dion Jewell`` -> ``djewell``."""
    parts = full_name.split()
    if not parts:
        return ""
    first, last = parts[0], parts[-1] if len(parts) > 1 else ""
    return re.sub(r"[^a-z0-9]", "", (first[:1] + last).lower())


def _user_id(full_name: str) -> int:
    # Stable per person, like an OTC user id, whatever name a test passes in.
    return 10_000 + zlib.crc32(full_name.encode()) % 90_000


def _timesheet_slot(n: int) -> tuple[datetime, str]:
    # (n mod 48, n mod 365) is distinct for 17,520 consecutive n because 48 and
    # 365 are coprime; each further block of 17,520 moves a year further back.
    # So no two generated entries share date and start time, even for one user
    # on one ticket, and a test that pins the date still gets 48 distinct starts.
    days = n % _DAYS_BACK + _DAYS_BACK * (n // (_DAY_SLOTS * _DAYS_BACK))
    minutes = 7 * 60 + 15 * (n % _DAY_SLOTS)
    day = _now().replace(hour=0, minute=0, second=0) - timedelta(days=days)
    return day, f"{minutes // 60:02d}:{minutes % 60:02d}"


def _add_hours(time_from: str | None, hours: Decimal | None) -> str | None:
    if time_from is None or hours is None:
        return None
    h, m = (int(x) for x in time_from.split(":"))
    end = min(h * 60 + m + int(hours * 60), 23 * 60 + 59)
    return f"{end // 60:02d}:{end % 60:02d}"


def _quarter_hours() -> Decimal:
    # Most entries are short; the long tail reaches a full day.
    quarters = _rng.choices((1, 2, 3, 4, 6, 8, 12, 16, 32), (20, 25, 10, 20, 8, 7, 5, 4, 1))[0]
    return Decimal(quarters) / 4


def _ticket_title(category: str | None) -> str:
    template = _rng.choice(_TITLES.get(category or "", _TITLES["Incident"]))
    return template.format(host=_rng.choice(_HOSTS))


def _recent(max_days: int) -> datetime:
    return _now() - timedelta(seconds=_rng.randrange(max_days * 86_400))


def _ticket_status() -> str:
    return _rng.choices((*OPEN_STATUSES, *CLOSED_STATUSES), (10, 8, 12, 5, 2, 3, 40, 20))[0]


def _assignee(o: Any) -> str:
    return PENDING_ASSIGNMENT if _rng.random() < 0.12 else str(o.assignee[0])


def _is_closed(o: Any) -> bool:
    return o.status in CLOSED_STATUSES


class _OtcFactory(SQLAlchemyModelFactory):
    class Meta:
        abstract = True
        # Looked up on every create, so each test's rows go to its own session;
        # factory-boy copies Meta at class definition, so this must be a callable.
        sqlalchemy_session_factory = current_session
        sqlalchemy_session_persistence = "flush"


class TicketFactory(_OtcFactory):
    """An OTC ticket; ``with_timesheets=N`` / ``with_comments=N`` add linked rows."""

    class Meta:
        model = Ticket

    class Params:
        assignee = factory.LazyFunction(lambda: _rng.choice(STAFF))
        account = factory.LazyFunction(lambda: _rng.choice(ACCOUNTS))
        open = factory.Trait(status=factory.LazyFunction(lambda: _rng.choice(OPEN_STATUSES)))
        closed = factory.Trait(status=factory.LazyFunction(lambda: _rng.choice(CLOSED_STATUSES)))
        # Pending assignment means nobody has picked it up: it is open, as
        # get_team_backlog() expects.
        unassigned = factory.Trait(
            assigned_to_user=PENDING_ASSIGNMENT,
            status=factory.LazyFunction(lambda: _rng.choice(("New", "Assigned"))),
        )

    ticket_id = factory.Sequence(lambda n: TICKET_ID_BASE + n)
    category = factory.LazyFunction(lambda: _rng.choices(CATEGORIES, _CATEGORY_WEIGHTS)[0])
    title = factory.LazyAttribute(lambda o: _ticket_title(o.category))
    status = factory.LazyFunction(_ticket_status)
    severity = factory.LazyFunction(lambda: _rng.choices(SEVERITIES, _SEVERITY_WEIGHTS)[0])
    team = factory.LazyAttribute(lambda o: o.assignee[1])
    assigned_to_user = factory.LazyAttribute(_assignee)
    assigned_to_userid = factory.LazyAttribute(
        lambda o: (
            None
            if o.assigned_to_user in (None, PENDING_ASSIGNMENT)
            else _user_id(o.assigned_to_user)
        )
    )
    created_time = factory.LazyFunction(lambda: _recent(120))
    modified_time = factory.LazyAttribute(
        lambda o: min(_now(), o.created_time + timedelta(minutes=_rng.randrange(5, 20_000)))
    )
    account_name = factory.LazyAttribute(lambda o: o.account[0])
    client_name = factory.LazyAttribute(lambda o: o.account[1])
    account_id = factory.LazyAttribute(lambda o: 500 + ACCOUNTS.index(o.account))
    description = factory.LazyAttribute(lambda o: f"{o.title}. Raised via {o.ticket_source}.")
    platform = factory.LazyFunction(lambda: _rng.choice(PLATFORMS))
    group = factory.LazyAttribute(lambda o: o.team)
    created_by_user = factory.LazyFunction(lambda: _rng.choice(STAFF)[0])
    created_by_userid = factory.LazyAttribute(lambda o: _user_id(o.created_by_user))
    due_date = factory.LazyAttribute(
        lambda o: o.created_time + timedelta(hours=SLA_HOURS.get(o.severity, 24))
    )
    actual_response_date = factory.LazyAttribute(
        lambda o: o.created_time + timedelta(minutes=_rng.randrange(2, 90))
    )
    actual_resolution_date = factory.LazyAttribute(
        lambda o: o.modified_time if _is_closed(o) else None
    )
    closure_date = factory.LazyAttribute(lambda o: o.modified_time if _is_closed(o) else None)
    sla = factory.LazyAttribute(lambda o: f"{SLA_HOURS.get(o.severity, 24)} Hours")
    sla_met = factory.LazyAttribute(
        lambda o: _rng.choice(("Yes", "Yes", "Yes", "No")) if _is_closed(o) else None
    )
    response_met = factory.LazyFunction(lambda: _rng.choice(("Yes", "Yes", "No")))
    resolution_met = factory.LazyAttribute(lambda o: o.sla_met)
    sla_clock_status = factory.LazyAttribute(lambda o: "Stopped" if _is_closed(o) else "Running")
    solution = factory.LazyAttribute(
        lambda o: "Resolved and confirmed with the customer." if _is_closed(o) else None
    )
    root_cause_category = factory.LazyAttribute(
        lambda o: (
            _rng.choice(("Hardware", "Software", "Configuration", "User Error"))
            if _is_closed(o)
            else None
        )
    )
    resolution_change_type = None
    ticket_source = factory.LazyFunction(
        lambda: _rng.choice(("Email", "Portal", "Phone", "Monitoring"))
    )

    @factory.post_generation
    def with_timesheets(obj: Ticket, create: bool, extracted: int | None, **kwargs: Any) -> None:
        if not extracted:
            return
        kwargs.setdefault("ticket", obj)
        if obj.assigned_to_user not in (None, PENDING_ASSIGNMENT):
            # The assignee is who logs time against the ticket.
            kwargs.setdefault("user_full_name", obj.assigned_to_user)
        make = TimesheetFactory.create_batch if create else TimesheetFactory.build_batch
        make(extracted, **kwargs)

    @factory.post_generation
    def with_comments(obj: Ticket, create: bool, extracted: int | None, **kwargs: Any) -> None:
        if not extracted:
            return
        kwargs.setdefault("ticket", obj)
        make = CommentFactory.create_batch if create else CommentFactory.build_batch
        make(extracted, **kwargs)


class TimesheetFactory(_OtcFactory):
    """A work-log entry, for internal work unless ``ticket=`` or ``orphaned=True`` is given."""

    class Meta:
        model = Timesheet

    class Params:
        person = factory.LazyFunction(lambda: _rng.choice(STAFF))
        ticket = None
        slot = factory.Sequence(_timesheet_slot)
        orphaned = factory.Trait(crm_id=factory.Sequence(lambda n: ORPHAN_TICKET_ID_BASE + n))

    user_full_name = factory.LazyAttribute(lambda o: o.person[0])
    user_username = factory.LazyAttribute(lambda o: short_username(o.user_full_name))
    date = factory.LazyAttribute(lambda o: o.slot[0])
    time_from = factory.LazyAttribute(lambda o: o.slot[1])
    hours = factory.LazyFunction(_quarter_hours)
    time_to = factory.LazyAttribute(lambda o: _add_hours(o.time_from, o.hours))
    crm_id = factory.LazyAttribute(lambda o: o.ticket.ticket_id if o.ticket is not None else None)
    category = factory.LazyAttribute(lambda o: "Internal" if o.crm_id is None else "Support")
    sub_category = factory.LazyAttribute(
        lambda o: (
            _rng.choice(_INTERNAL_WORK)
            if o.crm_id is None
            else _rng.choice(("Incident Response", "Change Implementation", "Service Request"))
        )
    )
    type = factory.LazyFunction(
        lambda: _rng.choices(("Normal", "Overtime", "On Call"), (85, 10, 5))[0]
    )
    description = factory.LazyAttribute(
        lambda o: f"Worked on: {o.ticket.title}" if o.ticket is not None else o.sub_category
    )
    account_name = factory.LazyAttribute(
        lambda o: (
            o.ticket.account_name
            if o.ticket is not None
            else ("Orro Internal" if o.crm_id is None else _rng.choice(ACCOUNTS)[0])
        )
    )
    ticket_project_master_code = factory.LazyAttribute(
        lambda o: None if o.crm_id is None else f"TKT{o.crm_id}"
    )
    charge_code = factory.LazyAttribute(lambda o: "INT-000" if o.crm_id is None else "SUP-100")
    billable = factory.LazyAttribute(lambda o: o.crm_id is not None)
    approved = factory.LazyFunction(lambda: _rng.random() < 0.8)
    modified_time = factory.LazyAttribute(lambda o: o.date + timedelta(hours=19))


class CommentFactory(_OtcFactory):
    """A ticket comment; makes its ticket too unless ``ticket=`` or ``orphaned=True`` is given."""

    class Meta:
        model = Comment

    class Params:
        person = factory.LazyFunction(lambda: _rng.choice(STAFF))
        orphaned = False
        # A Trait cannot switch a SubFactory off, so orphans choose before it runs.
        ticket = factory.Maybe("orphaned", None, factory.SubFactory(TicketFactory))

    comment_id = factory.Sequence(lambda n: COMMENT_ID_BASE + n)
    ticket_id = factory.Maybe(
        "orphaned",
        factory.Sequence(lambda n: ORPHAN_TICKET_ID_BASE + n),
        factory.LazyAttribute(lambda o: o.ticket.ticket_id if o.ticket is not None else None),
    )
    comment_text = factory.LazyFunction(lambda: _rng.choice(_COMMENTS))
    user_name = factory.LazyAttribute(lambda o: short_username(o.person[0]))
    user_id = factory.LazyAttribute(lambda o: str(_user_id(o.person[0])))
    owner_type = factory.LazyFunction(lambda: _rng.choices(("Agent", "Contact"), (85, 15))[0])
    created_time = factory.LazyAttribute(
        lambda o: (
            (o.ticket.created_time if o.ticket is not None else _recent(30))
            + timedelta(minutes=_rng.randrange(5, 2_000))
        )
    )
    visible_to_customer = factory.LazyFunction(lambda: _rng.choice(("Yes", "No")))
    comment_type = factory.LazyAttribute(
        lambda o: "Public" if o.visible_to_customer == "Yes" else "Private"
    )
    team = factory.LazyAttribute(lambda o: o.person[1])


# Names for generated user_lookup rows; initials are distinct, so short names
# are too, and none of them is in STAFF (pass full_name= to add a staff member).
_LOOKUP_FIRST = (
    "Alice", "Bruno", "Carmen", "Declan", "Elena", "Farid", "Georgia", "Hugo",
    "Imogen", "Jonah", "Kiri", "Leon", "Maya", "Nikhil", "Orla", "Pavel",
)  # fmt: skip
_LOOKUP_LAST = (
    "Anders", "Bishop", "Castillo", "Doyle", "Eastwood", "Fenwick", "Gallagher", "Hoang",
    "Ishikawa", "Jensen", "Kowalski", "Lindqvist", "Moretti", "Novak", "Osei", "Pereira",
    "Quinlan", "Rossi", "Sandoval", "Takahashi",
)  # fmt: skip


def _lookup_full_name(n: int) -> str:
    per_round = len(_LOOKUP_FIRST) * len(_LOOKUP_LAST)
    first = _LOOKUP_FIRST[n % len(_LOOKUP_FIRST)]
    last = _LOOKUP_LAST[(n % per_round) // len(_LOOKUP_FIRST)]
    rounds = n // per_round
    # Past 320 people, a number keeps both names unique (as OTC does: jsmith2).
    return f"{first} {last}{rounds + 1}" if rounds else f"{first} {last}"


class UserLookupFactory(_OtcFactory):
    """A user_lookup row whose short username is derived from the full name."""

    class Meta:
        model = UserLookup

    class Params:
        manual = factory.Trait(source="manual")

    full_name = factory.Sequence(_lookup_full_name)
    short_username = factory.LazyAttribute(lambda o: short_username(o.full_name))
    email = factory.LazyAttribute(
        lambda o: (
            ".".join(o.full_name.lower().split()[:1] + o.full_name.lower().split()[-1:])
            + "@example.com"
        )
    )
    team = factory.LazyFunction(lambda: _rng.choice(TEAMS))
    source = "auto_timesheet"
    updated_at = factory.LazyFunction(_now)


class EtlRunFactory(_OtcFactory):
    """An etl_metadata row whose counts add up (fetched = the sum of the outcomes)."""

    class Meta:
        model = EtlRun

    class Params:
        duration = factory.LazyFunction(lambda: round(_rng.uniform(0.5, 90.0), 3))
        partial = factory.Trait(
            load_status="partial",
            records_rejected=factory.LazyFunction(lambda: _rng.randint(1, 25)),
        )
        failed = factory.Trait(
            load_status="failed",
            records_inserted=0,
            records_updated=0,
            records_unchanged=0,
            records_duplicates=0,
            records_rejected=0,
            error_message="database error: could not extend file: No space left on device",
        )

    view_name = factory.LazyFunction(lambda: _rng.choice(("tickets", "timesheets", "comments")))
    source = "api"
    load_status = "success"
    records_inserted = factory.LazyFunction(lambda: _rng.randint(0, 2_000))
    records_updated = factory.LazyFunction(lambda: _rng.randint(0, 500))
    records_unchanged = factory.LazyFunction(lambda: _rng.randint(0, 5_000))
    records_duplicates = factory.LazyFunction(lambda: _rng.randint(0, 5))
    records_rejected = 0
    records_errors = factory.LazyAttribute(lambda o: o.records_rejected)
    records_fetched = factory.LazyAttribute(
        lambda o: (
            o.records_inserted
            + o.records_updated
            + o.records_unchanged
            + o.records_duplicates
            + o.records_rejected
        )
    )
    load_start = factory.LazyFunction(lambda: _recent(7))
    load_end = factory.LazyAttribute(lambda o: o.load_start + timedelta(seconds=o.duration))
    load_duration_seconds = factory.LazyAttribute(lambda o: o.duration)
    last_load_time = factory.LazyAttribute(lambda o: o.load_end)
    error_message = None


_REJECTS = {
    "tickets": ("TKT-Created Time", "31/02/2025 09:00", "not a valid date"),
    "timesheets": ("TS-Hours", "1,5h", "not a number"),
    "comments": ("TKTCT-CommentID", "", "key field is blank"),
}


class EtlRejectFactory(_OtcFactory):
    """A rejected source record, attached to a partial run unless ``run=`` is given."""

    class Meta:
        model = EtlReject

    class Params:
        run = factory.SubFactory(EtlRunFactory, partial=True)

    run_id = factory.LazyAttribute(lambda o: o.run.id if o.run is not None else None)
    view_name = factory.LazyAttribute(
        lambda o: o.run.view_name if o.run is not None else "timesheets"
    )
    source_position = factory.Sequence(lambda n: n + 2)  # row 1 is the header
    field = factory.LazyAttribute(lambda o: _REJECTS.get(o.view_name, _REJECTS["timesheets"])[0])
    value = factory.LazyAttribute(lambda o: _REJECTS.get(o.view_name, _REJECTS["timesheets"])[1])
    reason = factory.LazyAttribute(lambda o: _REJECTS.get(o.view_name, _REJECTS["timesheets"])[2])
    raw_record = factory.LazyAttribute(lambda o: json.dumps({o.field: o.value}))


ALL_FACTORIES: tuple[type[Any], ...] = (
    TicketFactory,
    TimesheetFactory,
    CommentFactory,
    UserLookupFactory,
    EtlRunFactory,
    EtlRejectFactory,
)


def seed_factories(seed: int, *, reset_sequences: bool = True) -> None:
    """Make the factories produce the same values on every run from here on.

    Reseeds factory-boy's and Faker's random generator and this module's own,
    and by default restarts every sequence (ids, names, timesheet slots), so
    call it before creating rows in a test, not half-way through.
    """
    factory.random.reseed_random(seed)
    _rng.seed(seed)
    if reset_sequences:
        for factory_class in ALL_FACTORIES:
            factory_class.reset_sequence(0)
