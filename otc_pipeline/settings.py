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


def mask_url(url: URL | str) -> str:
    """The URL as text with any password replaced by ``***``."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except ArgumentError:
            return "<unparseable URL>"
    return url.render_as_string(hide_password=True)


def _parse_url(text: str, origin: str) -> URL:
    try:
        url = make_url(text)
    except ArgumentError:
        raise ConfigError(
            f"{origin} is not a database URL; use e.g. "
            "postgresql+psycopg2://user@host/servicedesk or sqlite:///otc.db"
        ) from None
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
