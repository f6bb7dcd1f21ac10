"""Locks, with real `otc` processes: a held view exits 75 or is waited for, the lock
belongs to the load's own connection, SQLite readers go on, schema changes take turns.

A load is held mid-way by a local OTC API that stops after some records until the
test lets it go on, so each case happens while a real load is running.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from otc_server import OtcServer, Reply, ticket_records
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from otc_pipeline.db import advisory_key, make_engine

HOLD_LIMIT_S = 60.0  # a held load is let go at the latest after this (a failing test)


class Gate(threading.Event):
    """The server's hold: says when the server reached it, then waits to be opened."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.reached.set()
        return super().wait(HOLD_LIMIT_S)


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``condition`` until it is truthy (or fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def otc(*args: str) -> list[str]:
    return [sys.executable, "-m", "otc_pipeline", *args]


@dataclass
class Env:
    """What every `otc` process of a test runs with."""

    db_url: str
    server: OtcServer
    state_dir: Path

    def variables(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.server.env(
                OTC_STATE_DIR=str(self.state_dir),
                OTC_API_MIN_INTERVAL_S="0",
                OTC_API_MAX_PER_HOUR="1000",
                OTC_API_VIEW_GAP_S="0",
                OTC_API_TIMEOUT_S="120",
                OTC_API_RETRIES="1",
            ),
            "OTC_DATABASE_URL": self.db_url,
        }

    def start(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            otc(*args),
            env=self.variables(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            otc(*args), env=self.variables(), capture_output=True, text=True, timeout=timeout
        )

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        engine = make_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql.format(s=self.schema)))]
        finally:
            engine.dispose()

    @property
    def schema(self) -> str:
        return "" if self.db_url.startswith("sqlite") else "servicedesk."

    def running_run(self) -> int | None:
        try:
            rows = self.query(
                "SELECT id FROM {s}etl_metadata WHERE load_status = 'running' ORDER BY id"
            )
        except Exception:  # noqa: BLE001 - the schema may not exist yet on a first load
            return None
        return rows[0][0] if rows else None


TICKETS = 300
HELD_AFTER = 120


@pytest.fixture
def env(empty_db_url: str, tmp_path: Path) -> Iterator[Env]:
    with OtcServer(views={"tickets": list(ticket_records(TICKETS))}) as server:
        yield Env(empty_db_url, server, tmp_path / "state")


@dataclass
class Held:
    process: subprocess.Popen[str]
    gate: Gate
    run_id: int

    def release(self) -> tuple[int, str, str]:
        self.gate.set()
        out, err = self.process.communicate(timeout=120)
        return self.process.returncode, out, err


@contextmanager
def held_load(env: Env, *extra: str, view: str = "tickets") -> Iterator[Held]:
    """An `otc load VIEW --from api` process stopped mid-body, its run open."""
    gate = Gate()
    env.server.queue(Reply(cut_after=HELD_AFTER, hold=gate))
    process = env.start("load", view, "--from", "api", "--chunk-size", "50", *extra)
    try:

        def opened() -> int | None:
            if process.poll() is not None:
                pytest.fail(f"the load to hold ended early: {process.communicate()}")
            return env.running_run() if gate.reached.is_set() else None

        run_id = wait_for(opened, what="the held load to open its run")
        yield Held(process, gate, run_id)
    finally:
        gate.set()
        if process.poll() is None:
            try:
                process.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def load_file(env: Env, tmp_path: Path, count: int = 5) -> Path:
    """A small tickets export (ids far from the server's) for a second load."""
    import json

    path = tmp_path / "more-tickets.json"
    records = list(ticket_records(count, start=10_000))
    path.write_text(json.dumps(records))
    return path


# --- a held view ------------------------------------------------------------------------


@pytest.mark.parametrize("first_load", [True, False], ids=["first-load", "reload"])
def test_a_second_load_of_a_held_view_exits_75_at_once_naming_the_running_one(
    env: Env, tmp_path: Path, first_load: bool
) -> None:
    if not first_load:
        assert env.run("load", "tickets", "--from", "api").returncode == 0
    more = load_file(env, tmp_path)
    with held_load(env) as held:
        for _ in range(2):  # the refused load leaves the lock as it was: so is the next one
            started = time.monotonic()
            second = env.run("load", "tickets", "--from", str(more))
            assert second.returncode == 75, second.stderr
            assert f"another load of tickets is running (run {held.run_id}," in second.stderr
            assert "--wait" in second.stderr
            assert held.process.poll() is None
            # Refused at once: no wait behind the running load's write lock.
            assert time.monotonic() - started < 20
        if env.db_url.startswith("sqlite"):
            database = make_url(env.db_url).database
            assert Path(f"{database}.tickets.lock").exists()
        code, out, err = held.release()
    assert code == 0, err
    runs = env.query("SELECT id, load_status FROM {s}etl_metadata ORDER BY id")
    assert runs[-1] == (held.run_id, "success")
    assert [status for _, status in runs].count("running") == 0
    assert env.query("SELECT count(*) FROM {s}tickets") == [(TICKETS,)]


def test_wait_takes_over_when_the_running_load_ends(env: Env, tmp_path: Path) -> None:
    more = load_file(env, tmp_path)
    with held_load(env) as held:
        waiting = env.start("load", "tickets", "--from", str(more), "--wait", "90")
        assert waiting.stderr is not None
        line = waiting.stderr.readline()
        assert "waiting up to 90 s: another load of tickets is running" in line
        assert f"(run {held.run_id}," in line
        assert waiting.poll() is None
        code, _, err = held.release()
        assert code == 0, err
        out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert "tickets: success" in out
    runs = env.query(
        "SELECT id, load_status, load_start, load_end FROM {s}etl_metadata ORDER BY id"
    )
    first, second = runs
    assert first[:2] == (held.run_id, "success") and second[1] == "success"
    assert second[2] >= first[3]  # it started after the first one ended
    assert env.query("SELECT count(*) FROM {s}tickets") == [(TICKETS + 5,)]


def test_wait_gives_up_with_75_after_its_seconds(env: Env, tmp_path: Path) -> None:
    more = load_file(env, tmp_path)
    with held_load(env) as held:
        given_up = env.run("load", "tickets", "--from", str(more), "--wait", "0.5")
        assert given_up.returncode == 75
        assert "still after waiting 0.5 s" in given_up.stderr
        assert held.release()[0] == 0


# On SQLite the second `load all` would wait for the first's write lock at its next view.
@pytest.mark.parametrize("dialect", ["postgresql"])
def test_two_load_all_at_once_the_second_exits_75_for_the_held_view(
    env: Env, tmp_path: Path
) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "tickets.json").write_text(load_file(env, tmp_path).read_text())
    with held_load(env, view="all") as held:
        second = env.run("load", "all", "--from", str(folder), "--json")
        assert second.returncode == 75, second.stderr
        assert "another load of tickets is running" in second.stdout
        assert held.release()[0] == 0


# --- the lock belongs to the load's own connection (PostgreSQL) ------------------------


def _pg_admin(env: Env) -> Any:
    return create_engine(make_url(env.db_url), isolation_level="AUTOCOMMIT")


def _lock_holders(conn: Any, view: str) -> list[int]:
    key = advisory_key(view)
    return [
        row[0]
        for row in conn.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = :high AND objid = :low"
                # pg_locks is the whole server's: other tests load tickets elsewhere.
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"high": key >> 32, "low": key & 0xFFFFFFFF},
        )
    ]


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_terminating_the_locks_backend_ends_the_load_with_it(
    env: Env, tmp_path: Path, dialect: str
) -> None:
    """A second load is let in only once the first can no longer commit."""
    more = load_file(env, tmp_path)
    admin = _pg_admin(env)
    try:
        with held_load(env) as held:
            with admin.connect() as conn:
                (pid,) = _lock_holders(conn, "tickets")
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                wait_for(lambda: not _lock_holders(conn, "tickets"), what="the lock to go")
            second = env.run("load", "tickets", "--from", str(more))
            assert second.returncode == 0, second.stderr
            code, out, err = held.release()
    finally:
        admin.dispose()
    assert code == 1, out + err
    statuses = dict(env.query("SELECT id, load_status FROM {s}etl_metadata"))
    assert statuses[held.run_id] in ("failed", "interrupted")
    assert sorted(statuses.values()).count("success") == 1
    # Only the second load's rows: the first never committed.
    assert env.query("SELECT count(*) FROM {s}tickets") == [(5,)]


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_idle_session_timeout_never_lets_a_second_load_in(env: Env, tmp_path: Path) -> None:
    admin = _pg_admin(env)
    database = make_url(env.db_url).database
    try:
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {database} SET idle_session_timeout = '1s'"))
    finally:
        admin.dispose()
    more = load_file(env, tmp_path)
    with held_load(env) as held:
        # Well past the timeout while the load waits for the API.
        time.sleep(2.5)
        second = env.run("load", "tickets", "--from", str(more))
        assert second.returncode == 75, second.stderr
        code, _, err = held.release()
    assert code == 0, err
    assert env.query("SELECT count(*) FROM {s}tickets") == [(TICKETS,)]


# --- SQLite: readers go on, Ctrl-C ends the load at once --------------------------------


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_sqlite_readers_answer_at_once_during_a_load(env: Env, dialect: str) -> None:
    database = make_url(env.db_url).database
    assert database
    env.server.views["tickets"] = list(ticket_records(6000))
    gate = Gate()
    env.server.queue(Reply(cut_after=5000, hold=gate))
    load = env.start("load", "tickets", "--from", "api", "--chunk-size", "250")
    try:
        wait_for(lambda: gate.reached.is_set() and env.running_run(), what="the load to run")
        reader = sqlite3.connect(database, timeout=1.0)
        try:
            assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            # While the load merges the 5,000 records it has (more than SQLite's page
            # cache holds) and waits for the rest, a reader answers within 1 s.
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                started = time.monotonic()
                assert reader.execute("SELECT count(*) FROM tickets").fetchone() == (0,)
                assert time.monotonic() - started < 1.0
                time.sleep(0.05)
        finally:
            reader.close()
        status = env.run("status", "--json")
        assert status.returncode == 0, status.stderr
        assert '"last_status": "running"' in status.stdout
    finally:
        gate.set()
        out, err = load.communicate(timeout=120)
    assert load.returncode == 0, err
    assert env.query("SELECT count(*) FROM tickets") == [(6000,)]


def test_an_interrupted_sqlite_connection_gives_up_its_write_lock(tmp_path: Path) -> None:
    """Ctrl-C inside a statement: the connection is discarded, its write lock with it.

    sqlite3 keeps a discarded connection open while a cursor of it lives on (one
    referenced by the KeyboardInterrupt's traceback), open transaction and all.
    """
    path = tmp_path / "otc.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1), (2)")
        conn = engine.connect()
        conn.begin()
        conn.exec_driver_sql("INSERT INTO t VALUES (3)")
        running = conn.connection.dbapi_connection.execute("SELECT x FROM t")  # type: ignore[union-attr]
        running.fetchone()
        conn.invalidate()  # what SQLAlchemy does with a connection Ctrl-C interrupted
        other = sqlite3.connect(path, timeout=1.0)
        other.execute("INSERT INTO t VALUES (4)")
        other.commit()
        assert other.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,), (4,)]
        other.close()
        del running
    finally:
        engine.dispose()


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_ctrl_c_during_a_sqlite_load_ends_it_failed_within_a_second(
    env: Env, tmp_path: Path, dialect: str
) -> None:
    import json

    from otc_server import timesheet_records

    path = tmp_path / "timesheets.json"
    path.write_text(json.dumps(list(timesheet_records(40_000))))
    for delay in (0.5, 1.0, 1.5, 2.0):
        load = env.start("load", "timesheets", "--from", str(path), start_new_session=True)
        wait_for(lambda: env.running_run(), what="the load to open its run")
        time.sleep(delay)  # different moments: reading, staging, merging
        if load.poll() is not None:
            break
        os.killpg(load.pid, signal.SIGINT)
        sent = time.monotonic()
        out, err = load.communicate(timeout=60)
        stopped_in = time.monotonic() - sent
        if "timesheets: success" in out:  # it had just finished
            continue
        assert load.returncode == 130, (delay, out, err)
        assert "database is locked" not in err
        assert stopped_in < 5.0, f"{stopped_in:.1f} s"
        (status,) = env.query("SELECT load_status FROM etl_metadata ORDER BY id DESC LIMIT 1")
        assert status == ("failed",)


# --- schema changes take turns -----------------------------------------------------------


def _cli_in_child(args: list[str], url: str, go: Any, codes: Any, index: int) -> None:
    """A forked `otc` process: waits for the start signal, then runs the command line."""
    os.environ["OTC_DATABASE_URL"] = url
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the child's own output
    from otc_pipeline.cli import app

    go.wait()
    try:
        codes[index] = app(args, standalone_mode=False) or 0
    except SystemExit as exc:
        codes[index] = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - any other end is a failure of the child
        codes[index] = 99


def _run_together(batch: list[tuple[str, list[list[str]]]]) -> list[list[int]]:
    """Start each database's commands at the same moment, each in its own process."""
    # What every child imports anyway, imported once here (the children are forks).
    import alembic.command  # noqa: F401

    from otc_pipeline import cli, commands, migrate  # noqa: F401

    migrate.script_directory()
    context = multiprocessing.get_context("fork")
    go = context.Event()
    started = []
    for url, commands_ in batch:
        codes = context.Array("i", [-1] * len(commands_))
        children = [
            context.Process(target=_cli_in_child, args=(command, url, go, codes, index))
            for index, command in enumerate(commands_)
        ]
        for child in children:
            child.start()
        started.append((codes, children))
    go.set()
    for _, children in started:
        for child in children:
            child.join(120)
    return [list(codes) for codes, _ in started]


def test_concurrent_first_loads_and_upgrades_both_succeed(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Twenty pairs of first loads (and a few of upgrades) on empty databases."""
    import json

    from otc_server import timesheet_records

    tickets = tmp_path / "tickets.json"
    tickets.write_text(json.dumps(list(ticket_records(3))))
    timesheets = tmp_path / "timesheets.json"
    timesheets.write_text(json.dumps(list(timesheet_records(3))))
    load_tickets = ["load", "tickets", "--from", str(tickets)]
    load_timesheets = ["load", "timesheets", "--from", str(timesheets)]
    upgrade = ["db", "upgrade"]
    pairs = [[load_tickets, load_timesheets]] * 20 + [
        [upgrade, upgrade],
        [upgrade, load_tickets],
    ] * 2
    failures = []
    # Four pairs at a time, each on its own empty database: the race is within a pair.
    urls = [f"sqlite:///{tmp_path / f'pair{number}.db'}" for number in range(len(pairs))]
    if dialect == "postgresql":
        dbs = request.getfixturevalue("pg_databases")
        databases = [dbs.create().render_as_string(hide_password=False) for _ in range(4)]
        urls = [databases[number % 4] for number in range(len(pairs))]
    for first in range(0, len(pairs), 4):
        batch = list(zip(urls[first : first + 4], pairs[first : first + 4], strict=True))
        for url, _ in batch:
            _make_empty(url)
        for (_, pair), codes in zip(batch, _run_together(batch), strict=True):
            if codes != [0, 0]:
                failures.append(([command[:2] for command in pair], codes))
    assert failures == []


def _make_empty(url: str) -> None:
    """A PostgreSQL database reused by the next pair goes back to empty (faster than a new one)."""
    if url.startswith("sqlite"):
        return
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS servicedesk CASCADE")
        from otc_pipeline import migrate

        assert migrate.state(engine) == "empty"
    finally:
        engine.dispose()
