"""The stage: a load's temporary table of parsed rows, filled by COPY or executemany.

Staging touches temporary tables only, so it needs no lock on the view's table:
records can be fetched, retried and backed off while nothing of the database is
held. Rows the database refuses while staging (a number too large for its
column, say) come back as rejects.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    MetaData,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.exc import DBAPIError

from .chunks import COLUMN_SET, KEY_HASH, POSITION, STAGE_PREFIX, StagedGroup, stage_columns
from .copy_text import from_copy_text
from .parse import Reject
from .refusals import database_failure, is_row_refusal, refused
from .views import View


def temporary_table(conn: Connection, name: str, *columns: Column[Any]) -> Table:
    """Create a temporary table for this load (PostgreSQL drops it at the commit)."""
    dialect = conn.dialect.name
    options: dict[str, Any] = {"postgresql_on_commit": "DROP"} if dialect == "postgresql" else {}
    table = Table(name, MetaData(), *columns, prefixes=["TEMPORARY"], **options)
    if dialect == "sqlite":
        # SQLite keeps temporary tables for the connection's life, and pooled
        # connections live on: start from a clean table. (Not drop(checkfirst=True):
        # its look into the main database's schema would keep other writers out.)
        quoted = conn.dialect.identifier_preparer.quote(name)
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{quoted}")
    table.create(conn)
    return table


class Stage:
    """One view's staged rows: every column of the view, plus position, column set and key hash.

    ``indexed`` adds an index on the position, for a load that compares and merges
    the stage by position ranges at the end (positions only grow, so the index is
    appended to, cheaply, as rows stream in).
    """

    def __init__(self, conn: Connection, view: View, *, indexed: bool) -> None:
        self.conn = conn
        self.view = view
        self.columns = stage_columns(view)
        columns = [
            Column(POSITION, BigInteger, nullable=False),
            Column(COLUMN_SET, BigInteger, nullable=False),
            Column(KEY_HASH, BigInteger, nullable=False),
            *[Column(key, view.table.c[key].type) for key in self.columns],
        ]
        self.table = temporary_table(conn, f"otc_stage_{view.name}", *columns)
        if indexed:
            Index(f"otc_stage_{view.name}_position", self.table.c[POSITION]).create(conn)

    # --- what a staged row carried ---------------------------------------------------

    def columns_of(self, column_set: int) -> tuple[str, ...]:
        """The columns of a column set (a bit per column its record carried)."""
        return tuple(c for i, c in enumerate(self.columns) if column_set >> i & 1)

    def carried(self, column: str) -> Any:
        """Whether a staged row's record carried ``column`` (its bit in the column set)."""
        bit = 1 << self.columns.index(column)
        return self.table.c[COLUMN_SET].op("&")(bit) != 0

    # --- filling and emptying --------------------------------------------------------

    def add(self, group: StagedGroup) -> tuple[int, list[Reject]]:
        """Stage one group's rows: how many were staged, and the rows the database refused.

        A refusal while staging is isolated like one at the merge: the rows are retried
        in halves inside savepoints until the refused ones are found. The whole group
        goes in one statement otherwise.
        """
        rejects: list[Reject] = []
        rows: list[Any] = (
            [group.copy_text] if group.copy_text is not None else list(group.rows or ())
        )
        staged = self._stage_rows(rows, rejects, whole=group.copy_text is not None)
        return staged, rejects

    def _stage_rows(self, rows: list[Any], rejects: list[Reject], whole: bool = False) -> int:
        """Stage ``rows`` (COPY lines as one bytes, if ``whole``), bisecting refused ones."""
        savepoint = self.conn.begin_nested()
        try:
            if self.conn.dialect.name == "postgresql":
                staged = self._copy(rows[0] if whole else b"\n".join(rows) + b"\n")
            else:
                staged = self._insert(rows)
        except DBAPIError as exc:
            if not is_row_refusal(exc):
                raise database_failure(exc) from exc
            savepoint.rollback()
            if whole:
                rows = rows[0].split(b"\n")[:-1]
            if len(rows) == 1:
                rejects.append(self._refused_row(rows[0], exc))
                return 0
            middle = len(rows) // 2
            return self._stage_rows(rows[:middle], rejects) + self._stage_rows(
                rows[middle:], rejects
            )
        savepoint.commit()
        return staged

    def _copy(self, copy_text: bytes) -> int:
        """COPY lines (COPY's text format) into the stage; how many rows."""
        conn = self.conn
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        quote = conn.dialect.identifier_preparer.quote
        names = ", ".join(quote(name) for name in [*STAGE_PREFIX, *self.columns])
        statement = f"COPY {self.table.name} ({names}) FROM STDIN"
        cursor: Any = dbapi.cursor()
        driver_error = conn.dialect.loaded_dbapi.Error
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
                conn.invalidate(exc)
            first = next((e for e in printed if isinstance(e, driver_error)), exc)
            raise DBAPIError.instance(
                statement,
                None,
                first,
                driver_error,
                connection_invalidated=lost,
                dialect=conn.dialect,
            ) from exc
        finally:
            if not dbapi.closed:
                cursor.close()

    def _insert(self, staged_rows: list[tuple[Any, ...]]) -> int:
        """Insert rows into the stage by executemany; how many rows.

        Straight to the driver with positional rows: building a dict per row for
        SQLAlchemy's executemany took 2.4 s of a 4.2 s SQLite reload of 100k
        timesheets. Values go through the same bind processors SQLAlchemy applies
        (dates, numbers and flags as SQLite stores them), so rows match those the
        ORM writes.
        """
        names = [*STAGE_PREFIX, *self.columns]
        dialect = self.conn.dialect
        compiled = (
            insert(self.table)
            .values({name: bindparam(name) for name in names})
            .compile(dialect=dialect)
        )
        # The statement takes the values in the stage's column order.
        order = [names.index(name) for name in compiled.positiontup or ()]
        processors = [
            (index, processor)
            for index, name in enumerate(compiled.positiontup or ())
            # The dialect's own type: SQLite's DATETIME keeps microseconds, as the ORM does.
            if (processor := self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
        ]
        rows = [_reordered(row, order, processors) for row in staged_rows]
        if rows:
            self.conn.exec_driver_sql(str(compiled), rows)
        return len(rows)

    def empty(self) -> None:
        if self.conn.dialect.name == "postgresql":
            # TRUNCATE leaves no dead rows behind for the next chunk's scans to wade through.
            self.conn.exec_driver_sql(f"TRUNCATE {self.table.name}")
        else:
            self.conn.execute(delete(self.table))

    def drop(self) -> None:
        # Inside a caller's transaction (the otc_load fixture) nothing commits, so a
        # second load of the view in that transaction needs the name free again.
        self.table.drop(self.conn)

    # --- reading it ------------------------------------------------------------------

    def newest(self, column: str, first: int, last: int) -> Any:
        """The largest value of ``column`` among the staged rows at positions [first, last]."""
        stage = self.table
        return self.conn.execute(
            select(func.max(stage.c[column])).where(stage.c[POSITION].between(first, last))
        ).scalar()

    def record_at(self, position: int) -> dict[str, Any]:
        """A staged row as the record it came from (the fields its record carried)."""
        stage = self.table
        column_set, *values = self.conn.execute(
            select(stage.c[COLUMN_SET], *[stage.c[c] for c in self.columns]).where(
                stage.c[POSITION] == position
            )
        ).one()
        return self._record(column_set, values)

    def _record(self, column_set: int, values: list[Any]) -> dict[str, Any]:
        return {
            self.view.columns[c]: v
            for i, (c, v) in enumerate(zip(self.columns, values, strict=True))
            if column_set >> i & 1
        }

    def _refused_row(self, row: Any, error: DBAPIError) -> Reject:
        """The reject of a row the database refused while staging (a COPY line or a row)."""
        if isinstance(row, bytes):
            fields = row.decode().split("\t")
            values: list[Any] = [from_copy_text(f) for f in fields[len(STAGE_PREFIX) :]]
            column_set, position = int(fields[0]), int(fields[1])
        else:
            values, column_set, position = list(row[len(STAGE_PREFIX) :]), row[0], int(row[1])
        record = self._record(column_set, values)
        field = _refused_field(error, self.view)
        value = None if field is None else record.get(field)
        return Reject(position, field, value, refused(error), record)


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
