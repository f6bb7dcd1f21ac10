"""Chunked upserts with exact counts, for one view inside one transaction.

How a load moves rows (one transaction, owned by the caller):

1. **Stage**: each parsed chunk goes into a temporary table shaped like the
   view's table plus the source position and the record's column set — by
   COPY on PostgreSQL (measured fastest, field-notes) and executemany on SQLite.
2. **Deduplicate**: within one load the last occurrence of a key wins; the
   earlier ones are deleted from the stage and counted as duplicates. Doing it
   in the database keeps memory flat however large the export.
3. **Drop unchanged**: staged rows the table already holds exactly are deleted
   from the stage and counted as unchanged, so they are never touched.
4. **Merge**: per staged chunk, ``insert().from_select(...).on_conflict_do_update()``
   with a WHERE that skips rows whose values did not change (a safety net for
   rows changed meanwhile). Only the columns the source carried are written.
   A chunk the database refuses is retried in halves inside savepoints until
   the refused rows are isolated as rejects; the rest loads.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    Table,
    and_,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from .models import TIMESHEETS_SQLITE_KEY, EtlReject
from .parse import Plan, Reject
from .views import View

POSITION = "_otc_position"
COLUMN_SET = "_otc_column_set"


@dataclass
class LoadCounts:
    """Exact counts of one load; fetched == the sum of the other five."""

    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class StagedGroup:
    """Rows of one chunk that carry the same columns, ready for the stage table.

    Each row starts with its column set and source position. PostgreSQL gets them
    as CSV text for COPY, SQLite as Python values for executemany.
    """

    columns: tuple[str, ...]
    column_set: int
    first: int
    last: int
    csv_text: str | None = None
    rows: list[tuple[Any, ...]] | None = None


@dataclass
class ParsedChunk:
    """One chunk of a source, parsed: its groups of rows, its rejects, how many records."""

    groups: list[StagedGroup]
    rejects: list[Reject]
    records: int
    unknown_fields: frozenset[str] = frozenset()


class ChunkEncoder:
    """Groups parsed rows by the columns they carry and encodes them for the stage.

    Records of one source nearly always share one set of fields; grouping lets
    each group travel with exactly its own columns, so a narrower record never
    blanks a column it does not carry.
    """

    def __init__(self, as_csv: bool) -> None:
        self.as_csv = as_csv
        self._column_sets: dict[tuple[str, ...], int] = {}

    def encode(self, rows: Sequence[tuple[int, Plan, tuple[Any, ...]]]) -> list[StagedGroup]:
        by_plan: dict[int, tuple[Plan, list[tuple[Any, ...]]]] = {}
        for position, plan, values in rows:
            group = by_plan.get(id(plan))
            if group is None:
                set_id = self._column_sets.setdefault(plan.columns, len(self._column_sets))
                group = by_plan[id(plan)] = (plan, [])
            else:
                set_id = self._column_sets[plan.columns]
            group[1].append((set_id, position, *values))
        groups = []
        for plan, group_rows in by_plan.values():
            positions = [row[1] for row in group_rows]
            set_id = self._column_sets[plan.columns]
            if self.as_csv:
                # In CSV COPY an unquoted empty field is NULL. Parse never yields an empty
                # string (blank means NULL), so None written as empty is exactly NULL; other
                # values print as PostgreSQL reads them (True, 2026-01-05 09:15:00, 1.5).
                buffer = io.StringIO()
                csv.writer(buffer, lineterminator="\n").writerows(group_rows)
                groups.append(
                    StagedGroup(
                        plan.columns,
                        set_id,
                        min(positions),
                        max(positions),
                        csv_text=buffer.getvalue(),
                    )
                )
            else:
                groups.append(
                    StagedGroup(
                        plan.columns, set_id, min(positions), max(positions), rows=group_rows
                    )
                )
        return groups


@dataclass
class _StagedChunk:
    first: int
    last: int
    column_sets: set[int] = field(default_factory=set)


class ViewLoader:
    """Loads one view's parsed records through a stage table into its table.

    Use: ``stage(chunk)`` for every chunk, then ``finish()``; all inside the
    caller's transaction on ``conn``.
    """

    def __init__(self, conn: Connection, view: View, run_id: int | None) -> None:
        self.conn = conn
        self.view = view
        self.run_id = run_id
        self.dialect = conn.dialect.name
        self.counts = LoadCounts()
        self.latest_source_time: datetime | None = None
        self._column_sets: dict[tuple[str, ...], int] = {}
        self._chunks: list[_StagedChunk] = []
        self._stage = self._create_stage()

    # --- stage ---------------------------------------------------------------------

    def _create_stage(self) -> Table:
        name = f"otc_stage_{self.view.name}"
        columns = [
            # No key or index while rows stream in (cheaper COPY); finish() indexes it.
            Column(POSITION, BigInteger, nullable=False),
            Column(COLUMN_SET, Integer, nullable=False),
        ]
        for column in self.view.table.columns:
            if column.key in self.view.columns:
                columns.append(Column(column.key, column.type))
        options: dict[str, Any] = (
            {"postgresql_on_commit": "DROP"} if self.dialect == "postgresql" else {}
        )
        stage = Table(name, MetaData(), *columns, prefixes=["TEMPORARY"], **options)
        if self.dialect == "sqlite":
            # SQLite keeps temporary tables for the connection's life, and pooled
            # connections live on: start from a clean stage.
            stage.drop(self.conn, checkfirst=True)
        stage.create(self.conn)
        return stage

    def stage(self, chunk: ParsedChunk) -> None:
        """Stage one chunk of parsed rows and store its parse rejects."""
        self.counts.fetched += chunk.records
        if chunk.rejects:
            self._store_rejects(chunk.rejects)
        if not chunk.groups:
            return
        staged = _StagedChunk(
            first=min(g.first for g in chunk.groups), last=max(g.last for g in chunk.groups)
        )
        for group in chunk.groups:
            self._column_sets[group.columns] = group.column_set
            staged.column_sets.add(group.column_set)
            if group.csv_text is not None:
                self._copy(group)
            else:
                names = [COLUMN_SET, POSITION, *group.columns]
                self.conn.execute(
                    insert(self._stage),
                    [dict(zip(names, row, strict=True)) for row in group.rows or ()],
                )
        self._chunks.append(staged)

    def _copy(self, group: StagedGroup) -> None:
        """COPY one group's CSV lines into the stage."""
        dbapi = self.conn.connection.dbapi_connection
        assert dbapi is not None and group.csv_text is not None
        quote = self.conn.dialect.identifier_preparer.quote
        columns = ", ".join(quote(name) for name in [COLUMN_SET, POSITION, *group.columns])
        cursor: Any = dbapi.cursor()
        try:
            cursor.copy_expert(
                f"COPY {self._stage.name} ({columns}) FROM STDIN WITH (FORMAT csv)",
                io.StringIO(group.csv_text),
                size=1 << 20,
            )
        finally:
            cursor.close()

    def _store_rejects(self, rejects: Sequence[Reject]) -> None:
        self.counts.rejected += len(rejects)
        if self.run_id is None:
            return
        self.conn.execute(
            insert(EtlReject),
            [
                {
                    "run_id": self.run_id,
                    "view_name": self.view.name,
                    "source_position": r.position,
                    "field": r.field,
                    "value": r.value,
                    "reason": r.reason,
                    "raw_record": json.dumps(r.record, default=str, ensure_ascii=False),
                }
                for r in rejects
            ],
        )

    # --- deduplicate and merge -----------------------------------------------------

    def finish(self) -> LoadCounts:
        """Drop in-load duplicates (the last occurrence wins), then merge chunk by chunk."""
        if not self._chunks:
            return self.counts
        Index(f"{self._stage.name}_position", self._stage.c[POSITION]).create(self.conn)
        self.counts.duplicates = self._drop_duplicates()
        time_field = self.view.source_time_field
        if time_field is not None:
            time_column = self.view.fields[time_field]
            self.latest_source_time = self.conn.execute(
                select(func.max(self._stage.c[time_column]))
            ).scalar()
        set_columns = {set_id: columns for columns, set_id in self._column_sets.items()}
        if self.dialect == "postgresql":
            # Give the planner real numbers for the joins below.
            self.conn.exec_driver_sql(f"ANALYZE {self._stage.name}")
        for set_id, columns in set_columns.items():
            self.counts.unchanged += self._drop_unchanged(set_id, columns)
        for chunk in self._chunks:
            for set_id in sorted(chunk.column_sets):
                self._merge_range(set_columns[set_id], set_id, chunk.first, chunk.last)
        # Inside a caller's transaction (the otc_load fixture) nothing commits, so a
        # second load of the view in that transaction needs the name free again.
        self._stage.drop(self.conn)
        return self.counts

    def _drop_unchanged(self, set_id: int, columns: tuple[str, ...]) -> int:
        """Take rows the table already holds exactly out of the stage; count them.

        An upsert whose WHERE skips the update still locks the row it conflicts
        with, which writes to the table; rows dropped here are never touched.
        """
        target, stage = self.view.table, self._stage
        same_row = and_(
            _key_match(target, stage, self.view),
            *[
                target.c[c].is_not_distinct_from(stage.c[c])
                for c in columns
                if c not in self.view.key
            ],
        )
        unchanged = select(literal_column("1")).select_from(target).where(same_row).exists()
        result = self.conn.execute(delete(stage).where(stage.c[COLUMN_SET] == set_id, unchanged))
        return int(result.rowcount or 0)

    def _key_columns(self, table: Table) -> list[Any]:
        return [table.c[k] for k in self.view.key]

    def _drop_duplicates(self) -> int:
        stage = self._stage
        ranked = select(
            stage.c[POSITION],
            func.row_number()
            .over(
                partition_by=self._key_columns(stage),
                order_by=stage.c[POSITION].desc(),
            )
            .label("rank"),
        ).subquery()
        doomed = select(ranked.c[POSITION]).where(ranked.c.rank > 1)
        result = self.conn.execute(delete(stage).where(stage.c[POSITION].in_(doomed)))
        return int(result.rowcount or 0)

    def _merge_range(self, columns: tuple[str, ...], set_id: int, first: int, last: int) -> None:
        """Merge staged rows of one column set in [first, last]; bisect if refused."""
        try:
            with self.conn.begin_nested():
                self._merge(columns, set_id, first, last)
            return
        except DBAPIError as exc:
            error = exc
        positions = list(
            self.conn.execute(
                select(self._stage.c[POSITION])
                .where(self._in_range(set_id, first, last))
                .order_by(self._stage.c[POSITION])
            ).scalars()
        )
        if len(positions) == 1:
            self._reject_staged(positions[0], columns, error)
        elif len(positions) > 1:
            middle = len(positions) // 2
            self._merge_range(columns, set_id, positions[0], positions[middle - 1])
            self._merge_range(columns, set_id, positions[middle], positions[-1])

    def _in_range(self, set_id: int, first: int, last: int) -> Any:
        stage = self._stage
        return (stage.c[COLUMN_SET] == set_id) & stage.c[POSITION].between(first, last)

    def _merge(self, columns: tuple[str, ...], set_id: int, first: int, last: int) -> None:
        """One upsert of the staged rows of one column set in [first, last], counted."""
        target, stage = self.view.table, self._stage
        in_range = self._in_range(set_id, first, last)
        sent = self.conn.execute(
            select(func.count()).select_from(stage).where(in_range)
        ).scalar_one()
        # WHERE true: SQLite would otherwise read "ON CONFLICT" as part of the SELECT.
        source = select(*[stage.c[c] for c in columns]).where(in_range, true())
        insert_into = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        statement = insert_into(target).from_select(list(columns), source)
        arbiter = _conflict_target(target, self.view, self.dialect)
        updates = [c for c in columns if c not in self.view.key]
        if updates:
            upsert = statement.on_conflict_do_update(
                **arbiter,
                set_={target.c[c]: statement.excluded[c] for c in updates},
                # A row whose values did not change is neither rewritten nor returned.
                where=or_(*[target.c[c].is_distinct_from(statement.excluded[c]) for c in updates]),
            )
        else:
            upsert = statement.on_conflict_do_nothing(**arbiter)
        if self.dialect == "postgresql":
            # xmax = 0 marks a freshly inserted row.
            marks: list[bool] = list(
                self.conn.execute(upsert.returning(literal_column("(xmax = 0)"))).scalars()
            )
            inserted, written = sum(marks), len(marks)
        else:
            existing = self.conn.execute(
                select(func.count())
                .select_from(stage)
                .join(target, _key_match(target, stage, self.view))
                .where(in_range)
            ).scalar_one()
            written = len(self.conn.execute(upsert.returning(literal_column("1"))).all())
            inserted = sent - existing
        self.counts.inserted += inserted
        self.counts.updated += written - inserted
        self.counts.unchanged += sent - written

    def _reject_staged(self, position: int, columns: tuple[str, ...], error: DBAPIError) -> None:
        row = self.conn.execute(
            select(*[self._stage.c[c] for c in columns]).where(self._stage.c[POSITION] == position)
        ).one()
        record = {self.view.columns[c]: v for c, v in zip(columns, row, strict=True)}
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        self._store_rejects(
            [Reject(position, None, None, f"refused by the database: {reason}", record)]
        )


def _conflict_target(target: Table, view: View, dialect: str) -> dict[str, Any]:
    """The upsert's arbiter: timesheets' unique entry (per dialect), else the primary key."""
    if view.name == "timesheets":
        if dialect == "postgresql":
            return {"constraint": "timesheets_unique_entry"}
        return {"index_elements": list(TIMESHEETS_SQLITE_KEY)}
    return {"index_elements": [target.c[k] for k in view.key]}


def _key_match(target: Table, stage: Table, view: View) -> Any:
    """Rows with the same key; NULL equals NULL in the one key column that may be blank.

    Plain equality on the required key columns lets the database hash or index the
    join; IS NOT DISTINCT FROM on them all would force a nested loop.
    """
    required = {view.fields[f] for f in view.required}
    terms = []
    for k in view.key:
        if k in required:
            terms.append(target.c[k] == stage.c[k])
        else:
            terms.append(
                or_(target.c[k] == stage.c[k], and_(target.c[k].is_(None), stage.c[k].is_(None)))
            )
    return and_(*terms)
