"""`otc` as a real process for the signal tests: start it, pause it at a named point, look at it.

A load started with ``pause=...`` stops at that point of the load (see
``otc_pipeline.stopping.pause_point``) until :meth:`Pause.release`; the test
sends its signal in between. Nothing here sleeps for a fixed time: every wait
is for a condition, with a deadline.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select as sql_select
from sqlalchemy import text

from otc_pipeline.db import make_engine
from otc_pipeline.models import EtlRun
from otc_pipeline.views import VIEWS

OTC = str(Path(sys.executable).parent / "otc")


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Pause:
    """The two FIFOs through which a test holds a load at one named point."""

    def __init__(self, folder: Path, point: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.point = point
        for name in ("reached", "go"):
            path = folder / name
            if path.exists():
                path.unlink()
            os.mkfifo(path)
        # Opened now, non-blocking: a FIFO that never had a writer does not read as EOF.
        self._reached = os.open(folder / "reached", os.O_RDONLY | os.O_NONBLOCK)

    def env(self) -> dict[str, str]:
        return {"OTC_TEST_PAUSE_AT": self.point, "OTC_TEST_PAUSE_DIR": str(self.folder)}

    def wait(self, process: subprocess.Popen[str], timeout: float = 120) -> int:
        """Wait until a process of the load reaches the point; the pid that reached it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._reached], [], [], 0.1)
            if ready:
                line = os.read(self._reached, 200).decode()
                if line:
                    return int(line.split()[1])
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(
                    f"otc ended ({process.returncode}) before {self.point}: {out}{err}"
                )
        raise AssertionError(f"the load never reached {self.point}")

    def release(self, process: subprocess.Popen[str], timeout: float = 30) -> None:
        """Let the paused process go on (if it still waits there)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:
                fd = os.open(self.folder / "go", os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody waits on it (yet, or any more)
                time.sleep(0.02)
                continue
            os.close(fd)
            return

    def close(self) -> None:
        os.close(self._reached)


def start_otc(
    db_url: str, *args: str, pause: Pause | None = None, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """Start `otc ARGS` on ``db_url`` (given by environment, as the README recommends)."""
    env = {**os.environ, "OTC_DATABASE_URL": db_url}
    env.pop("OTC_TEST_PAUSE_AT", None)
    if pause is not None:
        env.update(pause.env())
    return subprocess.Popen(
        [OTC, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a signal for the test's group never reaches it by accident
    )


def run_otc(db_url: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    process = start_otc(db_url, *args)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    """The exit code (128 + N for a process killed by signal N, as a shell shows it).

    Output ends when every process holding it has ended: a reader left behind
    fails the test here (and is killed, so that a failing test leaves nothing).
    """
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        left = kill_session(process.pid)
        process.communicate()
        raise AssertionError(f"processes of the load alive {timeout} s on: {left}") from None
    code = process.returncode
    return (128 - code if code < 0 else code), out, err


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (its readers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def in_session(session: int) -> list[int]:
    """The running processes of a session: `otc` started by start_otc and its readers."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                found.append(int(entry))
    return found


def kill_session(session: int) -> list[int]:
    """Kill what is left of a session (a failing test's cleanup); the pids it killed."""
    left = in_session(session)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def sessions(db_url: str) -> int:
    """Client sessions on the test database other than this query's own (PostgreSQL)."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


def table_state(db_url: str, view: str) -> tuple[int, str]:
    """The view's table as (row count, checksum of every row in key order)."""
    engine = make_engine(db_url)
    table = VIEWS[view].table
    try:
        with engine.connect() as conn:
            order = [column for column in table.primary_key.columns]
            digest = hashlib.sha256()
            count = 0
            for row in conn.execute(sql_select(table).order_by(*order)):
                digest.update(repr(tuple(row)).encode())
                count += 1
            return count, digest.hexdigest()
    finally:
        engine.dispose()


def runs_of(db_url: str, view: str) -> list[dict[str, Any]]:
    """The view's runs, oldest first."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            runs = EtlRun.__table__
            rows = conn.execute(
                sql_select(runs).where(runs.c.view_name == view).order_by(runs.c.id)
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


SIGNALS = {
    "SIGINT": signal.SIGINT,
    "SIGTERM": signal.SIGTERM,
    "SIGHUP": signal.SIGHUP,
    "SIGKILL": signal.SIGKILL,
}
