"""Alerts, heartbeat, metrics file and JSON logs around `otc load`, with real receivers.

The webhook and the heartbeat are real HTTP servers on 127.0.0.1 (port 0) that
record every request; one can be told to answer slowly, or not to exist at all.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from otc_server import ticket_records
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from otc_pipeline.alerts import database_without_credentials
from otc_pipeline.cli import app

MONITORING_VARIABLES = (
    "OTC_ALERT_WEBHOOK_URL",
    "OTC_ALERT_REPEAT",
    "OTC_HEARTBEAT_URL",
    "OTC_NOTIFY_TIMEOUT_S",
    "OTC_METRICS_FILE",
    "OTC_LOG_FORMAT",
)


@pytest.fixture(autouse=True)
def _no_monitoring_variables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in MONITORING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield
    from otc_pipeline import logs

    logs.configure("text")  # the CLI's logging setup is per process


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A webhook / heartbeat endpoint that records requests; ``delay_s`` makes it slow."""

    def __init__(self, delay_s: float = 0.0, status: int = 200) -> None:
        self.delay_s = delay_s
        self.status = status
        self.received: list[Received] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver.received.append(Received("POST", self.path, body, time.monotonic()))
                if receiver.delay_s:
                    receiver.release.wait(receiver.delay_s)
                try:
                    self.send_response(receiver.status)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"OK")
                except OSError:
                    pass  # the client gave up on a slow answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/hook/abc123"

    def paths(self) -> list[str]:
        return [r.path for r in self.received]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def write_tickets(path: Path, count: int = 5, bad: int = 0) -> Path:
    records = list(ticket_records(count))
    for record in records[:bad]:
        record["TKT-Ticket ID"] = "not-a-number"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_broken(path: Path) -> Path:
    path.write_text('[{"TKT-Ticket ID": 1, "TKT-Title": "cut', encoding="utf-8")
    return path


def otc(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


# --- heartbeat ---------------------------------------------------------------------------


def test_heartbeat_pings_start_then_the_exit_code(
    receiver: Receiver, db_url: str, tmp_path: Path
) -> None:
    env = {"OTC_HEARTBEAT_URL": receiver.url}
    good = write_tickets(tmp_path / "tickets.json")
    assert (
        otc("load", "tickets", "--from", str(good), "--database-url", db_url, env=env).exit_code
        == 0
    )
    rejects = write_tickets(tmp_path / "rejects.json", bad=1)
    result = otc("load", "tickets", "--from", str(rejects), "--database-url", db_url, env=env)
    assert result.exit_code == 3
    broken = write_broken(tmp_path / "broken.json")
    assert (
        otc("load", "tickets", "--from", str(broken), "--database-url", db_url, env=env).exit_code
        == 1
    )
    assert otc("load", "nope", "--database-url", db_url, env=env).exit_code == 2
    assert receiver.paths() == [
        "/hook/abc123/start",
        "/hook/abc123/0",
        "/hook/abc123/start",
        "/hook/abc123/3",
        "/hook/abc123/start",
        "/hook/abc123/1",
        "/hook/abc123/start",
        "/hook/abc123/2",
    ]
    starts, ends = receiver.received[0::2], receiver.received[1::2]
    assert all(s.at <= e.at for s, e in zip(starts, ends, strict=True))


def test_a_heartbeat_receiver_that_is_down_does_not_fail_the_load(
    db_url: str, tmp_path: Path
) -> None:
    env = {"OTC_HEARTBEAT_URL": closed_port_url()}
    good = write_tickets(tmp_path / "tickets.json")
    result = otc("load", "tickets", "--from", str(good), "--database-url", db_url, env=env)
    assert result.exit_code == 0, result.output
    assert "warning: the heartbeat (OTC_HEARTBEAT_URL) /start was not delivered" in result.stderr
    assert "/0 was not delivered" in result.stderr
    assert "127.0.0.1" not in result.stderr  # the URL (a secret check id) is never shown


def test_a_slow_heartbeat_is_cut_off(db_url: str, tmp_path: Path) -> None:
    with Receiver(delay_s=20) as slow:
        env = {"OTC_HEARTBEAT_URL": slow.url, "OTC_NOTIFY_TIMEOUT_S": "0.3"}
        good = write_tickets(tmp_path / "tickets.json")
        started = time.monotonic()
        result = otc("load", "tickets", "--from", str(good), "--database-url", db_url, env=env)
        elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert "ReadTimeout" in result.stderr
    assert elapsed < 10  # two pings cut off at 0.3 s each, not 2 x 20 s
    assert slow.paths() == ["/hook/abc123/start", "/hook/abc123/0"]


# --- alerts ------------------------------------------------------------------------------


def test_alerts_on_failure_on_repeated_failure_and_on_recovery(
    receiver: Receiver, db_url: str, tmp_path: Path
) -> None:
    env = {"OTC_ALERT_WEBHOOK_URL": receiver.url, "OTC_ALERT_REPEAT": "3"}
    good = write_tickets(tmp_path / "tickets.json")
    broken = write_broken(tmp_path / "broken.json")

    def load(path: Path) -> int:
        return int(
            otc("load", "tickets", "--from", str(path), "--database-url", db_url, env=env).exit_code
        )

    assert load(good) == 0
    assert receiver.received == []  # a success after a success: nothing to say
    assert load(broken) == 1
    assert [r.json()["event"] for r in receiver.received] == ["failed"]
    assert load(broken) == 1  # the second failure in a row: quiet
    assert load(broken) == 1  # the third: "failing"
    assert load(good) == 0  # recovered
    assert load(good) == 0  # and quiet again
    alerts = [r.json() for r in receiver.received]
    assert [a["event"] for a in alerts] == ["failed", "failing", "recovered"]
    assert [a["consecutive_failures"] for a in alerts] == [1, 3, 0]
    assert [a["run_id"] for a in alerts] == [2, 4, 5]

    failed = alerts[0]
    assert failed["view"] == "tickets" and failed["status"] == "failed"
    assert failed["exit_code"] == 1
    assert "broken.json" in failed["error"]
    assert failed["text"].startswith("otc: tickets failed (run 2, ")
    assert failed["error"] in failed["text"]
    assert failed["database"] == database_without_credentials(make_url(db_url))
    assert "tickets failed 3 times in a row" in alerts[1]["text"]
    recovered = alerts[2]
    assert recovered["status"] == "success"
    assert recovered["counts"] == {
        "fetched": 5,
        "inserted": 0,
        "updated": 0,
        "unchanged": 5,
        "stale": 0,
        "duplicates": 0,
        "rejected": 0,
        "removed": 0,
    }
    assert recovered["text"].startswith("otc: tickets loaded again after failing (run 5, ")
    for received in receiver.received:
        assert received.path == "/hook/abc123"


def test_alert_database_never_carries_credentials() -> None:
    url = make_url("postgresql+psycopg2://etl:hunter2@db.internal:5433/servicedesk")
    shown = database_without_credentials(url)
    assert shown == "postgresql+psycopg2://db.internal:5433/servicedesk"


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_a_webhook_that_is_down_or_slow_does_not_fail_the_load(db_url: str, tmp_path: Path) -> None:
    broken = write_broken(tmp_path / "broken.json")
    good = write_tickets(tmp_path / "tickets.json")
    env = {"OTC_ALERT_WEBHOOK_URL": closed_port_url()}
    result = otc("load", "tickets", "--from", str(broken), "--database-url", db_url, env=env)
    assert result.exit_code == 1  # the load's own outcome, nothing worse
    assert (
        "the alert webhook (OTC_ALERT_WEBHOOK_URL) did not take the failed alert for tickets: ConnectError"
        in result.stderr
    )
    with Receiver(delay_s=20) as slow:
        env = {"OTC_ALERT_WEBHOOK_URL": slow.url, "OTC_NOTIFY_TIMEOUT_S": "0.3"}
        started = time.monotonic()
        result = otc("load", "tickets", "--from", str(good), "--database-url", db_url, env=env)
        assert time.monotonic() - started < 10
        assert result.exit_code == 0, result.output
        assert "ReadTimeout" in result.stderr
        assert [r.json()["event"] for r in slow.received] == ["recovered"]
    with Receiver(status=500) as refusing:
        env = {"OTC_ALERT_WEBHOOK_URL": refusing.url}
        result = otc("load", "tickets", "--from", str(broken), "--database-url", db_url, env=env)
        assert result.exit_code == 1
        assert "answered HTTP 500 to the failed alert for tickets" in result.stderr


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_a_bad_alert_repeat_is_refused_before_loading(db_url: str, tmp_path: Path) -> None:
    good = write_tickets(tmp_path / "tickets.json")
    result = otc(
        "load",
        "tickets",
        "--from",
        str(good),
        "--database-url",
        db_url,
        env={"OTC_ALERT_REPEAT": "0"},
    )
    assert result.exit_code == 2
    assert "OTC_ALERT_REPEAT must be a whole number >= 1" in result.stderr


# --- metrics -----------------------------------------------------------------------------


def read_metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_file_after_every_load(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    path = folder / "otc.prom"
    env = {"OTC_METRICS_FILE": str(path)}
    good = write_tickets(tmp_path / "tickets.json", count=7, bad=2)
    before = time.time()
    assert (
        otc("load", "tickets", "--from", str(good), "--database-url", db_url, env=env).exit_code
        == 3
    )
    m = read_metrics(path)
    tickets = (("view", "tickets"),)
    assert m[("otc_view_rows", tickets)] == 5
    assert m[("otc_view_last_run_id", tickets)] == 1
    assert m[("otc_view_last_run_status", (("status", "partial"), ("view", "tickets")))] == 1
    assert m[("otc_view_last_run_status", (("status", "failed"), ("view", "tickets")))] == 0
    assert m[("otc_view_last_run_records", (("count", "fetched"), ("view", "tickets")))] == 7
    assert m[("otc_view_last_run_records", (("count", "inserted"), ("view", "tickets")))] == 5
    assert m[("otc_view_last_run_records", (("count", "rejected"), ("view", "tickets")))] == 2
    assert m[("otc_view_last_run_duration_seconds", tickets)] > 0
    success = m[("otc_view_last_success_timestamp_seconds", tickets)]
    assert before - 5 <= success <= time.time() + 5
    # A view never loaded: success time 0, so "time since last success" alerts fire.
    assert m[("otc_view_last_success_timestamp_seconds", (("view", "comments"),))] == 0

    broken = write_broken(tmp_path / "broken.json")
    assert (
        otc("load", "tickets", "--from", str(broken), "--database-url", db_url, env=env).exit_code
        == 1
    )
    m = read_metrics(path)
    assert m[("otc_view_last_run_status", (("status", "failed"), ("view", "tickets")))] == 1
    assert m[("otc_view_last_run_id", tickets)] == 2
    assert m[("otc_view_last_success_timestamp_seconds", tickets)] == success
    assert m[("otc_view_rows", tickets)] == 5
    assert sorted(p.name for p in folder.iterdir()) == ["otc.prom"]  # no temporary file left


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_an_unwritable_metrics_file_is_a_warning(db_url: str, tmp_path: Path) -> None:
    good = write_tickets(tmp_path / "tickets.json")
    env = {"OTC_METRICS_FILE": str(tmp_path / "missing-folder" / "otc.prom")}
    result = otc("load", "tickets", "--from", str(good), "--database-url", db_url, env=env)
    assert result.exit_code == 0
    assert "warning: the metrics file (OTC_METRICS_FILE) was not written" in result.stderr


# --- JSON logs ---------------------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in text.splitlines()]  # every line is one object
    for e in events:
        stamp = datetime.fromisoformat(e["time"].replace("Z", "+00:00"))
        assert stamp.tzinfo is not None and stamp.utcoffset() == UTC.utcoffset(None)
        assert e["time"].endswith("Z")
    return events


def test_json_logs_one_object_per_event(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    write_tickets(folder / "tickets.json", count=4, bad=1)
    write_broken(folder / "comments.json")
    result = otc(
        "--log-format", "json", "load", "all", "--from", str(folder), "--database-url", db_url
    )
    assert result.exit_code == 1
    events = json_lines(result.stderr)
    assert [e["event"] for e in events] == [
        "load_started",
        "view_result",
        "view_result",  # timesheets: missing from the folder, and named in a warning
        "view_warning",
        "view_result",
        "load_finished",
    ]
    started, tickets, missing, missing_warning, comments, finished = events
    assert missing["view"] == "timesheets" and missing["status"] == "missing"
    assert "holds no timesheets export" in missing_warning["message"]
    assert started["view"] == "all" and started["source"] == str(folder)
    assert "@" not in started["database"]
    assert (
        tickets["view"] == "tickets" and tickets["run_id"] == 1 and tickets["status"] == "partial"
    )
    assert tickets["counts"]["rejected"] == 1 and tickets["level"] == "info"
    assert comments["view"] == "comments" and comments["run_id"] == 2
    assert comments["level"] == "error" and "comments.json" in comments["error"]
    assert finished["exit_code"] == 1
    assert "Error:" not in result.stderr


def test_json_logs_carry_warnings_and_errors(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = list(ticket_records(2))
    records[0]["Unheard Of"] = "x"
    path = tmp_path / "tickets.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    monkeypatch.setenv("OTC_LOG_FORMAT", "json")
    result = otc("load", "tickets", "--from", str(path), "--database-url", db_url)
    assert result.exit_code == 0
    warnings = [e for e in json_lines(result.stderr) if e["event"] == "view_warning"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning" and warnings[0]["run_id"] == 1
    assert "Unheard Of" in warnings[0]["message"]

    result = otc("load", "nope", "--database-url", db_url)
    assert result.exit_code == 2
    (error,) = json_lines(result.stderr)
    assert error["event"] == "error" and error["level"] == "error" and error["exit_code"] == 2
    assert "unknown view 'nope'" in error["message"]


def test_text_logs_stay_as_they_were(db_url: str, tmp_path: Path) -> None:
    good = write_tickets(tmp_path / "tickets.json")
    result = otc("load", "tickets", "--from", str(good), "--database-url", db_url)
    assert result.exit_code == 0
    assert result.stderr == ""
    assert result.stdout.startswith("tickets: success")


def test_an_unknown_log_format_is_a_usage_error() -> None:
    result = otc("--log-format", "xml", "status")
    assert result.exit_code == 2
    assert "--log-format must be text or json, not 'xml'" in result.stderr
