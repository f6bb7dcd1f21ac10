"""Settings from options and environment: database URL, timezone, API limits.

The database URL comes from ``--database-url``, else ``OTC_DATABASE_URL``, else
the legacy ``OTC_PG_*`` variables when any is set, else ``sqlite:///otc.db``.
Passwords are never printed: use :func:`mask_url` for anything shown.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///otc.db"
LEGACY_PG_VARIABLES = (
    "OTC_PG_HOST",
    "OTC_PG_PORT",
    "OTC_PG_DATABASE",
    "OTC_PG_USER",
    "OTC_PG_PASSWORD",
)


@dataclass(frozen=True)
class DatabaseSetting:
    """The database URL and where it came from (for error messages)."""

    url: URL
    origin: str  # "--database-url", "OTC_DATABASE_URL", "OTC_PG_*" or "default"

    @property
    def masked(self) -> str:
        return mask_url(self.url)


def mask_url_text(text: str) -> str:
    """A URL as written, with everything between ``//`` and the last ``@`` masked.

    For a URL that does not parse cleanly: an unencoded ``@``, ``/``, ``:``, ``%`` or
    ``#`` in a password makes parsers split it somewhere else, and what they would
    show as the host or path is then part of the password.
    """
    last_at = text.rfind("@")
    start = text.find("//")
    if start < 0 or last_at < start:
        return text if "@" not in text else "***" + text[last_at:]
    return text[: start + 2] + "***" + text[last_at:]


def parses_cleanly(text: str, parsed: str | None) -> bool:
    """Whether ``parsed`` (a parser's rendering of ``text``, password included) is ``text``.

    Also false for more than one ``@`` in the text: some parsers put the rest of the
    password into the host, and render that back unchanged.
    """
    return parsed == text and text.count("@") <= 1


def mask_url(url: URL | str) -> str:
    """The URL as text with any password replaced by ``***``.

    A URL given as text that does not parse cleanly is masked from ``//`` to the
    last ``@`` (see :func:`mask_url_text`).
    """
    if isinstance(url, str):
        try:
            parsed = make_url(url)
        except ArgumentError:
            return mask_url_text(url)
        if not parses_cleanly(url, parsed.render_as_string(hide_password=False)):
            return mask_url_text(url)
        url = parsed
    if url.host and "@" in url.host:
        # Parsed from text with an unencoded '@' in the password: the "host" holds the rest.
        return mask_url_text(url.render_as_string(hide_password=False))
    return url.render_as_string(hide_password=True)


def _parse_url(text: str, origin: str) -> URL:
    try:
        url = make_url(text)
    except ArgumentError:
        raise ConfigError(
            f"{origin} is not a database URL; use e.g. "
            "postgresql+psycopg2://user@host/servicedesk or sqlite:///otc.db"
        ) from None
    if text.count("@") > 1:
        # SQLAlchemy would take what follows the first '@' as the host, and the
        # driver's "could not translate host name" would then print it.
        raise ConfigError(
            f"{origin} holds more than one '@' ({mask_url_text(text)}); write an '@' in "
            "the user name or password as %40 (and '/' as %2F, ':' as %3A, '%' as %25, "
            "'#' as %23), or put the password in ~/.pgpass"
        )
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which we do not ship.
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg2")
    if not url.drivername.startswith(("postgresql", "sqlite")):
        raise ConfigError(
            f"{origin} names a {url.drivername} database; otc-pipeline supports "
            "PostgreSQL (postgresql+psycopg2://…) and SQLite (sqlite:///file.db)"
        )
    return url


def database_setting(
    option: str | None = None, environ: Mapping[str, str] | None = None
) -> DatabaseSetting:
    """Resolve the database URL by the documented precedence."""
    env = os.environ if environ is None else environ
    if option:
        return DatabaseSetting(_parse_url(option, "--database-url"), "--database-url")
    if env.get("OTC_DATABASE_URL"):
        return DatabaseSetting(
            _parse_url(env["OTC_DATABASE_URL"], "OTC_DATABASE_URL"), "OTC_DATABASE_URL"
        )
    if any(env.get(name) for name in LEGACY_PG_VARIABLES):
        port_text = env.get("OTC_PG_PORT") or "5432"
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"OTC_PG_PORT must be a number, not {port_text!r}") from None
        url = URL.create(
            "postgresql+psycopg2",
            username=env.get("OTC_PG_USER") or "servicedesk_user",
            password=env.get("OTC_PG_PASSWORD") or None,
            host=env.get("OTC_PG_HOST") or "localhost",
            port=port,
            database=env.get("OTC_PG_DATABASE") or "servicedesk",
        )
        return DatabaseSetting(url, "OTC_PG_*")
    return DatabaseSetting(make_url(DEFAULT_DATABASE_URL), "default")


def timezone_name(environ: Mapping[str, str] | None = None) -> str:
    """``OTC_TIMEZONE`` (default UTC): values with an offset are converted to it."""
    env = os.environ if environ is None else environ
    return env.get("OTC_TIMEZONE") or "UTC"


_DURATION_UNITS = {"m": 1 / 60, "h": 1.0, "d": 24.0, "w": 24.0 * 7}


def parse_hours(text: str, name: str, default_unit: str = "h") -> float:
    """Hours in ``text``: a number with an optional unit, ``30m``, ``26h``, ``90d``, ``2w``.

    A bare number is in ``default_unit``. ``name`` (the option or variable) is named
    in the ConfigError for anything else.
    """
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _DURATION_UNITS else default_unit
    number = value[:-1] if value[-1:] in _DURATION_UNITS else value
    try:
        hours = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        hours = float("nan")
    if not 0 < hours < float("inf"):
        raise ConfigError(
            f"{name} must be a positive duration such as 26h, 90m, 2d or 12 "
            f"(a bare number is in {'hours' if default_unit == 'h' else 'days'}), not {text!r}"
        )
    return hours


def stale_hours(
    view_name: str, level: str, default: float, environ: Mapping[str, str] | None = None
) -> float:
    """``OTC_<VIEW>_STALE_<LEVEL>_HOURS``, else ``OTC_STALE_<LEVEL>_HOURS``, else ``default``.

    ``level`` is ``WARN`` or ``ERROR``: how old a view's last successful load may be.
    """
    env = os.environ if environ is None else environ
    for name in (f"OTC_{view_name.upper()}_STALE_{level}_HOURS", f"OTC_STALE_{level}_HOURS"):
        text = env.get(name)
        if text is not None and text.strip():
            return parse_hours(text, name)
    return default


def date_order_setting(environ: Mapping[str, str] | None = None) -> str:
    """``OTC_DATE_ORDER`` (default dmy): how slashed dates read, day-first or month-first."""
    env = os.environ if environ is None else environ
    order = (env.get("OTC_DATE_ORDER") or "dmy").strip().lower()
    if order not in ("dmy", "mdy"):
        raise ConfigError(
            f"OTC_DATE_ORDER={order!r} is not a date order; use dmy (day-first, the default) "
            "or mdy (month-first)"
        )
    return order
