"""Signals and kills at every moment of a load: readers die with it, nothing is left
behind, the table is exactly as before, and the next load starts at once.

Real `otc` processes on both databases, held at a named moment by the test-only
pause points; the signal goes to the loading process alone, as `kill` sends it
(or to its whole group, as `timeout` does).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PgDatabases
from otc_process import (
    OTC,
    SIGNALS,
    Pause,
    alive,
    children,
    finish,
    in_session,
    kill_session,
    run_otc,
    runs_of,
    sessions,
    start_otc,
    table_state,
    wait_for,
)
from sqlalchemy import text

from otc_pipeline import migrate, pipeline, reading
from otc_pipeline.db import make_engine
from otc_pipeline.sample import write_sample
from otc_pipeline.stopping import reason


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A reload export of 8 MB or more (read in halves), the first load's, and a folder."""
    root = tmp_path_factory.mktemp("signal-exports")
    big_old = write_sample(
        root / "old", tickets=20, timesheets=14000, comments=20, fmt="json", seed=1
    )
    big_new = write_sample(
        root / "new", tickets=20, timesheets=14000, comments=20, fmt="json", seed=2
    )
    small = write_sample(
        root / "small", tickets=300, timesheets=3000, comments=300, fmt="json", seed=3
    )
    assert big_new["timesheets"].stat().st_size >= reading.SPLIT_MIN_BYTES
    return {
        "old": big_old["timesheets"],
        "reload": big_new["timesheets"],
        "first": small["timesheets"],
        "folder": small["tickets"].parent,
    }


@pytest.fixture(scope="module")
def loaded_template(
    exports: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, str]]:
    """Per dialect, a database holding the `old` timesheets, copied for each reload test."""
    made: dict[str, str] = {}
    sqlite_path = tmp_path_factory.mktemp("template") / "otc.db"
    sources = {"sqlite": f"sqlite:///{sqlite_path}"}
    dbs: PgDatabases | None = None
    try:
        dbs = request.getfixturevalue("pg_databases")
    except pytest.skip.Exception:
        pass
    if dbs is not None:
        sources["postgresql"] = dbs.create().render_as_string(hide_password=False)
    for dialect, url in sources.items():
        engine = make_engine(url)
        migrate.upgrade(engine, "head")
        pipeline.load_view(engine, "timesheets", exports["old"])
        engine.dispose()
        made[dialect] = url if dialect == "postgresql" else str(sqlite_path)
    yield made
    if dbs is not None and "postgresql" in made:
        dbs.drop(made["postgresql"].rsplit("/", 1)[1])


@pytest.fixture
def reload_db(
    dialect: str, loaded_template: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A database holding the `old` timesheets (a reload then reads in halves)."""
    if dialect == "sqlite":
        copy = tmp_path / "otc.db"
        shutil.copy(loaded_template["sqlite"], copy)
        yield f"sqlite:///{copy}"
        return
    dbs: PgDatabases = request.getfixturevalue("pg_databases")
    made = dbs.create(template=loaded_template["postgresql"].rsplit("/", 1)[1])
    yield made.render_as_string(hide_password=False)
    dbs.drop(made.database or "")


def _stop_at(
    db_url: str, tmp_path: Path, point: str, signal_name: str, *args: str
) -> tuple[int, str, str, list[int]]:
    """Run `otc ARGS`, send the signal when it reaches ``point``; exit code, output, pids.

    The pids are the load's own and those of its readers alive at that moment.
    """
    pause = Pause(tmp_path / "pause", point)
    process = start_otc(db_url, *args, pause=pause)
    try:
        paused = pause.wait(process)
        readers = [process.pid, *children(process.pid), paused]
        os.kill(process.pid, SIGNALS[signal_name])
        if signal_name != "SIGKILL":
            # (After a kill nothing is let go: a paused reader must end by itself.)
            pause.release(process)
        code, out, err = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
        pause.close()
    return code, out, err, list(dict.fromkeys(readers))


def _nothing_left(db_url: str, readers: list[int], session: int | None = None) -> None:
    """No process of the load alive 2 s after it ended, and no session of it on the server."""
    try:
        wait_for(lambda: not any(alive(pid) for pid in readers), 2, "the readers to end")
        if session is not None:
            wait_for(lambda: not in_session(session), 2, "every process of the load to end")
    finally:
        for pid in readers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if session is not None:
            kill_session(session)
    if db_url.startswith("postgresql"):
        wait_for(lambda: sessions(db_url) == 0, 5, "the load's sessions to end")


# (moment, signal): every signal at several moments; the readers exist in all of them.
MOMENTS = [
    ("reading", "SIGKILL"),
    ("reading", "SIGTERM"),
    ("staged", "SIGHUP"),
    ("merge", "SIGKILL"),
    ("users-refresh", "SIGINT"),
    ("before-commit", "SIGKILL"),
]


@pytest.mark.parametrize(("moment", "signal_name"), MOMENTS)
def test_a_reload_in_halves_stopped_leaves_nothing_and_the_next_load_runs(
    reload_db: str, exports: dict[str, Path], tmp_path: Path, moment: str, signal_name: str
) -> None:
    before = table_state(reload_db, "timesheets")
    code, out, err, readers = _stop_at(
        reload_db,
        tmp_path,
        moment,
        signal_name,
        "load",
        "timesheets",
        "--from",
        str(exports["reload"]),
    )
    signum = SIGNALS[signal_name]
    assert code == 128 + signum, err
    if moment == "reading":
        assert len(readers) == 3  # otc and the two readers of its halves
    _nothing_left(reload_db, readers, session=readers[0])
    assert table_state(reload_db, "timesheets") == before
    run = runs_of(reload_db, "timesheets")[-1]
    if signal_name == "SIGKILL":
        assert run["load_status"] == "running"
    else:
        assert run["load_status"] == "failed"
        assert run["error_message"] == reason(signum)
        assert f"Error: timesheets: {reason(signum)}" in err
        assert "Traceback" not in err
    again = run_otc(reload_db, "load", "timesheets", "--from", str(exports["reload"]), timeout=120)
    assert again.returncode == 0, again.stderr
    stopped, reloaded = runs_of(reload_db, "timesheets")[-2:]
    assert stopped["load_status"] == ("interrupted" if signal_name == "SIGKILL" else "failed")
    assert reloaded["load_status"] == "success"


@pytest.mark.parametrize(
    ("moment", "signal_name"),
    [("reading", "SIGKILL"), ("staged", "SIGINT"), ("users-refresh", "SIGHUP")],
)
def test_a_first_load_stopped_leaves_nothing_and_the_next_load_runs(
    db_url: str, exports: dict[str, Path], tmp_path: Path, moment: str, signal_name: str
) -> None:
    code, out, err, readers = _stop_at(
        db_url, tmp_path, moment, signal_name, "load", "timesheets", "--from", str(exports["first"])
    )
    assert code == 128 + SIGNALS[signal_name], err
    _nothing_left(db_url, readers, session=readers[0])
    assert table_state(db_url, "timesheets")[0] == 0
    assert table_state(db_url, "tickets")[0] == 0
    again = run_otc(db_url, "load", "timesheets", "--from", str(exports["first"]))
    assert again.returncode == 0, again.stderr
    assert [r["load_status"] for r in runs_of(db_url, "timesheets")] == [
        "interrupted" if signal_name == "SIGKILL" else "failed",
        "success",
    ]


def test_a_reader_holds_nothing_of_its_parent(
    reload_db: str, exports: dict[str, Path], tmp_path: Path
) -> None:
    """No socket, database or lock file, and no reading end of its parent's pipes."""
    pause = Pause(tmp_path / "pause", "reading")
    process = start_otc(
        reload_db, "load", "timesheets", "--from", str(exports["reload"]), pause=pause
    )
    try:
        pause.wait(process)
        readers = children(process.pid)
        assert len(readers) == 2
        parent_reads = _pipe_ends(process.pid, reading=True)
        assert parent_reads  # the parent reads its readers' pipes
        for reader in readers:
            targets = [
                os.readlink(f"/proc/{reader}/fd/{fd}") for fd in os.listdir(f"/proc/{reader}/fd")
            ]
            assert not [t for t in targets if t.startswith("socket:")], targets
            assert not [t for t in targets if t.endswith((".db", ".lock", "-journal", "-wal"))]
            assert not parent_reads & _pipe_ends(reader, reading=True), targets
            assert b"otc-read-timesheets" in Path(f"/proc/{reader}/cmdline").read_bytes()
    finally:
        process.kill()
        pause.close()
        process.communicate()


def _pipe_ends(pid: int, reading: bool) -> set[str]:
    """The pipes a process holds open for reading (or writing)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            flags = int(
                Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8
            )
        except OSError:
            continue
        if target.startswith("pipe:") and ((flags & os.O_ACCMODE) == os.O_RDONLY) == reading:
            found.add(target)
    return found


def test_no_reader_shows_the_database_password(
    pg_databases: PgDatabases, exports: dict[str, Path], tmp_path: Path
) -> None:
    url = pg_databases.create().set(password="s3cret-Pa55").render_as_string(hide_password=False)
    pause = Pause(tmp_path / "pause", "reading")
    env = {**os.environ, **pause.env()}
    env.pop("OTC_DATABASE_URL", None)
    process = subprocess.Popen(
        [OTC, "load", "timesheets", "--from", str(exports["first"]), "--database-url", url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        pause.wait(process)
        (reader,) = children(process.pid)
        assert b"s3cret-Pa55" not in Path(f"/proc/{reader}/cmdline").read_bytes()
    finally:
        process.kill()
        pause.close()
        process.communicate()


@pytest.mark.parametrize(
    "moment", ["staged:tickets", "merge:timesheets", "users-refresh", "before-commit:comments"]
)
def test_ctrl_c_stops_load_all_in_every_phase(
    db_url: str, exports: dict[str, Path], tmp_path: Path, moment: str
) -> None:
    code, out, err, readers = _stop_at(
        db_url, tmp_path, moment, "SIGINT", "load", "all", "--from", str(exports["folder"])
    )
    assert code == 130, err
    _nothing_left(db_url, readers, session=readers[0])
    stopped_view = {
        "staged:tickets": "tickets",
        "merge:timesheets": "timesheets",
        "users-refresh": "timesheets",
    }.get(moment, "comments")
    order = ["tickets", "timesheets", "comments"]
    for view in order:
        view_runs = runs_of(db_url, view)
        if order.index(view) < order.index(stopped_view):
            assert [r["load_status"] for r in view_runs] == ["success"]
        elif view == stopped_view:
            assert [(r["load_status"], r["error_message"]) for r in view_runs] == [
                ("failed", "interrupted by the user")
            ]
            assert table_state(db_url, view)[0] == 0
        else:
            assert view_runs == []  # no later view starts
    assert "Traceback" not in err and "PendingRollbackError" not in err


def test_ctrl_c_inside_a_database_call_wins_over_the_error_it_causes(
    pg_databases: PgDatabases, exports: dict[str, Path], tmp_path: Path
) -> None:
    """Ctrl-C while the user_lookup refresh waits on a lock: 130 and `failed`, not exit 1."""
    url = pg_databases.create().render_as_string(hide_password=False)
    assert run_otc(url, "db", "upgrade").returncode == 0
    engine = make_engine(url)
    pause = Pause(tmp_path / "pause", "users-refresh")
    process = start_otc(url, "load", "all", "--from", str(exports["folder"]), pause=pause)
    try:
        with engine.connect() as blocker:
            pause.wait(process)
            blocker.execute(text("LOCK TABLE servicedesk.user_lookup IN ACCESS EXCLUSIVE MODE"))
            pause.release(process)
            wait_for(
                lambda: _waiting_on_lock(engine), 60, "the refresh to wait on user_lookup's lock"
            )
            os.kill(process.pid, signal.SIGINT)
            blocker.rollback()  # the refresh's statement ends; the interrupt surfaces
        code, out, err = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
        pause.close()
        engine.dispose()
    assert code == 130, err
    assert [r["load_status"] for r in runs_of(url, "timesheets")] == ["failed"]
    assert runs_of(url, "timesheets")[0]["error_message"] == "interrupted by the user"
    assert runs_of(url, "comments") == []
    assert table_state(url, "timesheets")[0] == 0
    pg_databases.drop(url.rsplit("/", 1)[1])


def _waiting_on_lock(engine: object) -> bool:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            ).scalar()
        )


def test_timeout_leaves_nothing_behind(
    reload_db: str, exports: dict[str, Path], tmp_path: Path
) -> None:
    """`timeout 5 otc load …` (SIGTERM to otc and its whole group), the load held at its end."""
    before = table_state(reload_db, "timesheets")
    # Held before its commit until the SIGTERM comes (or stopped earlier, on a slow machine).
    pause = Pause(tmp_path / "pause", "before-commit")
    env = {**os.environ, **pause.env(), "OTC_DATABASE_URL": reload_db}
    process = subprocess.Popen(
        ["timeout", "5", OTC, "load", "timesheets", "--from", str(exports["reload"])],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        code, out, err = finish(process)
    finally:
        pause.close()
    assert code == 124  # timeout's own code: the command timed out
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    _nothing_left(reload_db, [], session=process.pid)
    assert table_state(reload_db, "timesheets") == before
    last = runs_of(reload_db, "timesheets")[-1]
    # (On a slow machine the signal may come before the run opens: then none is there.)
    assert (
        last["load_status"] == "success"
        and last["records_inserted"] == 14000
        or (last["error_message"] == "stopped by SIGTERM")
    )
    again = run_otc(reload_db, "load", "timesheets", "--from", str(exports["reload"]))
    assert again.returncode == 0, again.stderr
