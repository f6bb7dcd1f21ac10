"""etl_metadata extension and etl_rejects.

etl_metadata gains the columns some legacy databases got by hand (load_start,
load_end, records_errors, error_message: added only where missing) and
otc-pipeline's own counts and details. etl_rejects keeps every rejected record.

Downgrade drops etl_rejects and every etl_metadata column beyond the original
ones, including hand-added legacy columns that existed before the upgrade
(the schema cannot tell them apart afterwards).

Revision ID: 0003_etl_extension
Revises: 0002_timesheets_dedup
Create Date: 2026-01-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_etl_extension"
down_revision: str | Sequence[str] | None = "0002_timesheets_dedup"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def schema_for(bind: sa.engine.Connection) -> str | None:
    return "servicedesk" if bind.dialect.name == "postgresql" else None


def new_columns() -> list[sa.Column[object]]:
    return [
        # Added by hand to some legacy databases.
        sa.Column("load_start", sa.DateTime),
        sa.Column("load_end", sa.DateTime),
        sa.Column("records_errors", sa.Integer),
        sa.Column("error_message", sa.Text),
        # otc-pipeline's own.
        sa.Column("records_unchanged", sa.Integer),
        sa.Column("records_duplicates", sa.Integer),
        sa.Column("records_rejected", sa.Integer),
        sa.Column("source", sa.Text),
        sa.Column("warnings", sa.Text),
        sa.Column("latest_source_time", sa.DateTime),
    ]


def upgrade() -> None:
    bind = op.get_bind()
    schema = schema_for(bind)
    existing = {c["name"] for c in sa.inspect(bind).get_columns("etl_metadata", schema=schema)}
    for column in new_columns():
        if column.name not in existing:
            op.add_column("etl_metadata", column, schema=schema)

    op.create_table(
        "etl_rejects",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("view_name", sa.Text, nullable=False),
        sa.Column("source_position", sa.Integer),
        sa.Column("field", sa.Text),
        sa.Column("value", sa.Text),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw_record", sa.Text),
        sa.PrimaryKeyConstraint("id", name="etl_rejects_pkey"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            [f"{schema}.etl_metadata.id" if schema else "etl_metadata.id"],
            name="etl_rejects_run_id_fkey",
        ),
        schema=schema,
    )
    op.create_index("idx_etl_rejects_run", "etl_rejects", ["run_id"], schema=schema)


def downgrade() -> None:
    bind = op.get_bind()
    schema = schema_for(bind)
    op.drop_table("etl_rejects", schema=schema)
    existing = {c["name"] for c in sa.inspect(bind).get_columns("etl_metadata", schema=schema)}
    # SQLite drops columns by recreating the table; batch does that and keeps the index.
    with op.batch_alter_table("etl_metadata", schema=schema) as batch:
        for column in new_columns():
            if column.name in existing:
                batch.drop_column(column.name)
