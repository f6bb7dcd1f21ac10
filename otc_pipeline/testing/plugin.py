"""pytest fixtures for testing an app against the servicedesk schema.

Loaded automatically (``pytest11`` entry point) wherever otc-pipeline is
installed. Fixtures:

- ``otc_database_url``: where the test database lives: ``--otc-database-url``,
  else ``OTC_TEST_DATABASE_URL``, else a SQLite file in a temporary directory.
  A PostgreSQL URL names a *server*: the session creates its own database there.
- ``otc_engine`` (session): an engine on a database migrated to head with
  otc-pipeline's own Alembic revisions; a PostgreSQL database is created for
  the session and dropped at its end.
- ``otc_connection``: the test's connection, inside a transaction rolled back
  at teardown.
- ``otc_session``: an ORM session on that connection; the factories write to it.
- ``otc_factories``: :mod:`otc_pipeline.testing.factories`, bound to ``otc_session``.
- ``otc_table``: ``otc_table("tickets")`` gives the table's name for hand-written
  SQL on either database (``servicedesk.tickets`` on PostgreSQL).
- ``otc_load``: run a real load of one view into the test database.

The module imports nothing heavy at import time: pytest imports it in every
run of every project that has otc-pipeline installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session

    from otc_pipeline.pipeline import RunSummary

ENV_VAR = "OTC_TEST_DATABASE_URL"
OPTION = "--otc-database-url"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("otc-pipeline")
    group.addoption(
        OPTION,
        dest="otc_database_url",
        default=None,
        metavar="URL",
        help=(
            "Database for the otc_* fixtures: a SQLite URL, or a PostgreSQL server URL "
            "(postgresql+psycopg2://user@host:5432/postgres) on which each session creates "
            f"and drops its own database. Default: ${ENV_VAR}, else a temporary SQLite file."
        ),
    )


@pytest.fixture(scope="session")
def otc_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The URL the otc_* fixtures use (a PostgreSQL URL names the server, not the database)."""
    url = request.config.getoption("otc_database_url") or os.environ.get(ENV_VAR)
    if url:
        return str(url)
    return f"sqlite:///{tmp_path_factory.mktemp('otc') / 'otc-test.db'}"


def _migrate_to_head(engine: Engine) -> None:
    from otc_pipeline import migrate

    migrate.upgrade(engine, "head")


def _fail(message: str) -> NoReturn:
    pytest.fail(f"otc-pipeline test database: {message}", pytrace=False)


@pytest.fixture(scope="session")
def otc_engine(otc_database_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head; a PostgreSQL one is created for this session."""
    import uuid

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import StaticPool

    from otc_pipeline.db import make_engine

    url = make_url(otc_database_url)
    shown = url.render_as_string(hide_password=True)

    if url.get_backend_name() == "sqlite":
        kwargs: dict[str, Any] = {}
        if url.database in (None, "", ":memory:"):
            # An in-memory database lives as long as its one connection: share it.
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        engine = make_engine(url, **kwargs)
        try:
            _migrate_to_head(engine)
            yield engine
        finally:
            engine.dispose()
        return

    if url.get_backend_name() != "postgresql":
        _fail(f"{shown} is neither SQLite nor PostgreSQL")

    # pid + random suffix: parallel sessions (xdist workers, two CI jobs) on one
    # server never pick the same name; "otc_test_" marks it as disposable.
    name = f"otc_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = make_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except DBAPIError as exc:
        admin.dispose()
        from otc_pipeline.errors import first_line

        reason = first_line(exc)
        _fail(
            f"cannot create a database on {shown}: {reason}; pass {OPTION} (or set {ENV_VAR}) "
            "to a PostgreSQL server where this user may CREATE DATABASE"
        )
    engine = make_engine(url.set(database=name))
    try:
        _migrate_to_head(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def otc_connection(otc_engine: Engine) -> Iterator[Connection]:
    """The test's connection, inside a transaction that is rolled back at teardown."""
    conn = otc_engine.connect()
    transaction = conn.begin()
    try:
        yield conn
    finally:
        if transaction.is_active:
            transaction.rollback()
        conn.close()


@pytest.fixture
def otc_session(otc_connection: Connection) -> Iterator[Session]:
    """A session that sees its own writes and leaves nothing behind; the factories use it.

    ``session.commit()`` only releases a savepoint: the test's transaction is
    still rolled back at teardown.
    """
    from sqlalchemy.orm import Session

    from otc_pipeline.testing import bind_session

    session = Session(bind=otc_connection, join_transaction_mode="create_savepoint")
    try:
        with bind_session(session):
            yield session
    finally:
        session.close()


@pytest.fixture
def otc_factories(otc_session: Session) -> ModuleType:
    """The factories module (TicketFactory, TimesheetFactory…), writing to ``otc_session``."""
    from otc_pipeline.testing import factories

    return factories


@pytest.fixture
def otc_table(otc_engine: Engine) -> Callable[[str], str]:
    """``otc_table("tickets")``: the table's name for hand-written SQL on this database."""
    prefix = "servicedesk." if otc_engine.dialect.name == "postgresql" else ""

    def qualify(table: str) -> str:
        return f"{prefix}{table}"

    return qualify


@pytest.fixture
def otc_load(
    otc_session: Session, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., RunSummary]:
    """``otc_load(view, records_or_path=None, *, sample_rows=None)``: a real load, rolled back later.

    Loads ``records_or_path`` (dicts in the OTC field format, or a ``.json``,
    ``.csv`` or ``.xlsx`` export) into ``view``; with no source, an ``otc
    sample`` export of ``sample_rows`` records (default 50). The load runs on
    the test's connection inside its transaction, so the test sees the rows
    (and the etl_metadata run) and teardown removes them.
    """

    def load(
        view: str,
        records_or_path: Path | str | Iterable[dict[str, Any]] | None = None,
        *,
        sample_rows: int | None = None,
        chunk_size: int = 5000,
    ) -> RunSummary:
        from otc_pipeline.pipeline import load_view

        source: Path | Iterable[dict[str, Any]]
        if records_or_path is None:
            source = _sample_export(view, sample_rows or 50, tmp_path_factory)
        elif isinstance(records_or_path, str | Path):
            source = Path(records_or_path)
        else:
            source = records_or_path
        # Factory rows must be in the database before the load looks for conflicts.
        otc_session.flush()
        # Given the test's Connection, load_view works in SAVEPOINTs inside the test's
        # transaction: the test sees the rows and the run, and teardown removes them.
        summary = load_view(otc_session.connection(), view, source, chunk_size=chunk_size)
        # The load wrote behind the session's back: reload objects on next access.
        otc_session.expire_all()
        return summary

    return load


def _sample_export(view: str, rows: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from otc_pipeline.sample import write_sample

    counts = {name: rows if name == view else 0 for name in ("tickets", "timesheets", "comments")}
    if view not in counts:
        raise ValueError(f"unknown view {view!r}: use one of {', '.join(counts)}")
    directory = tmp_path_factory.mktemp(f"otc-sample-{view}")
    files = write_sample(
        directory,
        tickets=counts["tickets"],
        timesheets=counts["timesheets"],
        comments=counts["comments"],
        fmt="json",
        seed=rows,
    )
    return Path(files[view])
