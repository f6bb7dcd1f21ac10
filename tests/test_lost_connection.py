"""A lost database connection is reported once, as itself, and the run is closed `failed`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from conftest import require_postgresql
from sqlalchemy import Engine, make_url, select, text
from test_load import ticket

from otc_pipeline import pipeline
from otc_pipeline.db import make_engine
from otc_pipeline.models import EtlRun, Ticket

PRIVATE_PORT = 55431  # a private cluster for the restart (ports 55430-55439 are this suite's)


def _otc(*args: str) -> list[str]:
    return [sys.executable, "-m", "otc_pipeline.cli", *args]


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_backend_killed_during_copy_prints_one_error_line(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    export = tmp_path / "tickets.json"
    export.write_text(json.dumps([ticket(i) for i in range(1, 60001)]))
    load = subprocess.Popen(
        _otc("load", "tickets", "--from", str(export), "--database-url", db_url, "--chunk-size", "500"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = 0
    with engine.connect() as watcher:
        while not killed and load.poll() is None:
            killed = watcher.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'COPY %'"
                )
            ) or 0
            watcher.rollback()  # pg_stat_activity is read once per transaction
    out, err = load.communicate(timeout=60)
    assert killed == 1, (out, err)
    assert load.returncode == 1
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: tickets: the database connection was lost (")
    with engine.connect() as conn:
        run = conn.execute(select(EtlRun).order_by(EtlRun.id.desc()).limit(1)).one()
        assert conn.scalar(select(Ticket.ticket_id).limit(1)) is None
    assert run.load_status == "failed"
    assert lines[0] == f"Error: tickets: {run.error_message}"


def _as_postgres(command: list[str]) -> list[str]:
    """The server refuses to run as root: run its tools as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@pytest.fixture
def private_cluster() -> Iterator[tuple[str, list[str]]]:
    """A throwaway PostgreSQL cluster on PRIVATE_PORT: its URL and the restart command."""
    require_postgresql()  # the same server programs
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    assert initdb is not None and pg_ctl is not None
    # Not under pytest's tmp_path: the postgres user must be able to reach it.
    data = Path(tempfile.mkdtemp(prefix="otc-cluster-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    subprocess.run(
        _as_postgres([initdb, "-D", str(data), "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {PRIVATE_PORT} -k {data} -c listen_addresses=127.0.0.1"
    # A log file: the server must not inherit the pipes that capture pg_ctl's output.
    control = [pg_ctl, "-D", str(data), "-o", options, "-l", str(data / "server.log"), "-w"]
    subprocess.run(_as_postgres([*control, "start"]), check=True, capture_output=True)
    try:
        yield (
            f"postgresql+psycopg2://postgres@127.0.0.1:{PRIVATE_PORT}/postgres",
            _as_postgres([*control, "-m", "fast", "restart"]),
        )
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)


def _server_answers(url: str) -> bool:
    try:
        psycopg2.connect(make_url(url).set(drivername="postgresql").render_as_string(False)).close()
    except psycopg2.OperationalError:
        return False
    return True


def test_a_server_restart_mid_load_closes_the_run_failed(
    private_cluster: tuple[str, list[str]],
) -> None:
    url, restart = private_cluster
    engine = make_engine(url)
    try:
        pipeline.load_view(engine, "tickets", [ticket(i) for i in range(1, 11)])

        restarting = threading.Thread(target=subprocess.run, args=(restart,))

        def restarted_midway() -> Iterator[dict[str, Any]]:
            for i in range(1, 201):
                if i == 100:
                    # The load goes on once the server is down: its next statement fails
                    # while the server starts again.
                    restarting.start()
                    while _server_answers(url):
                        threading.Event().wait(0.02)
                yield ticket(i, **{"TKT-Title": f"new {i}"})

        started = time.monotonic()
        summary = pipeline.load_view(engine, "tickets", restarted_midway(), chunk_size=50)
        restarting.join(60)
        assert time.monotonic() - started < 60
        assert summary.status == "failed"
        assert (summary.error or "").startswith("the database connection was lost (")
        with engine.connect() as conn:
            run = conn.execute(select(EtlRun).where(EtlRun.id == summary.run_id)).one()
            titles = set(conn.scalars(select(Ticket.title)))
        assert run.load_status == "failed" and run.error_message == summary.error
        assert not any(t.startswith("new") for t in titles)
    finally:
        engine.dispose()
