"""Errors a user can act on. Each message says what failed and what to do.

The CLI prints ``Error: <message>`` and exits with ``exit_code``; nothing else
in the package prints.
"""

from __future__ import annotations


class OtcError(Exception):
    """Something failed that the user can act on."""

    exit_code = 1


class ConfigError(OtcError):
    """A setting or option is missing or wrong."""

    exit_code = 2


class NotFound(ConfigError):
    """A view, run, revision, file or database named by the user does not exist."""


class DatabaseUnreachable(OtcError):
    """The database URL does not lead to a database we can open (a failure, not a usage error)."""


class SchemaNotReady(ConfigError):
    """The database schema is behind head, or is a legacy database not yet adopted."""


class SourceError(OtcError):
    """A source (file or API response) cannot be read as an OTC export."""


class TemporaryRefusal(OtcError):
    """Refused for now; a later run clears it (exit 75, sysexits' EX_TEMPFAIL)."""

    exit_code = 75


class LoadLocked(TemporaryRefusal):
    """Another load of the same view is running: a later run (or ``--wait``) gets in."""


class DatabaseBusy(TemporaryRefusal):
    """SQLite: another process kept the database's write lock past the busy timeout."""


class ApiError(SourceError):
    """The OTC API failed, refused the credentials, or answered something that is not a view."""


class ApiRejected(ApiError):
    """The OTC API refused the request (401, 403, other 4xx): a setting to fix, not an outage."""


class ApiUnavailable(ApiError, TemporaryRefusal):
    """The OTC API was not called: its circuit breaker is open or the hourly cap is used up."""

    exit_code = 75


class DatabaseFailed(OtcError):
    """The database failed the load itself (disk, memory, a lock, a timeout, the connection)."""


class ExportNotFound(NotFound, SourceError):
    """The export file or folder named by --from does not exist (a usage error: exit 2)."""


class DatabaseNotFound(NotFound, SchemaNotReady):
    """A read-only command named an SQLite file that does not exist (exit 2)."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a driver error's own, if it wraps one).

    Database and HTTP errors carry several lines (SQL, hints, context); a
    message for the user, a reject's reason or a log line takes the first.
    """
    orig = getattr(error, "orig", None)
    lines = str(orig if orig is not None else error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
