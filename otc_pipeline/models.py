"""Declarative models for the servicedesk database.

Every table, column, constraint and index keeps its legacy name (analysts and
BI reports query them); Python attributes are snake_case. The models live in
schema ``servicedesk``; on SQLite the engine maps that schema away
(see :mod:`otc_pipeline.db`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    Text,
    UniqueConstraint,
    func,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, foreign, mapped_column, relationship

SCHEMA = "servicedesk"

TIMESHEETS_KEY = ("TS-User Username", "TS-Date", "TS-Time From", "TS-Crm ID")


class Status(StrEnum):
    """A run's status (etl_metadata.load_status); a summary's may also be DRY_RUN or MISSING."""

    RUNNING = "running"
    SUCCESS = "success"
    PARTIAL = "partial"  # committed, with rejects
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # its process stopped; marked by the next load of the view
    DRY_RUN = "dry-run"  # a summary only: nothing was written
    MISSING = "missing"  # a summary only: `load all` found no export of the view


COMMITTED = (Status.SUCCESS, Status.PARTIAL)  # runs whose rows are in the tables
ENDED_BADLY = (Status.FAILED, Status.INTERRUPTED)


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class _TicketColumns:
    """The ticket columns but its key, shared by the table and its removed rows."""

    title: Mapped[str | None] = mapped_column("TKT-Title", Text)
    status: Mapped[str | None] = mapped_column("TKT-Status", Text)
    severity: Mapped[str | None] = mapped_column("TKT-Severity", Text)
    category: Mapped[str | None] = mapped_column("TKT-Category", Text)
    team: Mapped[str | None] = mapped_column("TKT-Team", Text)
    assigned_to_user: Mapped[str | None] = mapped_column("TKT-Assigned To User", Text)
    created_time: Mapped[datetime | None] = mapped_column("TKT-Created Time", DateTime)
    modified_time: Mapped[datetime | None] = mapped_column("TKT-Modified Time", DateTime)
    account_name: Mapped[str | None] = mapped_column("TKT-Account Name", Text)
    client_name: Mapped[str | None] = mapped_column("TKT-Client Name", Text)
    description: Mapped[str | None] = mapped_column("TKT-Description", Text)
    platform: Mapped[str | None] = mapped_column("TKT-Platform", Text)
    group: Mapped[str | None] = mapped_column("TKT-Group", Text)
    assigned_to_userid: Mapped[int | None] = mapped_column("TKT-Assigned To Userid", Integer)
    created_by_user: Mapped[str | None] = mapped_column("TKT-Created By User", Text)
    created_by_userid: Mapped[int | None] = mapped_column("TKT-Created By Userid", Integer)
    account_id: Mapped[int | None] = mapped_column("TKT-Account Id", Integer)
    actual_resolution_date: Mapped[datetime | None] = mapped_column(
        "TKT-Actual Resolution Date", DateTime
    )
    closure_date: Mapped[datetime | None] = mapped_column("TKT-Closure Date", DateTime)
    due_date: Mapped[datetime | None] = mapped_column("TKT-Due Date", DateTime)
    actual_response_date: Mapped[datetime | None] = mapped_column(
        "TKT-Actual Response Date", DateTime
    )
    sla: Mapped[str | None] = mapped_column("TKT-SLA", Text)
    sla_met: Mapped[str | None] = mapped_column("TKT-SLA Met", Text)
    response_met: Mapped[str | None] = mapped_column("TKT-Response Met", Text)
    resolution_met: Mapped[str | None] = mapped_column("TKT-Resolution Met", Text)
    sla_clock_status: Mapped[str | None] = mapped_column("TKT-SLA Clock Status", Text)
    solution: Mapped[str | None] = mapped_column("TKT-Solution", Text)
    root_cause_category: Mapped[str | None] = mapped_column("TKT-Root Cause Category", Text)
    resolution_change_type: Mapped[str | None] = mapped_column("TKT-Resolution/Change Type", Text)
    ticket_source: Mapped[str | None] = mapped_column("TKT-Ticket Source", Text)


class Ticket(_TicketColumns, Base):
    """One OTC ticket, keyed by its OTC ticket id."""

    __tablename__ = "tickets"
    __table_args__ = (
        Index("idx_tickets_team", "TKT-Team"),
        Index("idx_tickets_status", "TKT-Status"),
        Index("idx_tickets_status_team", "TKT-Status", "TKT-Team"),
        Index("idx_tickets_assigned_user", "TKT-Assigned To User"),
        Index("idx_tickets_modified_time", "TKT-Modified Time"),
        Index("idx_tickets_created_time", "TKT-Created Time"),
    )

    ticket_id: Mapped[int] = mapped_column(
        "TKT-Ticket ID", Integer, primary_key=True, autoincrement=False
    )

    # No foreign keys: most timesheets point at tickets that are not loaded.
    timesheets: Mapped[list[Timesheet]] = relationship(
        primaryjoin=lambda: Ticket.ticket_id == foreign(Timesheet.crm_id),
        viewonly=True,
        lazy="select",
    )
    comments: Mapped[list[Comment]] = relationship(
        primaryjoin=lambda: Ticket.ticket_id == foreign(Comment.ticket_id),
        viewonly=True,
        lazy="select",
    )


class _TimesheetColumns:
    """The timesheet columns, shared by the table and its dedup archive."""

    user_username: Mapped[str | None] = mapped_column("TS-User Username", Text)
    user_full_name: Mapped[str | None] = mapped_column("TS-User Full Name", Text)
    date: Mapped[datetime | None] = mapped_column("TS-Date", DateTime)
    time_from: Mapped[str | None] = mapped_column("TS-Time From", Text)
    time_to: Mapped[str | None] = mapped_column("TS-Time To", Text)
    hours: Mapped[Decimal | None] = mapped_column("TS-Hours", Numeric)
    category: Mapped[str | None] = mapped_column("TS-Category", Text)
    sub_category: Mapped[str | None] = mapped_column("TS-Sub Category", Text)
    type: Mapped[str | None] = mapped_column("TS-Type", Text)
    crm_id: Mapped[int | None] = mapped_column("TS-Crm ID", Integer)
    description: Mapped[str | None] = mapped_column("TS-Description", Text)
    account_name: Mapped[str | None] = mapped_column("TS-Account Name", Text)
    ticket_project_master_code: Mapped[str | None] = mapped_column(
        "TS-Ticket Project Master Code", Text
    )
    notes: Mapped[str | None] = mapped_column("TS-Notes", Text)
    account_selcom: Mapped[str | None] = mapped_column("TS-Account Selcom", Text)
    costcentre: Mapped[str | None] = mapped_column("TS-Costcentre", Text)
    charge_code: Mapped[str | None] = mapped_column("TS-Charge Code", Text)
    client_bill_code: Mapped[str | None] = mapped_column("TS-Client Bill Code", Text)
    billable: Mapped[bool | None] = mapped_column("TS-Billable", Boolean)
    approved: Mapped[bool | None] = mapped_column("TS-Approved", Boolean)
    modified_time: Mapped[datetime | None] = mapped_column("TS-Modified Time", DateTime)


class Timesheet(_TimesheetColumns, Base):
    """One work-log entry; unique per user, date, start time and ticket (NULL ticket included)."""

    __tablename__ = "timesheets"
    __table_args__ = (
        # PostgreSQL 15+: NULLS NOT DISTINCT makes a NULL "TS-Crm ID" a value like any
        # other, so reloading a NULL-ticket entry updates it instead of adding a copy.
        UniqueConstraint(
            *TIMESHEETS_KEY,
            name="timesheets_unique_entry",
            postgresql_nulls_not_distinct=True,
        ).ddl_if(dialect="postgresql"),
        Index("idx_timesheets_crm_id", "TS-Crm ID"),
        Index("idx_timesheets_user", "TS-User Username"),
        Index("idx_timesheets_date", "TS-Date"),
        Index("idx_timesheets_user_date", "TS-User Username", "TS-Date"),
    )

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)


# SQLite has no NULLS NOT DISTINCT: a unique index over ifnull("TS-Crm ID", '') does the
# same job under the same name, since '' never equals an integer ticket id. The upsert's
# conflict target on SQLite names exactly these expressions.
_ts = Timesheet.__table__.c
TIMESHEETS_SQLITE_KEY = (
    _ts["TS-User Username"],
    _ts["TS-Date"],
    _ts["TS-Time From"],
    # literal_column, not a bound "": the ON CONFLICT target must repeat the index text.
    func.ifnull(_ts["TS-Crm ID"], literal_column("''")),
)
Index("timesheets_unique_entry", *TIMESHEETS_SQLITE_KEY, unique=True).ddl_if(dialect="sqlite")


class TimesheetArchive(_TimesheetColumns, Base):
    """Timesheet rows the dedup migration removed as duplicates; downgrade restores them."""

    __tablename__ = "timesheets_dedup_archive"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kept_id: Mapped[int] = mapped_column(Integer)
    archived_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())


class TimesheetTimeSpelling(Base):
    """The times of day a row held before 0005_canonical_times rewrote or archived it.

    Only that revision's downgrade reads it: it gives the rows their spellings back.
    """

    __tablename__ = "timesheets_time_spellings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time_from: Mapped[str | None] = mapped_column("TS-Time From", Text)
    time_to: Mapped[str | None] = mapped_column("TS-Time To", Text)


class _CommentColumns:
    """The comment columns but its key, shared by the table and its removed rows."""

    ticket_id: Mapped[int | None] = mapped_column(Integer)
    comment_text: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    user_name: Mapped[str | None] = mapped_column(Text)
    owner_type: Mapped[str | None] = mapped_column(Text)
    created_time: Mapped[datetime | None] = mapped_column(DateTime)
    visible_to_customer: Mapped[str | None] = mapped_column(Text)
    comment_type: Mapped[str | None] = mapped_column(Text)
    team: Mapped[str | None] = mapped_column(Text)


class Comment(_CommentColumns, Base):
    """One ticket comment."""

    __tablename__ = "comments"
    __table_args__ = (
        Index("idx_comments_ticket_id", "ticket_id"),
        Index("idx_comments_user_name", "user_name"),
        Index("idx_comments_created_time", "created_time"),
    )

    comment_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)

    ticket: Mapped[Ticket | None] = relationship(
        primaryjoin=lambda: foreign(Comment.ticket_id) == Ticket.ticket_id,
        viewonly=True,
    )


class UserLookup(Base):
    """Short username ⇄ full name; rows with source 'manual' are never overwritten."""

    __tablename__ = "user_lookup"
    __table_args__ = (
        UniqueConstraint("short_username", name="user_lookup_short_username_key"),
        UniqueConstraint("full_name", name="user_lookup_full_name_unique"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    short_username: Mapped[str] = mapped_column(Text)
    full_name: Mapped[str] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    team: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, server_default=func.now())


class EtlRun(Base):
    """One load of one view (table etl_metadata): counts, timing, status."""

    __tablename__ = "etl_metadata"
    __table_args__ = (Index("idx_etl_metadata_view", "view_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    view_name: Mapped[str] = mapped_column(Text)
    records_fetched: Mapped[int | None] = mapped_column(Integer)
    records_inserted: Mapped[int | None] = mapped_column(Integer)
    records_updated: Mapped[int | None] = mapped_column(Integer)
    load_status: Mapped[str | None] = mapped_column(Text)
    load_duration_seconds: Mapped[float | None] = mapped_column(Numeric)
    last_load_time: Mapped[datetime | None] = mapped_column(DateTime)
    # Added by hand to some legacy databases; the extension migration adds them elsewhere.
    load_start: Mapped[datetime | None] = mapped_column(DateTime)
    load_end: Mapped[datetime | None] = mapped_column(DateTime)
    records_errors: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    # otc-pipeline's own.
    records_unchanged: Mapped[int | None] = mapped_column(Integer)
    records_duplicates: Mapped[int | None] = mapped_column(Integer)
    records_rejected: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[str | None] = mapped_column(Text)
    latest_source_time: Mapped[datetime | None] = mapped_column(DateTime)
    # Records older (by modified time) than the row held, and rows moved out by a reconcile.
    stale: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    removed: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    rejects: Mapped[list[EtlReject]] = relationship(back_populates="run", viewonly=True)


class EtlReject(Base):
    """A source record that was not loaded, with the reason and the record as received."""

    __tablename__ = "etl_rejects"
    __table_args__ = (Index("idx_etl_rejects_run", "run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey(f"{SCHEMA}.etl_metadata.id"))
    view_name: Mapped[str] = mapped_column(Text)
    source_position: Mapped[int | None] = mapped_column(Integer)
    field: Mapped[str | None] = mapped_column(Text)
    value: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    raw_record: Mapped[str | None] = mapped_column(Text)

    run: Mapped[EtlRun] = relationship(back_populates="rejects", viewonly=True)


# --- rows a reconcile moved out of the live tables (otc_pipeline.removal) --------------


class _Removed:
    """Which run moved a row out of its live table, when (naive UTC, as etl_metadata) and why.

    No key of the live table here: the same key may be removed, loaded again and
    removed again, each time a row of its own.
    """

    removed_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # etl_metadata.id, without a foreign key: `otc prune` may remove the run record,
    # never the rows the run moved out.
    removed_run_id: Mapped[int] = mapped_column(Integer)
    removed_at: Mapped[datetime] = mapped_column(DateTime)
    removed_reason: Mapped[str] = mapped_column(Text)


class TicketRemoved(_TicketColumns, _Removed, Base):
    """A ticket a reconcile moved out of tickets; `otc removed restore` puts it back."""

    __tablename__ = "tickets_removed"
    __table_args__ = (Index("idx_tickets_removed_run", "removed_run_id"),)

    ticket_id: Mapped[int] = mapped_column("TKT-Ticket ID", Integer, autoincrement=False)


class TimesheetRemoved(_TimesheetColumns, _Removed, Base):
    """A timesheet a reconcile moved out of timesheets, with its id (restored under it)."""

    __tablename__ = "timesheets_removed"
    __table_args__ = (Index("idx_timesheets_removed_run", "removed_run_id"),)

    id: Mapped[int] = mapped_column(Integer, autoincrement=False)


class CommentRemoved(_CommentColumns, _Removed, Base):
    """A comment a reconcile moved out of comments."""

    __tablename__ = "comments_removed"
    __table_args__ = (Index("idx_comments_removed_run", "removed_run_id"),)

    comment_id: Mapped[int] = mapped_column(Integer, autoincrement=False)
