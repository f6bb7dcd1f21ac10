"""Passwords never leak: malformed URLs, tracebacks, run records and the command line.

Each password carries '@', '/', ':', '%' and '#', the characters that make URL
parsers split a URL somewhere else than the writer meant.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from otc_server import OtcServer, status
from sqlalchemy import select

from otc_pipeline.db import make_engine
from otc_pipeline.errors import ConfigError
from otc_pipeline.models import EtlRun
from otc_pipeline.proctitle import masked_command_line
from otc_pipeline.sample import write_sample
from otc_pipeline.settings import database_setting, mask_url
from otc_pipeline.sources.api import ApiSettings

# Every piece of these between the separators is distinctive enough to search for.
PASSWORDS = {
    "at": "Qzv7@Wkx9",
    "slash": "Qzv7/Wkx9",
    "colon": "Qzv7:Wkx9",
    "percent": "Qzv7%Wkx9",
    "hash": "Qzv7#Wkx9",
    "all": "Qzv7@Wkx9/Jmp3:Rtd5%Hbn2#Yfc8",
    "all but @": "Qzv7/Wkx9:Jmp3%Rtd5#Hbn2",
}
# Through real processes: one password that is refused (two '@'), one that connects.
PROCESS_PASSWORDS = {name: PASSWORDS[name] for name in ("at", "all but @")}
PIECES = ("Qzv7", "Wkx9", "Jmp3", "Rtd5", "Hbn2", "Yfc8")


def leaks(text: str) -> list[str]:
    return [piece for piece in PIECES if piece in text]


def db_url(password: str, port: int = 1) -> str:
    return f"postgresql+psycopg2://otc:{password}@127.0.0.1:{port}/servicedesk"


@pytest.mark.parametrize("password", PASSWORDS.values(), ids=PASSWORDS.keys())
def test_mask_url_hides_every_piece_of_the_password(password: str) -> None:
    shown = mask_url(db_url(password))
    assert leaks(shown) == [], shown
    assert shown.endswith("@127.0.0.1:1/servicedesk")
    api = ApiSettings(base_url=f"http://otc:{password}@127.0.0.1:1/OTC/Data")
    assert leaks(api.masked_base_url) == [], api.masked_base_url
    assert leaks(repr(api)) == []


def test_a_clean_url_keeps_its_user_and_host() -> None:
    assert mask_url(db_url("plain")) == "postgresql+psycopg2://otc:***@127.0.0.1:1/servicedesk"
    assert mask_url(db_url("p%40ss")) == "postgresql+psycopg2://otc:***@127.0.0.1:1/servicedesk"


def test_more_than_one_at_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="%40") as caught:
        database_setting(db_url(PASSWORDS["at"]), {})
    assert leaks(str(caught.value)) == []


def otc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otc_pipeline", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("password", PROCESS_PASSWORDS.values(), ids=PROCESS_PASSWORDS.keys())
def test_database_errors_and_tracebacks_never_show_the_password(password: str, debug: bool) -> None:
    result = otc(*(["--debug"] if debug else []), "status", "--database-url", db_url(password))
    # Two '@' are refused before connecting (a configuration mistake, 2); the other
    # password reaches a server that refuses the connection (a failure, 1).
    assert result.returncode == (2 if "@" in password else 1)
    assert "Error: " in result.stderr
    assert leaks(result.stdout + result.stderr) == [], result.stderr
    if not debug:
        assert len(result.stderr.splitlines()) == 1


@pytest.fixture
def server() -> Iterator[OtcServer]:
    with OtcServer(password="s3cret-pw") as srv:
        yield srv


@pytest.mark.parametrize("output", ["plain", "debug", "json-logs"])
@pytest.mark.parametrize("password", PROCESS_PASSWORDS.values(), ids=PROCESS_PASSWORDS.keys())
def test_api_base_url_is_masked_in_errors_logs_and_the_run_record(
    server: OtcServer, tmp_path: Path, password: str, output: str
) -> None:
    debug = output == "debug"
    base = server.base_url.replace("http://", f"http://otc:{password}@", 1)
    server.queue(status(404))  # its error names the base URL: masked
    env = server.env(
        OTC_API_BASE_URL=base,
        OTC_STATE_DIR=str(tmp_path / "state"),
        OTC_API_MIN_INTERVAL_S="0",
        OTC_API_RETRIES="0",
        OTC_API_TIMEOUT_S="2",
        OTC_LOG_FORMAT="json" if output == "json-logs" else "text",
    )
    url = f"sqlite:///{tmp_path / 'otc.db'}"
    assert otc("db", "upgrade", "--database-url", url).returncode == 0
    result = otc(
        *(["--debug"] if debug else []), "load", "comments", "--database-url", url, env=env
    )
    assert result.returncode in (1, 2), result.stderr
    assert leaks(result.stdout + result.stderr) == [], result.stderr
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            errors = list(conn.execute(select(EtlRun.error_message)).scalars())
    finally:
        engine.dispose()
    if result.returncode == 1:
        assert errors and all(errors), errors  # the run failed, and says why
    else:
        assert "OTC_API_BASE_URL" in result.stderr  # refused before any run
    assert leaks(" ".join(errors)) == [], errors


# --- the command line --------------------------------------------------------------------


def test_masked_command_line() -> None:
    argv = ["python", "otc", "load", "all", "--database-url", db_url("pw"), "--from", "x"]
    assert masked_command_line(argv) == [
        *argv[:5],
        "postgresql+psycopg2://***@127.0.0.1:1/servicedesk",
        "--from",
        "x",
    ]
    assert masked_command_line([*argv[:4], "--database-url=" + db_url(PASSWORDS["all"])]) == [
        *argv[:4],
        "--database-url=postgresql+psycopg2://***@127.0.0.1:1/servicedesk",
    ]
    assert masked_command_line(["otc", "status", "--database-url", "sqlite:///x.db"]) is None


def test_the_password_is_not_in_the_load_process_command_line(
    tmp_path: Path, pg_databases: object
) -> None:
    # A load long enough to look at, on PostgreSQL with a password the server ignores
    # (trust authentication): the parent and its reading processes, through ps.
    from conftest import PgDatabases

    assert isinstance(pg_databases, PgDatabases)
    url = pg_databases.create().set(password=PASSWORDS["all"].replace("@", "%40"))
    write_sample(tmp_path, tickets=0, timesheets=40000, comments=0, fmt="json", seed=1)
    text_url = url.render_as_string(hide_password=False)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otc_pipeline",
            "load",
            "timesheets",
            "--from",
            str(tmp_path / "timesheets.json"),
            "--database-url",
            text_url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cmdline = Path(f"/proc/{process.pid}/cmdline")
        deadline = time.monotonic() + 20
        while b"***" not in cmdline.read_bytes():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.01)
        seen_children = False
        while process.poll() is None:
            listing = subprocess.run(
                ["ps", "-eo", "pid,ppid,args", "-ww"], capture_output=True, text=True
            ).stdout
            ours = [
                line
                for line in listing.splitlines()
                if f" {process.pid} " in f" {line.split(None, 2)[0]} {line.split(None, 2)[1]} "
            ]
            assert all(leaks(line) == [] for line in ours), ours
            seen_children = seen_children or len(ours) > 1
            for child in ours:
                proc = Path(f"/proc/{child.split()[0]}/cmdline")
                try:
                    assert leaks(proc.read_bytes().decode(errors="replace")) == []
                except FileNotFoundError:
                    pass
            time.sleep(0.05)
        assert process.returncode == 0, process.stderr.read() if process.stderr else ""
        assert seen_children  # the reading process was looked at too
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        pg_databases.drop(url.database or "")
