"""Real databases for the tests: SQLite always, PostgreSQL whenever reachable.

PostgreSQL tests create throwaway databases named ``otc_test_*`` on the server
given by ``OTC_TEST_DATABASE_URL`` (default: the local trust-auth server) and
drop them afterwards; no other database is touched. Under ``CI=true`` an
unreachable server fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from otc_pipeline.db import make_engine

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def _pg_admin_url() -> URL:
    return make_url(os.environ.get("OTC_TEST_DATABASE_URL") or DEFAULT_PG_ADMIN_URL)


_pg_reason: str | None = None
_pg_checked = False


def pg_unavailable_reason() -> str | None:
    """None when PostgreSQL is reachable, else why not (checked once)."""
    global _pg_checked, _pg_reason
    if not _pg_checked:
        _pg_checked = True
        try:
            engine = create_engine(_pg_admin_url(), connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("select 1"))
            engine.dispose()
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            _pg_reason = str(exc).splitlines()[0]
    return _pg_reason


def require_postgresql() -> None:
    reason = pg_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required in CI and unreachable: {reason}")
    pytest.skip(
        f"PostgreSQL unreachable ({reason}); set OTC_TEST_DATABASE_URL to a server "
        "where the tests may create and drop databases"
    )


class PgDatabases:
    """Creates and drops throwaway databases on the test server."""

    def __init__(self) -> None:
        self.admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
        self.created: list[str] = []

    def create(self, template: str | None = None) -> URL:
        name = f"otc_test_{uuid.uuid4().hex[:12]}"
        clause = f" TEMPLATE {template}" if template else ""
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}{clause}")
        self.created.append(name)
        return _pg_admin_url().set(database=name)

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if name in self.created:
            self.created.remove(name)

    def close(self) -> None:
        for name in list(self.created):
            self.drop(name)
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    require_postgresql()
    dbs = PgDatabases()
    yield dbs
    dbs.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def empty_db_url(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database of each dialect, as a URL string (password-free)."""
    if dialect == "sqlite":
        yield f"sqlite:///{tmp_path / 'otc.db'}"
        return
    dbs: PgDatabases = request.getfixturevalue("pg_databases")
    url = dbs.create()
    yield url.render_as_string(hide_password=False)
    dbs.drop(url.database or "")


@pytest.fixture(scope="session")
def _pg_head_template(request: pytest.FixtureRequest) -> Iterator[str]:
    """A PostgreSQL database migrated to head, copied for each test that needs one."""
    from otc_pipeline import migrate

    dbs: PgDatabases = request.getfixturevalue("pg_databases")
    url = dbs.create()
    engine = make_engine(url)
    migrate.upgrade(engine, "head")
    engine.dispose()
    yield url.database or ""


@pytest.fixture
def db_url(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database of each dialect migrated to head, as a URL string."""
    from otc_pipeline import migrate

    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'otc.db'}"
        engine = make_engine(url)
        migrate.upgrade(engine, "head")
        engine.dispose()
        yield url
        return
    dbs: PgDatabases = request.getfixturevalue("pg_databases")
    template = request.getfixturevalue("_pg_head_template")
    made = dbs.create(template=template)
    yield made.render_as_string(hide_password=False)
    dbs.drop(made.database or "")


@pytest.fixture
def engine(db_url: str) -> Iterator[object]:
    """An engine on a fresh migrated database of each dialect."""
    eng = make_engine(db_url)
    yield eng
    eng.dispose()
