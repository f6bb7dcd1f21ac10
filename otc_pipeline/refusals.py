"""What tells a row the database refused (a reject) from a database that failed (the view fails)."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from .errors import DatabaseFailed, first_line

# Only an error about one row's values is isolated (by bisection) into rejects: SQLSTATE
# class 22 (data exception: a value out of range, a bad date), class 23 (integrity: not
# null, unique, check), and P0001, what a trigger's RAISE EXCEPTION gives when it names no
# code (how triggers refuse a row). Anything else (class 53 disk or memory, 55P03/57014
# lock and statement timeouts, 08 connection, 57P0x operator, 40 deadlock, XX internal)
# concerns no row: retrying halves of a chunk would only fail again, so the view fails at
# once with that first error.
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
    detail = first_line(error).removeprefix("FATAL:  ").strip()
    sqlstate = getattr(orig, "pgcode", None)
    code = f"SQLSTATE {sqlstate}" if sqlstate else getattr(orig, "sqlite_errorname", None)
    # 57P01-57P04: the server shut down, crashed, or the session was terminated.
    if error.connection_invalidated or (sqlstate or "").startswith(("08", "57P")):
        what = f"the database connection was lost ({detail}{f'; {code}' if code else ''})"
    else:
        what = f"the database failed: {detail}{f' ({code})' if code else ''}"
    return DatabaseFailed(f"{what}; nothing of this view was committed; run the load again")


def refused(error: DBAPIError) -> str:
    """A reject's reason for a row the database refused."""
    return f"refused by the database: {first_line(error)}"
