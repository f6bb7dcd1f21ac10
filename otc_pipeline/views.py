"""The OTC views: name, model, key and the map from source fields to columns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table

from .errors import NotFound
from .models import TIMESHEETS_SQLITE_KEY, Comment, Ticket, Timesheet


@dataclass(frozen=True)
class View:
    """One OTC view and where its records go."""

    name: str
    table: Table
    key: tuple[str, ...]  # column keys (database names) of the upsert key
    fields: dict[str, str]  # source field name -> column key
    guid: str  # the OTC API view id
    source_time_field: str | None = None  # newest value shown as the view's freshness
    required: tuple[str, ...] = field(default=())  # source fields a record cannot lack
    times_of_day: tuple[str, ...] = field(default=())  # column keys stored as canonical HH:MM
    # The upsert's arbiter where it is not the primary key: a unique constraint on
    # PostgreSQL, the columns of a unique index on SQLite (timesheets' unique entry).
    unique_constraint: str | None = None
    unique_index: tuple[Any, ...] = field(default=())  # columns or expressions
    modified_time: str | None = None  # column key of OTC's modified time: newer rows win
    ticket_reference: str | None = None  # column key naming the row's ticket
    # The view's rows carry user names and ids: the one reliable source for user_lookup.
    refreshes_user_lookup: bool = False
    # Column key of the range a complete source is the truth for (see reconcile.py).
    reconcile_by: str | None = None
    # Whether the API's view is complete for a range of reconcile_by (tickets: it is a
    # window of modified times, complete for no range of creation times).
    api_complete: bool = True

    @property
    def columns(self) -> dict[str, str]:
        """Column key -> source field name."""
        return {column: source for source, column in self.fields.items()}

    @property
    def blank_key_columns(self) -> tuple[str, ...]:
        """Key columns a record may leave blank (NULL is then a value like any other)."""
        required = {self.fields[f] for f in self.required}
        return tuple(k for k in self.key if k not in required)

    def conflict_target(self, dialect: str) -> dict[str, Any]:
        """The upsert's arbiter on this dialect, as on_conflict_do_update() takes it."""
        if self.unique_constraint and dialect == "postgresql":
            return {"constraint": self.unique_constraint}
        if self.unique_index:
            return {"index_elements": list(self.unique_index)}
        return {"index_elements": [self.table.c[k] for k in self.key]}


def _same_name_fields(table: Table, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {c.key: c.key for c in table.columns if c.key not in skip}


_TICKETS = Ticket.__table__
_TIMESHEETS = Timesheet.__table__
_COMMENTS = Comment.__table__
assert isinstance(_TICKETS, Table) and isinstance(_TIMESHEETS, Table)
assert isinstance(_COMMENTS, Table)

TICKETS = View(
    name="tickets",
    table=_TICKETS,
    key=("TKT-Ticket ID",),
    fields=_same_name_fields(_TICKETS),
    guid="dc8570af-facd-4799-9cc0-99641d394fce",
    source_time_field="TKT-Modified Time",
    required=("TKT-Ticket ID",),
    modified_time="TKT-Modified Time",
    reconcile_by="TKT-Created Time",
    api_complete=False,
)

TIMESHEETS = View(
    name="timesheets",
    table=_TIMESHEETS,
    key=("TS-User Username", "TS-Date", "TS-Time From", "TS-Crm ID"),
    fields=_same_name_fields(_TIMESHEETS, skip=("id",)),
    guid="1199f2db-1201-4611-b769-c8a941d3a5bf",
    source_time_field="TS-Date",
    # "TS-Crm ID" is part of the key but may be blank: NULL is a value like any other.
    required=("TS-User Username", "TS-Date", "TS-Time From"),
    times_of_day=("TS-Time From", "TS-Time To"),
    unique_constraint="timesheets_unique_entry",
    unique_index=TIMESHEETS_SQLITE_KEY,
    modified_time="TS-Modified Time",
    ticket_reference="TS-Crm ID",
    refreshes_user_lookup=True,
    reconcile_by="TS-Date",
)

COMMENTS = View(
    name="comments",
    table=_COMMENTS,
    key=("comment_id",),
    fields={
        "TKTCT-CommentID": "comment_id",
        "TKTCT-TicketID": "ticket_id",
        "TKTCT-Comment": "comment_text",
        "TKTCT-UserID": "user_id",
        "TKTCT-Username": "user_name",
        "TKTCT-OwnerType": "owner_type",
        "TKTCT-Created Time": "created_time",
        "TKTCT-VisibleCustomer": "visible_to_customer",
        "TKTCT-Type": "comment_type",
        "TKTCT-Team": "team",
    },
    guid="c59ca238-8249-48b9-bff9-092fd33ce916",
    source_time_field="TKTCT-Created Time",
    required=("TKTCT-CommentID",),
    ticket_reference="ticket_id",
    reconcile_by="created_time",
)

VIEWS: dict[str, View] = {v.name: v for v in (TICKETS, TIMESHEETS, COMMENTS)}
# `otc load all` order: tickets first, so timesheets and comments find their tickets.
VIEW_ORDER = ("tickets", "timesheets", "comments")


def known_view(name: str, *, or_all: bool = False) -> View:
    """The view of this name; the one error every command gives for another name.

    An unknown view is a usage error (exit 2); ``or_all``: the command also takes "all".
    """
    if name not in VIEWS:
        choices = ", ".join(VIEW_ORDER) + (" or all" if or_all else "")
        raise NotFound(f"unknown view {name!r}; use one of {choices}")
    return VIEWS[name]
