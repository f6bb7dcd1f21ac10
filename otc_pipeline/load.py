"""Chunked upserts with exact counts, for one view inside one transaction.

How a load moves rows (one transaction, owned by the caller):

1. **Parse side** (:class:`ChunkEncoder`): within a chunk the last occurrence of
   a key wins in memory; rows are grouped by the columns they carry.
2. **Stage**: each chunk goes into a temporary table shaped like the view's
   table plus the source position and the record's column set — by COPY on
   PostgreSQL (measured fastest, field-notes) and executemany on SQLite.
3. **Merge**: ``insert().from_select(...).on_conflict_do_update()`` per chunk,
   with a WHERE that skips rows whose values did not change. Only the columns
   the source carried are written. A chunk the database refuses is retried in
   halves inside savepoints until the refused rows are isolated as rejects.

Into an empty table each chunk of a file is merged as soon as it is staged. Into
a table with rows (or from the API), the merge waits for the end of the source:
then staged rows the table does not already hold exactly are noted (rows it does
hold are never touched: an upsert's WHERE still locks, so writes, the row it
skips), repeats across chunks are settled (the last occurrence wins; the others
count as duplicates), and the noted rows merged.

Other writers are kept out only while writing: the table is locked when the
merge begins (the first chunk's merge into an empty table, else the end of the
source) until the load's transaction ends. Staging goes to temporary tables and
needs no lock on the table, so nothing is locked while records are fetched,
retried or backed off, and the compare is made under the lock: what it finds is
still true when the merge writes.
"""

from __future__ import annotations

import io
import json
import re
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    MetaData,
    Table,
    and_,
    bindparam,
    case,
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
from sqlalchemy.sql import FromClause

from .errors import DatabaseFailed
from .models import TIMESHEETS_SQLITE_KEY, EtlReject
from .parse import COPY_NULL, Plan, Reject
from .views import View

POSITION = "_otc_position"
COLUMN_SET = "_otc_column_set"
KEY_HASH = "_otc_key_hash"  # Python's hash of the row's key: finds repeats across chunks cheaply
STAGE_PREFIX = (COLUMN_SET, POSITION, KEY_HASH)  # what each staged row starts with
_SEEN_BITS = 1 << 26
# Positions of a split source's second half start here (see pipeline), above any
# real position, until the first half's count of records says what they are.
SECOND_HALF = 1 << 40
# Planner settings for comparing staged rows with the table (see ViewLoader._planned).
_ONE_HASH_JOIN = {"enable_nestloop": "off", "enable_mergejoin": "off", "work_mem": "'64MB'"}


# What tells a refused row from a failed database. Only an error about one row's values
# is isolated (by bisection) into rejects: SQLSTATE class 22 (data exception: a value out
# of range, a bad date), class 23 (integrity: not null, unique, check), and P0001, what a
# trigger's RAISE EXCEPTION gives when it names no code (how triggers refuse a row).
# Anything else (class 53 disk or memory, 55P03/57014 lock and statement timeouts, 08
# connection, 57P0x operator, 40 deadlock, XX internal) concerns no row: retrying halves
# of a chunk would only fail again, so the view fails at once with that first error.
_ROW_SQLSTATE_CLASSES = ("22", "23")
_ROW_SQLSTATES = ("P0001",)
# SQLite's primary result codes for a row's values: TOOBIG, CONSTRAINT (also a trigger's
# RAISE(ABORT)), MISMATCH. FULL, BUSY, LOCKED, IOERR, NOMEM and the rest fail the view.
_SQLITE_ROW_CODES = (18, 19, 20)


def is_row_refusal(error: DBAPIError) -> bool:
    """Whether the database refused a row's values (a reject) rather than failed (the view fails)."""
    if error.connection_invalidated:
        return False
    orig = error.orig
    sqlstate = getattr(orig, "pgcode", None)
    if sqlstate is not None:
        return sqlstate[:2] in _ROW_SQLSTATE_CLASSES or sqlstate in _ROW_SQLSTATES
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_ROW_CODES
    return False


def database_failure(error: DBAPIError) -> DatabaseFailed:
    """The one error a load reports when the database failed it (its first error, in words)."""
    orig = error.orig
    detail = _first_line(error).removeprefix("FATAL:  ").strip()
    sqlstate = getattr(orig, "pgcode", None)
    code = f"SQLSTATE {sqlstate}" if sqlstate else getattr(orig, "sqlite_errorname", None)
    # 57P01-57P04: the server shut down, crashed, or the session was terminated.
    if error.connection_invalidated or (sqlstate or "").startswith(("08", "57P")):
        what = f"the database connection was lost ({detail}{f'; {code}' if code else ''})"
    else:
        what = f"the database failed: {detail}{f' ({code})' if code else ''}"
    return DatabaseFailed(f"{what}; nothing of this view was committed; run the load again")


@dataclass
class LoadCounts:
    """Exact counts of one load; fetched == the sum of the other five."""

    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    rejected: int = 0


def stage_columns(view: View) -> tuple[str, ...]:
    """The view's columns as every staged row carries them, in the table's order."""
    return tuple(c.key for c in view.table.columns if c.key in view.columns)


@dataclass(frozen=True)
class StagedGroup:
    """The rows of one chunk, ready for the stage table, with every column of the view.

    Each row starts with its column set (a bit per column of ``columns`` that its
    record carried: an absent one is staged NULL and never written), source
    position and key hash. PostgreSQL gets them as COPY text, SQLite as Python
    values for executemany.
    """

    columns: tuple[str, ...]
    column_sets: frozenset[int]  # the column sets of its rows
    copy_text: bytes | None = None  # lines of COPY's text format, UTF-8
    rows: list[tuple[Any, ...]] | None = None


@dataclass
class ParsedChunk:
    """One chunk of a source, parsed: its rows, its rejects, how many records.

    ``duplicates`` counts records of this chunk whose key a later record of the
    same chunk repeats: they are already dropped (the last occurrence wins).
    """

    groups: list[StagedGroup]  # one, or none when no record of the chunk parsed
    rejects: list[Reject]
    records: int
    first: int = 0  # source positions of the chunk's first and last rows
    last: int = 0
    unknown_fields: frozenset[str] = frozenset()
    # (source field, the view's field it was taken for) for names spelled otherwise
    renamed_fields: frozenset[tuple[str, str]] = frozenset()
    duplicates: int = 0
    # Key hashes of rows whose key may have come in an earlier chunk (a superset).
    maybe_repeats: list[int] = field(default_factory=list)
    # On the last chunk of a source read in two halves: the first half's count of records.
    first_half_records: int | None = None


class ChunkEncoder:
    """Collects one chunk's parsed rows: drops repeated keys, lays rows out alike.

    Within a chunk the last occurrence of a key wins, here in memory, so the
    database only sorts out repeats across chunks. For COPY each row becomes its
    line of COPY's text format as it arrives: the parser already hands out
    escaped fields, so a line is one join (measured: twice as fast as csv.writer),
    and a chunk holds a few MB of lines instead of tuples. Every row carries all
    of the view's columns, with its column set saying which its record had: so a
    chunk is one COPY whatever fields its records carry (APIs that omit null
    fields send a different set nearly every record), and a narrower record never
    blanks a column it does not carry.
    """

    def __init__(self, view: View, as_copy_text: bool, keep_key_hashes: bool = False) -> None:
        self.as_copy_text = as_copy_text
        self.columns = stage_columns(view)
        # Every row's key hash, for a reader of a second half: the first half's
        # reader saw other keys, which these may repeat (see seen_before).
        self.key_hashes: array[int] | None = array("q") if keep_key_hashes else None
        # Per set of plan columns: its column set, as a number and as COPY text, and
        # where each staged column is among the plan's (None: the same columns).
        self._layouts: dict[tuple[str, ...], tuple[int, str, itemgetter[Any] | None]] = {}
        # One bit per key hash seen (8 MB): a key whose bit is already set may repeat
        # an earlier chunk's, and only those are looked for in the stage. A clear bit
        # proves a key is new; a set one is a false alarm for about 1.5% of keys at
        # 1M keys (0.15% at 100k).
        self._seen = bytearray(_SEEN_BITS // 8)
        self._start()

    def _start(self) -> None:
        self._rows: list[Any] = []
        self._column_sets: set[int] = set()
        self._plan: Plan | None = None  # the last row's: usually the next one's too
        self._layout: tuple[int, str, itemgetter[Any] | None] = (0, "0", None)
        self._key_of: Any = None
        # Each key's latest row (the row object itself): the rows it does not hold
        # were replaced by a later row of their key.
        self._latest: dict[Any, Any] = {}
        self._maybe_repeats: list[int] = []
        self._first = self._last = 0

    def add(self, position: int, plan: Plan, values: tuple[Any, ...]) -> None:
        """One parsed row; it replaces an earlier row of this chunk with the same key."""
        if plan is not self._plan:
            self._use(plan)
            if not self._first:
                self._first = position
        self._last = position
        key = self._key_of(values)
        key_hash = hash(key)
        bit = key_hash & (_SEEN_BITS - 1)
        byte, flag = bit >> 3, 1 << (bit & 7)
        seen = self._seen
        if seen[byte] & flag:
            self._maybe_repeats.append(key_hash)
        else:
            seen[byte] |= flag
        if self.key_hashes is not None:
            self.key_hashes.append(key_hash)
        column_set, set_text, spread = self._layout
        if spread is not None:
            values = spread((*values, COPY_NULL if self.as_copy_text else None))
        if self.as_copy_text:
            row: Any = "\t".join((set_text, str(position), str(key_hash), *values))
        else:
            row = (column_set, position, key_hash, *values)
        self._rows.append(row)
        self._latest[key] = row

    def _use(self, plan: Plan) -> None:
        """Make ``plan`` the current one: how its rows are laid out, and their key."""
        assert plan.key_of is not None  # rows come from plans that have every key field
        layout = self._layouts.get(plan.columns)
        if layout is None:
            carried = set(plan.columns)
            column_set = sum(1 << i for i, c in enumerate(self.columns) if c in carried)
            # Each staged column from the plan's values; an absent one from one more, NULL.
            absent = len(plan.columns)
            spread = (
                None
                if plan.columns == self.columns
                else itemgetter(
                    *[plan.columns.index(c) if c in carried else absent for c in self.columns]
                )
            )
            if len(self._layouts) >= 4096:  # a source of ever new sets: keep memory flat
                self._layouts.clear()
            layout = self._layouts[plan.columns] = (column_set, str(column_set), spread)
        self._column_sets.add(layout[0])
        self._plan, self._layout, self._key_of = plan, layout, plan.key_of

    def seen_keys(self) -> bytes:
        """The bits of every key hash this encoder has met."""
        return bytes(self._seen)

    def flush(
        self, rejects: list[Reject], records: int, unknown_fields: frozenset[str]
    ) -> ParsedChunk:
        """The chunk collected so far (with the reader's rejects and counts); start anew."""
        duplicates = len(self._rows) - len(self._latest)
        rows = self._rows
        if duplicates:
            kept = set(map(id, self._latest.values()))
            rows = [r for r in rows if id(r) in kept]
        groups = []
        if rows:
            sets = frozenset(self._column_sets)
            if self.as_copy_text:
                # Bytes: the loading process hands them to COPY as they are (a str would
                # be copied into a StringIO at four bytes a character).
                body = ("\n".join(rows) + "\n").encode()
                groups.append(StagedGroup(self.columns, sets, copy_text=body))
            else:
                groups.append(StagedGroup(self.columns, sets, rows=rows))
        chunk = ParsedChunk(
            groups=groups,
            rejects=rejects,
            records=records,
            first=self._first,
            last=self._last,
            unknown_fields=unknown_fields,
            duplicates=duplicates,
            maybe_repeats=self._maybe_repeats,
        )
        self._start()
        return chunk


def seen_before(seen: bytes, key_hashes: Iterable[int]) -> list[int]:
    """The hashes whose bit another encoder's ``seen_keys()`` has set (a superset of repeats)."""
    mask = _SEEN_BITS - 1
    return [h for h in key_hashes if seen[(h & mask) >> 3] & (1 << (h & 7))]


@dataclass
class _StagedChunk:
    first: int
    last: int
    column_sets: set[int] = field(default_factory=set)


class ViewLoader:
    """Loads one view's parsed records through a stage table into its table.

    Use: ``stage(chunk)`` for every chunk, then ``finish()``; all inside the
    caller's transaction on ``conn``. From its first merge the table is locked
    against other writers until that transaction ends, so what the load compares
    stays true; before it, staging touches temporary tables only.

    The load takes one of two ways, chosen when it starts:

    - **Empty table** (a view's first load, a backfill) from a file: each chunk
      is merged as soon as it is staged, while the next one is read. Nothing was
      there before (checked again under the lock), so a row that meets its key
      already in the table met a row of an earlier chunk: it replaces it (the
      last occurrence wins) and counts as a duplicate.
    - **Otherwise** (a table with rows, or the API): writing waits for the end
      of the source. Then, under the lock, the positions of staged rows the
      table does not already hold exactly are noted (the rest count as
      unchanged), staged rows whose key a later chunk repeats are dropped
      (counted as duplicates) and the noted rows merged, so no row is written
      that a later row would replace. On SQLite the load's transaction does not
      even read the database file before then: a read would keep other writers
      from committing (rollback journal) or make this load's first write fail
      (WAL).

    Chunks may come in any order, since rows are placed by source position. A
    source read in two halves (a reload of a large JSON export, see pipeline)
    numbers its second half from SECOND_HALF; its last chunk gives the first
    half's count of records, and from then on rejects are stored under their
    real positions (the second half's parse rejects wait for it).
    """

    def __init__(
        self, conn: Connection, view: View, run_id: int | None, merge_while_reading: bool = True
    ) -> None:
        self.conn = conn
        self.view = view
        self.run_id = run_id
        self.dialect = conn.dialect.name
        self.counts = LoadCounts()
        self.latest_source_time: datetime | None = None
        self._all_columns = stage_columns(view)
        self._column_sets: set[int] = set()  # of every staged row
        self._chunks: list[_StagedChunk] = []
        self._staged_rows = 0  # rows in the stage now
        self._noted_changed = 0  # of them, rows the table does not hold exactly
        self._maybe_repeats: set[int] = set()  # key hashes the reader saw more than once
        # A source read in two halves: positions from SECOND_HALF on are the second
        # half's, known once the first half's count arrives; their rejects wait for it.
        self._first_half_records: int | None = None
        self._held_rejects: list[Reject] = []
        self._locked = False
        # An API source can trickle or back off: its load merges nothing, so locks
        # nothing, until the whole view has arrived.
        self.merges_as_it_reads = merge_while_reading and self._target_looks_empty()
        self._stage = self._create_stage()
        self._rejects = self._create_rejects()
        self._changed = None if self.merges_as_it_reads else self._create_changed()

    # --- stage ---------------------------------------------------------------------

    def _target_looks_empty(self) -> bool:
        """Whether the table is empty, without keeping other writers out (checked again
        under the lock, see _begin_merging_as_it_reads).

        SQLite reads on a connection of its own: a read inside the load's transaction
        would keep other writers from committing until the load ends (rollback
        journal), or make the load's first write fail if one did (WAL).
        """
        url = self.conn.engine.url
        if self.dialect != "sqlite" or url.database in (None, "", ":memory:"):
            return self._target_is_empty()
        with self.conn.engine.connect() as other:
            options = self.conn.get_execution_options()
            other = other.execution_options(**options)
            empty = (
                other.execute(
                    select(literal_column("1")).select_from(self.view.table).limit(1)
                ).first()
                is None
            )
            other.rollback()
        return empty

    def _target_is_empty(self) -> bool:
        target = self.view.table
        return (
            self.conn.execute(select(literal_column("1")).select_from(target).limit(1)).first()
            is None
        )

    def _lock_target(self) -> None:
        """Keep other writers off the table from now until the load's transaction ends."""
        if self._locked:
            return
        target = self.view.table
        if self.dialect == "postgresql":
            # Readers go on; writers wait for this load's transaction.
            name = self.conn.dialect.identifier_preparer.format_table(target)
            self.conn.exec_driver_sql(f"LOCK TABLE {name} IN SHARE ROW EXCLUSIVE MODE")
        else:
            # A write that changes nothing still takes SQLite's write lock now.
            self.conn.execute(delete(target).where(literal_column("0") == 1))
        self._locked = True

    def _begin_merging_as_it_reads(self) -> bool:
        """Lock the table for the first chunk's merge; False if it is no longer empty.

        The table was empty when the load started, unlocked; another writer may have
        filled it since. Then nothing is merged yet: the load goes the other way.
        """
        self._lock_target()
        if self._target_is_empty():
            return True
        self.merges_as_it_reads = False
        Index(f"otc_stage_{self.view.name}_position", self._stage.c[POSITION]).create(self.conn)
        self._changed = self._create_changed()
        return False

    def _temporary_table(self, name: str, *columns: Column[Any]) -> Table:
        options: dict[str, Any] = (
            {"postgresql_on_commit": "DROP"} if self.dialect == "postgresql" else {}
        )
        table = Table(name, MetaData(), *columns, prefixes=["TEMPORARY"], **options)
        if self.dialect == "sqlite":
            # SQLite keeps temporary tables for the connection's life, and pooled
            # connections live on: start from a clean table. (Not drop(checkfirst=True):
            # its look into the main database's schema would keep other writers out.)
            quoted = self.conn.dialect.identifier_preparer.quote(name)
            self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{quoted}")
        table.create(self.conn)
        return table

    def _create_stage(self) -> Table:
        columns = [
            Column(POSITION, BigInteger, nullable=False),
            Column(COLUMN_SET, BigInteger, nullable=False),
            Column(KEY_HASH, BigInteger, nullable=False),
        ]
        for key in self._all_columns:
            columns.append(Column(key, self.view.table.c[key].type))
        stage = self._temporary_table(f"otc_stage_{self.view.name}", *columns)
        if not self.merges_as_it_reads:
            # Chunks are compared and merged by position range; positions only grow, so
            # the index is appended to, cheaply, as rows stream in.
            Index(f"otc_stage_{self.view.name}_position", stage.c[POSITION]).create(self.conn)
        return stage

    def _create_changed(self) -> Table:
        """Positions of staged rows the table does not hold exactly: new or changed.

        In a reload most rows are unchanged, so the few others are what is kept
        (measured: keeping the unchanged instead took a quarter of a 100k-row compare).
        """
        return self._temporary_table(
            f"otc_changed_{self.view.name}", Column(POSITION, BigInteger, primary_key=True)
        )

    def _create_rejects(self) -> Table:
        """The load's rejects, kept aside until the merge (on SQLite a write to etl_rejects
        would take the database's write lock while records are still being fetched)."""
        columns = [Column(c.key, c.type) for c in EtlReject.__table__.columns if c.key != "id"]
        return self._temporary_table(f"otc_rejects_{self.view.name}", *columns)

    def stage(self, chunk: ParsedChunk) -> None:
        """Stage one chunk, store its parse rejects, then merge it or compare it."""
        self.counts.fetched += chunk.records
        self.counts.duplicates += chunk.duplicates
        self._maybe_repeats.update(chunk.maybe_repeats)
        if chunk.first_half_records is not None:
            self._first_half_records = chunk.first_half_records
            held, self._held_rejects = self._held_rejects, []
            self._write_rejects(held)
        if chunk.rejects:
            self._store_rejects(chunk.rejects)
        if not chunk.groups:
            return
        staged = _StagedChunk(first=chunk.first, last=chunk.last)
        for group in chunk.groups:
            self._column_sets |= group.column_sets
            staged.column_sets |= group.column_sets
            self._staged_rows += self._stage_group(group)
        self._note_source_time(staged)
        if self.merges_as_it_reads and (self._locked or self._begin_merging_as_it_reads()):
            self._merge_chunk(staged)
            self._empty_stage()
            return
        self._chunks.append(staged)

    @contextmanager
    def _planned(self, settings: dict[str, str]) -> Iterator[None]:
        """Run the statements inside with these planner settings (PostgreSQL only).

        Left to itself, for the whole stage, whose rows it has no statistics of, the
        planner probes the table's index once per row instead of one hash join.
        """
        if self.dialect != "postgresql":
            yield
            return
        for setting, value in settings.items():
            self.conn.exec_driver_sql(f"SET LOCAL {setting} = {value}")
        try:
            yield
        finally:
            for setting in settings:
                self.conn.exec_driver_sql(f"RESET {setting}")

    def _stage_group(self, group: StagedGroup) -> int:
        """Stage one group's rows; rows the database refuses become rejects; how many staged.

        A refusal while staging (a number too large for the column, say) is isolated
        like one at the merge: the rows are retried in halves inside savepoints until
        the refused ones are found. The whole group goes in one statement otherwise.
        """
        rows: list[Any] = (
            [group.copy_text] if group.copy_text is not None else list(group.rows or ())
        )
        return self._stage_rows(group.columns, rows, whole=group.copy_text is not None)

    def _stage_rows(self, columns: tuple[str, ...], rows: list[Any], whole: bool = False) -> int:
        """Stage ``rows`` (COPY lines as one bytes, if ``whole``), bisecting refused ones."""
        savepoint = self.conn.begin_nested()
        try:
            if self.dialect == "postgresql":
                staged = self._copy(columns, rows[0] if whole else b"\n".join(rows) + b"\n")
            else:
                staged = self._insert(columns, rows)
        except DBAPIError as exc:
            if not is_row_refusal(exc):
                raise database_failure(exc) from exc
            savepoint.rollback()
            if whole:
                rows = rows[0].split(b"\n")[:-1]
            if len(rows) == 1:
                self._reject_unstaged(columns, rows[0], exc)
                return 0
            middle = len(rows) // 2
            return self._stage_rows(columns, rows[:middle]) + self._stage_rows(
                columns, rows[middle:]
            )
        savepoint.commit()
        return staged

    def _copy(self, columns: tuple[str, ...], copy_text: bytes) -> int:
        """COPY lines (COPY's text format) into the stage; how many rows."""
        dbapi = self.conn.connection.dbapi_connection
        assert dbapi is not None
        quote = self.conn.dialect.identifier_preparer.quote
        names = ", ".join(quote(name) for name in [*STAGE_PREFIX, *columns])
        statement = f"COPY {self._stage.name} ({names}) FROM STDIN"
        cursor: Any = dbapi.cursor()
        driver_error = self.conn.dialect.loaded_dbapi.Error
        printed: list[BaseException] = []
        try:
            with _printed_errors_kept(printed):
                cursor.copy_expert(statement, io.BytesIO(copy_text), size=1 << 20)
            return int(cursor.rowcount)
        except driver_error as exc:
            # The driver's own cursor: say what SQLAlchemy would have said, and let go
            # of a connection the server has closed (else returning it to the pool fails).
            lost = bool(dbapi.closed)
            if lost:
                self.conn.invalidate(exc)
            first = next((e for e in printed if isinstance(e, driver_error)), exc)
            raise DBAPIError.instance(
                statement,
                None,
                first,
                driver_error,
                connection_invalidated=lost,
                dialect=self.conn.dialect,
            ) from exc
        finally:
            if not dbapi.closed:
                cursor.close()

    def _insert(self, columns: tuple[str, ...], staged_rows: list[tuple[Any, ...]]) -> int:
        """Insert rows into the stage by executemany; how many rows.

        Straight to the driver with positional rows: building a dict per row for
        SQLAlchemy's executemany took 2.4 s of a 4.2 s SQLite reload of 100k
        timesheets. Values go through the same bind processors SQLAlchemy applies
        (dates, numbers and flags as SQLite stores them), so rows match those the
        ORM writes.
        """
        names = [*STAGE_PREFIX, *columns]
        compiled = (
            insert(self._stage)
            .values({name: bindparam(name) for name in names})
            .compile(dialect=self.conn.dialect)
        )
        # The statement takes the values in the stage's column order.
        order = [names.index(name) for name in compiled.positiontup or ()]
        dialect = self.conn.dialect
        processors = [
            (index, processor)
            for index, name in enumerate(compiled.positiontup or ())
            # The dialect's own type: SQLite's DATETIME keeps microseconds, as the ORM does.
            if (processor := self._stage.c[name].type.dialect_impl(dialect).bind_processor(dialect))
        ]
        rows = [_reordered(row, order, processors) for row in staged_rows]
        if rows:
            self.conn.exec_driver_sql(str(compiled), rows)
        return len(rows)

    def _empty_stage(self) -> None:
        self._staged_rows = 0
        if self.dialect == "postgresql":
            # TRUNCATE leaves no dead rows behind for the next chunk's scans to wade through.
            self.conn.exec_driver_sql(f"TRUNCATE {self._stage.name}")
        else:
            self.conn.execute(delete(self._stage))

    def _note_source_time(self, chunk: _StagedChunk) -> None:
        """Keep the newest source time (the view's freshness) seen so far."""
        time_field = self.view.source_time_field
        if time_field is None:
            return
        stage = self._stage
        newest = self.conn.execute(
            select(func.max(stage.c[self.view.fields[time_field]])).where(
                stage.c[POSITION].between(chunk.first, chunk.last)
            )
        ).scalar()
        if newest is not None and (
            self.latest_source_time is None or newest > self.latest_source_time
        ):
            self.latest_source_time = newest

    def _columns_of(self, column_set: int) -> tuple[str, ...]:
        return tuple(c for i, c in enumerate(self._all_columns) if column_set >> i & 1)

    def _carried(self, column: str) -> Any:
        """Whether a staged row's record carried ``column`` (its bit in the column set)."""
        bit = 1 << self._all_columns.index(column)
        return self._stage.c[COLUMN_SET].op("&")(bit) != 0

    def _merge_chunk(self, chunk: _StagedChunk) -> None:
        """Merge one chunk's staged rows: by its one column set, or all sets in one go.

        Nearly every source's records carry one set of fields: its rows are written
        with exactly those columns. Rows of varying sets (APIs that omit null fields)
        go in one statement that takes each absent column from the held row, instead
        of one statement per set (measured: 5k records of different sets took 100
        times as long).
        """
        if len(chunk.column_sets) == 1:
            (column_set,) = chunk.column_sets
            self._merge_range(self._columns_of(column_set), column_set, chunk.first, chunk.last)
        else:
            self._merge_range(self._all_columns, None, chunk.first, chunk.last)

    def _note_changed(
        self, columns: tuple[str, ...], set_id: int | None, first: int = 0, last: int | None = None
    ) -> None:
        """Note the staged rows of one column set (None: of any) in [first, last]
        (default: all of them) that the table does not already hold exactly."""
        assert self._changed is not None
        target, stage = self.view.table, self._stage
        in_range = [] if last is None else [stage.c[POSITION].between(first, last)]
        held_exactly = (
            select(literal_column("1"))
            .select_from(target)
            .where(
                _key_match(target, stage, self.view),
                *[
                    target.c[c].is_not_distinct_from(stage.c[c])
                    if set_id is not None
                    else ~self._carried(c) | target.c[c].is_not_distinct_from(stage.c[c])
                    for c in columns
                    if c not in self.view.key
                ],
            )
            .exists()
        )
        of_set = [] if set_id is None else [stage.c[COLUMN_SET] == set_id]
        rows = select(stage.c[POSITION]).where(*of_set, *in_range, ~held_exactly)
        noted = self.conn.execute(insert(self._changed).from_select([POSITION], rows)).rowcount
        self._noted_changed += int(noted or 0)

    def _store_rejects(self, rejects: Sequence[Reject]) -> None:
        """Count rejects and keep them in etl_rejects (a second half's once it is placed)."""
        self.counts.rejected += len(rejects)
        if self.run_id is None:
            return
        if self._first_half_records is None and rejects and rejects[-1].position >= SECOND_HALF:
            self._held_rejects.extend(rejects)
            return
        self._write_rejects(rejects)

    def _source_position(self, position: int) -> int:
        """Where a staged or parsed row stands in its source."""
        if position < SECOND_HALF:
            return position
        assert self._first_half_records is not None
        return position - SECOND_HALF + self._first_half_records

    def _write_rejects(self, rejects: Sequence[Reject]) -> None:
        if not rejects:
            return
        self.conn.execute(
            insert(self._rejects),
            [
                {
                    "run_id": self.run_id,
                    "view_name": self.view.name,
                    "source_position": self._source_position(r.position),
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
        """Merge what waited for the end of the source (with rows in the table already)."""
        assert not self._held_rejects  # a split source's last chunk places its second half
        self._lock_target()
        if self._chunks:
            # The whole stage against the table, under the lock: one hash join on
            # PostgreSQL (measured on 100k timesheets: 0.11 s, against 0.26 s probing
            # the table's index chunk by chunk). SQLite probes either way.
            with self._planned(_ONE_HASH_JOIN):
                if len(self._column_sets) == 1:
                    (column_set,) = self._column_sets
                    self._note_changed(self._columns_of(column_set), column_set)
                else:
                    self._note_changed(self._all_columns, None)
        if self._chunks:
            self.counts.duplicates += self._drop_repeats()
            self.counts.unchanged += self._staged_rows - self._noted_changed
            if self._noted_changed:
                if self.dialect == "postgresql":
                    # Give the planner real numbers for the merges' joins.
                    self.conn.exec_driver_sql(f"ANALYZE {self._stage.name}")
                for chunk in self._chunks:
                    self._merge_chunk(chunk)
        names = [c.key for c in self._rejects.columns]
        self.conn.execute(insert(EtlReject).from_select(names, select(self._rejects)))
        # Inside a caller's transaction (the otc_load fixture) nothing commits, so a
        # second load of the view in that transaction needs the names free again.
        self._rejects.drop(self.conn)
        self._stage.drop(self.conn)
        if self._changed is not None:
            self._changed.drop(self.conn)
        return self.counts

    def _drop_repeats(self) -> int:
        """Delete staged rows whose key a later chunk repeats (the last one wins); count them.

        Only keys whose hash the reader saw more than once can repeat: those rows are
        found in one pass over the stage and ranked by the key itself, so hash
        collisions never merge two keys. (Done per chunk instead, the stage needs an
        index on the hash: measured, a 1M-row reload spent 4.6 s keeping it.)
        """
        if len(self._chunks) < 2 or not self._maybe_repeats:
            return 0
        stage = self._stage
        maybe = self._temporary_table(
            f"otc_maybe_{self.view.name}", Column(KEY_HASH, BigInteger, primary_key=True)
        )
        self.conn.execute(insert(maybe), [{KEY_HASH: h} for h in self._maybe_repeats])
        ranked = (
            select(
                stage.c[POSITION],
                func.row_number()
                .over(
                    partition_by=[stage.c[k] for k in self.view.key],
                    order_by=stage.c[POSITION].desc(),
                )
                .label("rank"),
            )
            .where(stage.c[KEY_HASH].in_(select(maybe.c[KEY_HASH])))
            .subquery()
        )
        replaced = select(ranked.c[POSITION]).where(ranked.c.rank > 1)
        gone = list(
            self.conn.execute(
                delete(stage).where(stage.c[POSITION].in_(replaced)).returning(stage.c[POSITION])
            ).scalars()
        )
        maybe.drop(self.conn)
        self._staged_rows -= len(gone)
        changed = self._changed
        assert changed is not None
        for start in range(0, len(gone), 5000):  # within SQLite's limit of bound values
            # A replaced row is a duplicate now, whether it changed or not.
            some = gone[start : start + 5000]
            removed = self.conn.execute(
                delete(changed).where(changed.c[POSITION].in_(some))
            ).rowcount
            self._noted_changed -= int(removed or 0)
        return len(gone)

    def _is_changed(self) -> Any:
        assert self._changed is not None
        changed = self._changed
        return (
            select(literal_column("1"))
            .select_from(changed)
            .where(changed.c[POSITION] == self._stage.c[POSITION])
            .exists()
        )

    def _merge_range(
        self, columns: tuple[str, ...], set_id: int | None, first: int, last: int
    ) -> None:
        """Merge staged rows of one column set (None: any) in [first, last]; bisect if a
        row is refused."""
        savepoint = self.conn.begin_nested()
        try:
            self._merge(columns, set_id, first, last)
        except DBAPIError as exc:
            if not is_row_refusal(exc):
                # The transaction is lost anyway; rolling back to the savepoint first could
                # only fail again (a lost connection) and hide this error behind its own.
                raise database_failure(exc) from exc
            error = exc
            savepoint.rollback()
        else:
            savepoint.commit()
            return
        positions = list(
            self.conn.execute(
                select(self._stage.c[POSITION])
                .where(self._in_range(set_id, first, last))
                .order_by(self._stage.c[POSITION])
            ).scalars()
        )
        if len(positions) == 1:
            self._reject_staged(positions[0], error)
        elif len(positions) > 1:
            middle = len(positions) // 2
            self._merge_range(columns, set_id, positions[0], positions[middle - 1])
            self._merge_range(columns, set_id, positions[middle], positions[-1])

    def _in_range(self, set_id: int | None, first: int, last: int) -> Any:
        """Staged rows of one column set (None: any) in [first, last] the merge must write."""
        stage = self._stage
        rows: Any = stage.c[POSITION].between(first, last)
        if set_id is not None:
            rows = (stage.c[COLUMN_SET] == set_id) & rows
        return rows if self._changed is None else rows & self._is_changed()

    def _merge(self, columns: tuple[str, ...], set_id: int | None, first: int, last: int) -> None:
        """One upsert of the staged rows of one column set (None: any) in [first, last],
        counted; with any set, a column a row's record lacked keeps the held value."""
        target, stage = self.view.table, self._stage
        in_range = self._in_range(set_id, first, last)
        sent = self.conn.execute(
            select(func.count()).select_from(stage).where(in_range)
        ).scalar_one()
        if not sent:
            return
        # WHERE true: SQLite would otherwise read "ON CONFLICT" as part of the SELECT.
        if set_id is not None:
            source = select(*[stage.c[c] for c in columns]).where(in_range, true())
        else:
            # The held row's value where the record lacked the column (NULL for a new row),
            # so that the upsert may set every column: absent ones are set to what they hold.
            values = [
                stage.c[c]
                if c in self.view.key
                else case((self._carried(c), stage.c[c]), else_=target.c[c]).label(c)
                for c in columns
            ]
            source = (
                select(*values)
                .select_from(stage.outerjoin(target, _key_match(target, stage, self.view)))
                .where(in_range, true())
            )
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
        if self.merges_as_it_reads:
            # The table was empty: a key already there came from an earlier chunk.
            self.counts.duplicates += sent - inserted
        else:
            self.counts.updated += written - inserted
            self.counts.unchanged += sent - written

    def _reject_unstaged(self, columns: tuple[str, ...], row: Any, error: DBAPIError) -> None:
        """Store a row the database refused while staging (a COPY line or a stage row)."""
        if isinstance(row, bytes):
            fields = row.decode().split("\t")
            values: list[Any] = [_from_copy_text(f) for f in fields[len(STAGE_PREFIX) :]]
            column_set, position = int(fields[0]), int(fields[1])
        else:
            values, column_set, position = list(row[len(STAGE_PREFIX) :]), row[0], int(row[1])
        record = {
            self.view.columns[c]: v
            for i, (c, v) in enumerate(zip(columns, values, strict=True))
            if column_set >> i & 1
        }
        field = _refused_field(error, self.view)
        self._store_rejects(
            [
                Reject(
                    position,
                    field,
                    None if field is None else record.get(field),
                    f"refused by the database: {_first_line(error)}",
                    record,
                )
            ]
        )

    def _reject_staged(self, position: int, error: DBAPIError) -> None:
        stage = self._stage
        column_set, *values = self.conn.execute(
            select(stage.c[COLUMN_SET], *[stage.c[c] for c in self._all_columns]).where(
                stage.c[POSITION] == position
            )
        ).one()
        record = {
            self.view.columns[c]: v
            for i, (c, v) in enumerate(zip(self._all_columns, values, strict=True))
            if column_set >> i & 1
        }
        self._store_rejects(
            [Reject(position, None, None, f"refused by the database: {_first_line(error)}", record)]
        )


@contextmanager
def _printed_errors_kept(printed: list[BaseException]) -> Iterator[None]:
    """Keep, unprinted, what the driver would print to stderr meanwhile.

    When the server ends the session in the middle of a COPY, psycopg2 prints the
    server's error (through sys.excepthook, as a SystemError caused by it: eight
    lines on the user's terminal) and raises a vaguer one ("invalid socket"). The
    printed error is the first one, the one to report.
    """
    previous = sys.excepthook

    def keep(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        printed.append(value.__cause__ or value)

    sys.excepthook = keep
    try:
        yield
    finally:
        sys.excepthook = previous


def _first_line(error: DBAPIError) -> str:
    lines = str(error.orig if error.orig is not None else error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


_COPY_UNESCAPES = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}


def _from_copy_text(field: str) -> str | None:
    """One field of COPY's text format back as the text it stands for (None for NULL)."""
    if field == COPY_NULL:
        return None
    return re.sub(r"\\[\\tnr]", lambda m: _COPY_UNESCAPES[m.group()], field)


def _refused_field(error: DBAPIError, view: View) -> str | None:
    """The source field of the value PostgreSQL refused, from the error's COPY context."""
    diag = getattr(error.orig, "diag", None)
    context = getattr(diag, "context", None) or ""
    found = re.search(r", column (.+?): ", context)
    column = found.group(1) if found else None
    return view.columns.get(column) if column else None


def _reordered(
    row: tuple[Any, ...], order: list[int], processors: list[tuple[int, Any]]
) -> tuple[Any, ...]:
    values = [row[index] for index in order]
    for index, processor in processors:
        if values[index] is not None:
            values[index] = processor(values[index])
    return tuple(values)


def _conflict_target(target: Table, view: View, dialect: str) -> dict[str, Any]:
    """The upsert's arbiter: timesheets' unique entry (per dialect), else the primary key."""
    if view.name == "timesheets":
        if dialect == "postgresql":
            return {"constraint": "timesheets_unique_entry"}
        return {"index_elements": list(TIMESHEETS_SQLITE_KEY)}
    return {"index_elements": [target.c[k] for k in view.key]}


def _key_match(target: FromClause, stage: FromClause, view: View) -> Any:
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
