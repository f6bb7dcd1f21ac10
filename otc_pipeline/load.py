"""Loading one view's parsed chunks into its table, inside the caller's transaction.

A load takes one of two ways, chosen before the first record is read (see
:func:`start_load`), and each counts for itself:

- :class:`FirstLoad`, into an empty table from a file: each chunk is merged as
  soon as it is staged, while the next one is read.
- :class:`MergeAtEnd`, into a table with rows, or from the API: everything is
  staged first, and merged once the source has ended, under the table lock.

Either way the table is locked against other writers from its first merge until
the transaction ends, and nothing is locked while records are still being read
(docs/design.md says why, with the measurements).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, insert, select, update

from .chunks import ParsedChunk, SplitEnd
from .db import WRITER
from .errors import TemporaryRefusal
from .merge import Merge, Written, is_empty, lock_target
from .models import EtlReject
from .parse import Reject
from .reconcile import Reconcile, reconcile
from .stage import Stage, temporary_table
from .views import View


@dataclass
class LoadCounts:
    """Exact counts of one load; fetched == the sum of the six after it.

    ``stale``: records older, by the view's modified time, than the row the table
    holds (the row stays as it is).
    """

    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    duplicates: int = 0
    rejected: int = 0
    # Rows held that a reconciled source lacks, moved to <table>_removed (not among fetched).
    removed: int = 0


class TableFilled(TemporaryRefusal):
    """Another writer put rows into the table a first load found empty."""


def table_looks_empty(conn: Connection, view: View) -> bool:
    """Whether the view's table is empty, without keeping other writers out.

    A first load checks again under the lock. SQLite reads on a connection of its
    own: a read inside the load's transaction would keep other writers from
    committing until the load ends (rollback journal), or make the load's first
    write fail if one did (WAL).
    """
    url = conn.engine.url
    if (
        conn.dialect.name != "sqlite"
        or url.database in (None, "", ":memory:")
        # Inside a caller's transaction (the otc_load fixture) only it sees its rows.
        or conn.in_nested_transaction()
    ):
        return is_empty(conn, view)
    with conn.engine.connect() as other:
        # A reader: not BEGIN IMMEDIATE, which would wait for a write lock the load's
        # own connection may hold.
        options = {k: v for k, v in conn.get_execution_options().items() if k != WRITER}
        empty = is_empty(other.execution_options(**options), view)
        other.rollback()
    return empty


def start_load(
    conn: Connection,
    view: View,
    run_id: int | None,
    *,
    merge_as_read: bool,
    reconcile: Reconcile | None = None,
) -> Load:
    """The way to load ``view``: a first load if the table is empty and the source may
    be merged as it is read (a file), else a load that merges at the end (and may
    reconcile: an empty table holds nothing to remove)."""
    if merge_as_read and table_looks_empty(conn, view):
        return FirstLoad(conn, view, run_id)
    return MergeAtEnd(conn, view, run_id, reconcile)


class Load:
    """What both ways share: staging, rejects, the counts and the newest source time.

    Use: ``take()`` every chunk and the read's end, then ``finish()``.
    """

    # Whether chunks may come in any order (a source read in two halves side by side).
    takes_any_order = False

    def __init__(self, conn: Connection, view: View, run_id: int | None) -> None:
        self.conn = conn
        self.view = view
        self.run_id = run_id
        self.counts = LoadCounts()
        self.latest_source_time: datetime | None = None
        self.warnings: list[str] = []  # for the run's summary
        # Merged by position ranges at the end: positions are indexed.
        self.stage = Stage(conn, view, indexed=self.takes_any_order)
        # Rows not compared with the table before the merge keep a newer held row.
        self.merge = Merge(conn, view, self.stage, keep_newer=not self.takes_any_order)
        self._maybe_repeats: set[int] = set()  # key hashes the reader saw more than once
        self._rejects = self._create_rejects()
        self._renumber: SplitEnd | None = None

    def _create_rejects(self) -> Any:
        """The load's rejects, kept aside until the end (on SQLite a write to etl_rejects
        would take the database's write lock while records are still being fetched)."""
        columns = [
            # A second half's provisional positions are above any INTEGER (see chunks).
            Column(c.key, BigInteger if c.key == "source_position" else c.type)
            for c in EtlReject.__table__.columns
            if c.key != "id"
        ]
        return temporary_table(self.conn, f"otc_rejects_{self.view.name}", *columns)

    def take(self, item: ParsedChunk | SplitEnd) -> None:
        """Stage one chunk and store its rejects (or note the end of a read in halves)."""
        if isinstance(item, SplitEnd):
            self._renumber = item
            self._maybe_repeats.update(item.maybe_repeats)
            return
        chunk = item
        self.counts.fetched += chunk.records
        self.counts.duplicates += chunk.duplicates
        self._maybe_repeats.update(chunk.maybe_repeats)
        self.store_rejects(chunk.rejects)
        if not chunk.groups:
            return
        column_sets: set[int] = set()
        staged = 0
        for group in chunk.groups:
            column_sets |= group.column_sets
            rows, refused = self.stage.add(group)
            staged += rows
            self.store_rejects(refused)
        self._note_source_time(chunk)
        if staged:
            self.staged(column_sets, chunk.first, chunk.last, staged)

    def staged(self, column_sets: set[int], first: int, last: int, rows: int) -> None:
        """A chunk's rows are in the stage: the way's own next step."""
        raise NotImplementedError

    def finish(self) -> LoadCounts:
        """Merge what waits for the end, keep the rejects, let the temporary tables go."""
        self.finish_merging()
        rejects = self._rejects
        if self._renumber is not None:
            # Rejects of the second half were stored at provisional positions.
            second_half, position = self._renumber.second_half, rejects.c.source_position
            self.conn.execute(
                update(rejects)
                .where(second_half.in_second_half(position))
                .values(source_position=second_half.source_position(position))
            )
        names = [c.key for c in rejects.columns]
        self.conn.execute(insert(EtlReject).from_select(names, select(rejects)))
        # Inside a caller's transaction (the otc_load fixture) nothing commits, so a
        # second load of the view in that transaction needs the names free again.
        rejects.drop(self.conn)
        self.stage.drop()
        return self.counts

    def finish_merging(self) -> None:
        raise NotImplementedError

    def store_rejects(self, rejects: Sequence[Reject]) -> None:
        """Count rejects and keep them for etl_rejects (a dry run, which has no run, counts)."""
        if not rejects:
            return
        self.counts.rejected += len(rejects)
        if self.run_id is None:
            return
        self.conn.execute(
            insert(self._rejects),
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

    def _note_source_time(self, chunk: ParsedChunk) -> None:
        """Keep the newest source time (the view's freshness) seen so far."""
        time_field = self.view.source_time_field
        if time_field is None:
            return
        newest = self.stage.newest(self.view.fields[time_field], chunk.first, chunk.last)
        if newest is not None and (
            self.latest_source_time is None or newest > self.latest_source_time
        ):
            self.latest_source_time = newest

    def _written(self, written: Written) -> Written:
        """Store an upsert's refused rows."""
        self.store_rejects(written.rejects)
        return written


class FirstLoad(Load):
    """Into an empty table: each chunk is merged as soon as it is staged.

    Nothing was there before (checked again under the lock at the first merge),
    so a row that meets its key already in the table met a row of an earlier
    chunk: it replaces it (the last occurrence wins) and counts as a duplicate.
    """

    def __init__(self, conn: Connection, view: View, run_id: int | None) -> None:
        super().__init__(conn, view, run_id)
        self._locked = False

    def staged(self, column_sets: set[int], first: int, last: int, rows: int) -> None:
        if not self._locked:
            lock_target(self.conn, self.view)
            self._locked = True
            if not is_empty(self.conn, self.view):
                raise TableFilled(
                    f"another writer put rows into {self.view.table.name} after this first "
                    "load found it empty; nothing was loaded; run the load again (it then "
                    "compares with what is there)"
                )
        written = self._written(self.merge.merge(column_sets, first, last))
        self.counts.inserted += written.inserted
        # The table was empty: a key already there came from an earlier chunk.
        self.counts.duplicates += written.sent - written.inserted
        self.stage.empty()

    def finish_merging(self) -> None:
        if not self._locked:
            # Nothing was staged (every record rejected, or none): the write lock is
            # still taken, so that the rejects and the run record are written alike.
            lock_target(self.conn, self.view)


@dataclass
class _Chunk:
    """A staged chunk waiting for the merge: its positions and column sets."""

    first: int
    last: int
    column_sets: set[int]


class MergeAtEnd(Load):
    """Stage the whole source, then merge under the lock.

    Then, into a table with rows, the staged rows the table does not already hold
    exactly are noted (rows it does hold are never touched: an upsert's WHERE
    still locks, so writes, the row it skips), repeats across chunks are settled
    (the last occurrence wins; the others count as duplicates), and the noted rows
    merged, so no row is written that a later row would replace. Into a table
    still empty (an API first load), nothing is compared. On SQLite the load's
    transaction does not even read the database file before the merge.

    Chunks may come in any order (a read in two halves), since rows are placed by
    source position.
    """

    takes_any_order = True

    def __init__(
        self, conn: Connection, view: View, run_id: int | None, reconcile: Reconcile | None
    ) -> None:
        super().__init__(conn, view, run_id)
        self.reconcile_request = reconcile
        self._chunks: list[_Chunk] = []
        self._column_sets: set[int] = set()
        self._staged_rows = 0

    def staged(self, column_sets: set[int], first: int, last: int, rows: int) -> None:
        self._chunks.append(_Chunk(first, last, column_sets))
        self._column_sets |= column_sets
        self._staged_rows += rows

    def finish_merging(self) -> None:
        lock_target(self.conn, self.view)
        if not self._chunks:
            if self.reconcile_request is not None:
                self.warnings.append("--reconcile removed nothing: the source held no rows")
            return
        self._merge_all()
        if self.reconcile_request is not None:
            outcome = reconcile(
                self.conn,
                self.view,
                self.stage,
                self.reconcile_request,
                run_id=self.run_id,
                rejected=self.counts.rejected,
            )
            self.counts.removed = outcome.removed
            self.warnings.extend(outcome.warnings)

    def _merge_all(self) -> None:
        merge = self.merge
        # Repeats within a chunk were dropped as it was read.
        maybe_repeats = self._maybe_repeats if len(self._chunks) > 1 else set()
        # Repeats first: the row that wins for each key is what the table is compared with.
        dropped = merge.drop_repeats(maybe_repeats)
        self.counts.duplicates += dropped
        if is_empty(self.conn, self.view):
            # Nothing to compare with: chunk by chunk, each an index range of the stage
            # (no ANALYZE: measured 0.17 s of a 48k-row API first load, for no better plan).
            for chunk in self._chunks:
                written = self._merged(chunk, None)
                self.counts.inserted += written.inserted
            return
        changed = merge.changed_table()
        noted, stale = merge.note_changed(changed, self._column_sets)
        self.counts.stale += stale
        self.counts.unchanged += self._staged_rows - dropped - noted - stale
        if noted:
            merge.analyze()
            for chunk in self._chunks:
                written = self._merged(chunk, changed)
                self.counts.inserted += written.inserted
                self.counts.updated += written.written - written.inserted
        changed.drop(self.conn)

    def _merged(self, chunk: _Chunk, only: Any) -> Written:
        written = self._written(self.merge.merge(chunk.column_sets, chunk.first, chunk.last, only))
        if written.written != written.sent:
            # Compared under the lock: every row sent differs from the held one, or is new.
            raise RuntimeError(
                f"{self.view.name}: {written.sent} rows were sent to the upsert but "
                f"{written.written} written; nothing was committed (please report this)"
            )
        return written
