"""The pytest plugin, as a downstream project sees it: its own tests, no conftest of ours.

Each test writes a small project into a temporary directory and runs pytest on
it in a subprocess, so the plugin arrives the way users get it: through the
``pytest11`` entry point of the installed package.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

pytest_plugins = ["pytester"]

PG_SERVER_URL = os.environ.get("OTC_TEST_DATABASE_URL") or (
    "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)

DOWNSTREAM_TESTS = '''
"""A dashboard's tests, written only against the otc_* fixtures and the factories."""

import pytest
from sqlalchemy import func, select, text

from otc_pipeline.models import Comment, Ticket, Timesheet
from otc_pipeline.testing import NoTestSession
from otc_pipeline.testing.factories import TicketFactory, TimesheetFactory


def test_tickets_with_timesheets(otc_session, otc_table):
    ticket = TicketFactory(open=True, with_timesheets=3, with_comments=2)
    TicketFactory(closed=True, with_timesheets=1)
    TimesheetFactory(orphaned=True)

    # Through the ORM.
    sheets = otc_session.scalars(
        select(Timesheet).where(Timesheet.crm_id == ticket.ticket_id)
    ).all()
    assert len(sheets) == 3 and len(ticket.comments) == 2
    assert otc_session.scalar(select(func.count()).select_from(Ticket)) == 2

    # Through SQL, by the legacy column names.
    hours = otc_session.execute(
        text(f'SELECT sum("TS-Hours") FROM {otc_table("timesheets")} WHERE "TS-Crm ID" = :id'),
        {"id": ticket.ticket_id},
    ).scalar_one()
    assert hours == sum(s.hours for s in sheets)
    total = otc_session.execute(text(f"SELECT count(*) FROM {otc_table('timesheets')}"))
    assert total.scalar_one() == 5


def test_the_next_test_starts_empty(otc_session):
    for model in (Ticket, Timesheet, Comment):
        assert otc_session.scalar(select(func.count()).select_from(model)) == 0


def test_otc_factories_fixture_and_commit(otc_factories, otc_session):
    ticket = otc_factories.TicketFactory(unassigned=True)
    otc_session.commit()  # releases a savepoint; teardown still rolls back
    assert ticket.assigned_to_user == " PendingAssignment"


def test_commit_did_not_leak(otc_session):
    assert otc_session.scalar(select(func.count()).select_from(Ticket)) == 0


def test_factories_need_the_fixture():
    with pytest.raises(NoTestSession, match="otc_session"):
        TicketFactory()


def test_the_database_is_a_throwaway_one(otc_engine, otc_database_url):
    if otc_engine.dialect.name == "postgresql":
        assert otc_engine.url.database.startswith("otc_test_")
        assert otc_engine.url.database != otc_database_url.rsplit("/", 1)[-1]
    print(f"session database: {otc_engine.url.database}")
'''

LOAD_TESTS = """
from sqlalchemy import func, select

from otc_pipeline.models import EtlRun, Ticket
from otc_pipeline.testing.factories import TicketFactory


def test_load_records(otc_load, otc_session):
    TicketFactory(ticket_id=77, status="New")
    summary = otc_load("tickets", [
        {"TKT-Ticket ID": "77", "TKT-Status": "Closed", "TKT-Title": "Disk full"},
        {"TKT-Ticket ID": "78", "TKT-Status": "New", "TKT-Created Time": "03/02/2025 09:15"},
    ])
    assert (summary.status, summary.inserted, summary.updated) == ("success", 1, 1)
    assert otc_session.get(Ticket, 77).status == "Closed"
    run = otc_session.get(EtlRun, summary.run_id)
    assert run.load_status == "success" and run.records_fetched == 2


def test_load_a_sample_export(otc_load, otc_session):
    summary = otc_load("timesheets", sample_rows=40)
    assert summary.status in ("success", "partial") and summary.fetched == 40
    assert otc_session.scalar(select(func.count()).select_from(EtlRun)) == 1


def test_loads_are_rolled_back_too(otc_session):
    assert otc_session.scalar(select(func.count()).select_from(Ticket)) == 0
    assert otc_session.scalar(select(func.count()).select_from(EtlRun)) == 0
"""


def _pg_unreachable() -> str | None:
    try:
        engine = create_engine(PG_SERVER_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return str(exc).splitlines()[0]
    return None


@pytest.fixture(scope="module")
def pg_server_url() -> str:
    """A PostgreSQL server the downstream sessions may create databases on."""
    reason = _pg_unreachable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {reason}")
        pytest.skip(f"PostgreSQL unreachable ({reason}); set OTC_TEST_DATABASE_URL to test it")
    return PG_SERVER_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def server_args(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "sqlite":
        return []
    return ["--otc-database-url", request.getfixturevalue("pg_server_url")]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The downstream run must find the plugin by itself and pick its own database.
    monkeypatch.delenv("OTC_TEST_DATABASE_URL", raising=False)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)


def run_downstream(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )


def passed(output: str) -> int:
    found = re.search(r"(\d+) passed", output)
    return int(found.group(1)) if found else 0


def session_database(output: str) -> str:
    found = re.search(r"session database: (otc_test_\w+)", output)
    assert found, output
    return found.group(1)


def database_exists(name: str) -> bool:
    engine = create_engine(PG_SERVER_URL)
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT count(*) FROM pg_database WHERE datname = :name"), {"name": name}
        ).scalar_one()
    engine.dispose()
    return bool(found)


def test_downstream_project_uses_fixtures_and_factories(
    pytester: pytest.Pytester, server_args: list[str]
) -> None:
    pytester.makepyfile(test_dashboard=DOWNSTREAM_TESTS)
    result = run_downstream(pytester.path, "-s", *server_args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed(result.stdout) == 6
    if server_args:
        name = session_database(result.stdout)
        assert not database_exists(name), f"{name} was not dropped"


def test_otc_load_runs_a_real_load_inside_the_test_transaction(
    pytester: pytest.Pytester, server_args: list[str]
) -> None:
    pytester.makepyfile(test_loads=LOAD_TESTS)
    result = run_downstream(pytester.path, *server_args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed(result.stdout) == 3


README = Path(__file__).resolve().parents[1] / "README.md"


def docs_example() -> str:
    """The complete example test file of the README section "Testing your app"."""
    section = README.read_text().split("### A complete example", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_example_passes(pytester: pytest.Pytester, server_args: list[str]) -> None:
    pytester.makepyfile(test_backlog=docs_example())
    result = run_downstream(pytester.path, *server_args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed(result.stdout) == 7


def test_the_documented_example_without_loads_passes(
    pytester: pytest.Pytester, server_args: list[str]
) -> None:
    pytester.makepyfile(test_backlog=docs_example())
    result = run_downstream(pytester.path, "-k", "not load", *server_args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed(result.stdout) == 3


def test_two_sessions_at_once_on_one_server(pytester: pytest.Pytester, pg_server_url: str) -> None:
    projects = []
    for name in ("dashboard", "bot"):
        project = pytester.mkdir(name)
        (project / "test_app.py").write_text(DOWNSTREAM_TESTS)
        projects.append(project)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    sessions = [
        subprocess.Popen(
            [*command, "-s", "--otc-database-url", pg_server_url],
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for project in projects
    ]
    outputs = [session.communicate(timeout=300)[0] for session in sessions]
    for session, output in zip(sessions, outputs, strict=True):
        assert session.returncode == 0, output
        assert passed(output) == 6
    names = {session_database(output) for output in outputs}
    assert len(names) == 2, "both sessions used the same database"
    assert not any(database_exists(name) for name in names)


def test_database_url_comes_from_option_then_environment_then_sqlite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_url="""
        import os

        def test_url(otc_database_url):
            assert otc_database_url == os.environ["EXPECTED_URL"] or (
                os.environ["EXPECTED_URL"] == "sqlite" and otc_database_url.startswith("sqlite:///")
                and otc_database_url.endswith("otc-test.db")
            )
        """
    )
    monkeypatch.setenv("EXPECTED_URL", "sqlite")
    assert run_downstream(pytester.path).returncode == 0
    monkeypatch.setenv("OTC_TEST_DATABASE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("EXPECTED_URL", "sqlite:///from-env.db")
    assert run_downstream(pytester.path).returncode == 0
    monkeypatch.setenv("EXPECTED_URL", "sqlite:///from-option.db")
    result = run_downstream(pytester.path, "--otc-database-url", "sqlite:///from-option.db")
    assert result.returncode == 0, result.stdout


def test_an_unreachable_server_fails_with_a_useful_message(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(otc_session):\n    pass\n")
    url = "postgresql+psycopg2://nobody:secret@127.0.0.1:9/postgres"
    result = run_downstream(pytester.path, "--otc-database-url", url)
    assert result.returncode == 1
    assert "cannot create a database on postgresql+psycopg2://nobody:***@127.0.0.1:9" in (
        result.stdout
    )
    assert "secret" not in result.stdout + result.stderr


def test_plugin_imports_nothing_heavy() -> None:
    probe = (
        "import sys, otc_pipeline.testing.plugin\n"
        "heavy = [m for m in ('sqlalchemy', 'factory', 'alembic', 'otc_pipeline.models')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_help_documents_the_option(pytester: pytest.Pytester) -> None:
    result = run_downstream(pytester.path, "--help")
    assert "--otc-database-url=URL" in result.stdout
