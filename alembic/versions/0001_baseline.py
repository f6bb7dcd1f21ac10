"""Baseline: the legacy servicedesk database as the old scripts left it.

That is BEFORE the timesheets clean-up: timesheets has no key and no unique
entry (and may hold duplicates), etl_metadata has its original columns only.
Every name is the legacy one that analysts and BI reports query.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-01-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_baseline"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def schema_for(bind: sa.engine.Connection) -> str | None:
    return "servicedesk" if bind.dialect.name == "postgresql" else None


def text_columns(*names: str) -> list[sa.Column[str]]:
    return [sa.Column(name, sa.Text) for name in names]


def timesheet_columns() -> list[sa.Column[object]]:
    """The legacy timesheet columns, in the legacy order (shared with later revisions)."""
    return [
        sa.Column("TS-User Username", sa.Text),
        sa.Column("TS-User Full Name", sa.Text),
        sa.Column("TS-Date", sa.DateTime),
        sa.Column("TS-Time From", sa.Text),
        sa.Column("TS-Time To", sa.Text),
        sa.Column("TS-Hours", sa.Numeric),
        sa.Column("TS-Category", sa.Text),
        sa.Column("TS-Sub Category", sa.Text),
        sa.Column("TS-Type", sa.Text),
        sa.Column("TS-Crm ID", sa.Integer),
        sa.Column("TS-Description", sa.Text),
        sa.Column("TS-Account Name", sa.Text),
        sa.Column("TS-Ticket Project Master Code", sa.Text),
        sa.Column("TS-Notes", sa.Text),
        sa.Column("TS-Account Selcom", sa.Text),
        sa.Column("TS-Costcentre", sa.Text),
        sa.Column("TS-Charge Code", sa.Text),
        sa.Column("TS-Client Bill Code", sa.Text),
        sa.Column("TS-Billable", sa.Boolean),
        sa.Column("TS-Approved", sa.Boolean),
        sa.Column("TS-Modified Time", sa.DateTime),
    ]


TIMESHEET_INDEXES = {
    "idx_timesheets_crm_id": ["TS-Crm ID"],
    "idx_timesheets_user": ["TS-User Username"],
    "idx_timesheets_date": ["TS-Date"],
    "idx_timesheets_user_date": ["TS-User Username", "TS-Date"],
}


def upgrade() -> None:
    schema = schema_for(op.get_bind())

    op.create_table(
        "tickets",
        sa.Column("TKT-Ticket ID", sa.Integer, autoincrement=False, nullable=False),
        *text_columns(
            "TKT-Title",
            "TKT-Status",
            "TKT-Severity",
            "TKT-Category",
            "TKT-Team",
            "TKT-Assigned To User",
        ),
        sa.Column("TKT-Created Time", sa.DateTime),
        sa.Column("TKT-Modified Time", sa.DateTime),
        *text_columns(
            "TKT-Account Name", "TKT-Client Name", "TKT-Description", "TKT-Platform", "TKT-Group"
        ),
        sa.Column("TKT-Assigned To Userid", sa.Integer),
        sa.Column("TKT-Created By User", sa.Text),
        sa.Column("TKT-Created By Userid", sa.Integer),
        sa.Column("TKT-Account Id", sa.Integer),
        sa.Column("TKT-Actual Resolution Date", sa.DateTime),
        sa.Column("TKT-Closure Date", sa.DateTime),
        sa.Column("TKT-Due Date", sa.DateTime),
        sa.Column("TKT-Actual Response Date", sa.DateTime),
        *text_columns(
            "TKT-SLA",
            "TKT-SLA Met",
            "TKT-Response Met",
            "TKT-Resolution Met",
            "TKT-SLA Clock Status",
            "TKT-Solution",
            "TKT-Root Cause Category",
            "TKT-Resolution/Change Type",
            "TKT-Ticket Source",
        ),
        sa.PrimaryKeyConstraint("TKT-Ticket ID", name="tickets_pkey"),
        schema=schema,
    )
    for name, columns in {
        "idx_tickets_team": ["TKT-Team"],
        "idx_tickets_status": ["TKT-Status"],
        "idx_tickets_status_team": ["TKT-Status", "TKT-Team"],
        "idx_tickets_assigned_user": ["TKT-Assigned To User"],
        "idx_tickets_modified_time": ["TKT-Modified Time"],
        "idx_tickets_created_time": ["TKT-Created Time"],
    }.items():
        op.create_index(name, "tickets", columns, schema=schema)

    # No primary key, no unique entry: duplicates are possible, as in production.
    op.create_table("timesheets", *timesheet_columns(), schema=schema)
    for name, columns in TIMESHEET_INDEXES.items():
        op.create_index(name, "timesheets", columns, schema=schema)

    op.create_table(
        "comments",
        sa.Column("comment_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("ticket_id", sa.Integer),
        *text_columns("comment_text", "user_id", "user_name", "owner_type"),
        sa.Column("created_time", sa.DateTime),
        *text_columns("visible_to_customer", "comment_type", "team"),
        sa.PrimaryKeyConstraint("comment_id", name="comments_pkey"),
        schema=schema,
    )
    op.create_index("idx_comments_ticket_id", "comments", ["ticket_id"], schema=schema)
    op.create_index("idx_comments_user_name", "comments", ["user_name"], schema=schema)
    op.create_index("idx_comments_created_time", "comments", ["created_time"], schema=schema)

    op.create_table(
        "user_lookup",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("short_username", sa.Text, nullable=False),
        sa.Column("full_name", sa.Text, nullable=False),
        *text_columns("email", "team", "source"),
        sa.Column("updated_at", sa.DateTime, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="user_lookup_pkey"),
        sa.UniqueConstraint("short_username", name="user_lookup_short_username_key"),
        sa.UniqueConstraint("full_name", name="user_lookup_full_name_unique"),
        schema=schema,
    )

    op.create_table(
        "etl_metadata",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("view_name", sa.Text, nullable=False),
        sa.Column("records_fetched", sa.Integer),
        sa.Column("records_inserted", sa.Integer),
        sa.Column("records_updated", sa.Integer),
        sa.Column("load_status", sa.Text),
        sa.Column("load_duration_seconds", sa.Numeric),
        sa.Column("last_load_time", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="etl_metadata_pkey"),
        schema=schema,
    )
    op.create_index("idx_etl_metadata_view", "etl_metadata", ["view_name"], schema=schema)


def downgrade() -> None:
    schema = schema_for(op.get_bind())
    for table in ("etl_metadata", "user_lookup", "comments", "timesheets", "tickets"):
        # Dropping a table drops its indexes with it.
        op.drop_table(table, schema=schema)
