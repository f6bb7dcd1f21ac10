"""The OTC API client against a real HTTP server on 127.0.0.1 that injects faults.

Limits are set small (min interval 0.05 s, backoff 0.1 s) so the module runs in
seconds; waits are asserted as lower bounds only, never tight upper bounds.
"""

from __future__ import annotations

import email.utils
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from otc_server import (
    VIEW_GUIDS,
    OtcServer,
    Reply,
    comment_records,
    html_login_page,
    status,
)
from typer.testing import CliRunner

from otc_pipeline import __version__
from otc_pipeline.errors import ApiError, ApiUnavailable, ConfigError
from otc_pipeline.sources.api import (
    DEFAULT_BASE_URL,
    ApiSettings,
    api_check,
    breaker_state,
    fetch_view,
    parse_retry_after,
)

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-pw"


@pytest.fixture
def server() -> Iterator[OtcServer]:
    with OtcServer(password=PASSWORD) as srv:
        yield srv


def small_limits(server: OtcServer, state_dir: Path, **overrides: str) -> dict[str, str]:
    env = server.env(
        OTC_STATE_DIR=str(state_dir),
        OTC_API_MIN_INTERVAL_S="0.05",
        OTC_API_MAX_PER_HOUR="100",
        OTC_API_VIEW_GAP_S="0",
        OTC_API_TIMEOUT_S="2",
        OTC_API_RETRIES="3",
        OTC_API_BACKOFF_S="0.1",
        OTC_API_BACKOFF_MAX_S="5",
        OTC_API_BREAKER_FAILURES="3",
        OTC_API_BREAKER_COOLDOWN_S="600",
    )
    env.update(overrides)
    return env


def settings_for(server: OtcServer, tmp_path: Path, **overrides: str) -> ApiSettings:
    return ApiSettings.from_env(small_limits(server, tmp_path / "state", **overrides))


def fetch_all(view: str, settings: ApiSettings) -> list[tuple[int, dict[str, Any]]]:
    return list(fetch_view(view, settings))


def fetch_error(view: str, settings: ApiSettings) -> tuple[ApiError, int]:
    """The error a fetch raises and how many records it yielded first."""
    got = 0
    with pytest.raises(ApiError) as info:
        for _ in fetch_view(view, settings):
            got += 1
    assert PASSWORD not in str(info.value)
    return info.value, got


# --- the happy path ----------------------------------------------------------------------


@pytest.mark.parametrize("envelope", ["message", "data", "list"])
def test_every_envelope_yields_records_with_positions(
    server: OtcServer, tmp_path: Path, envelope: str
) -> None:
    server.envelope = envelope
    records = fetch_all("comments", settings_for(server, tmp_path))
    assert [p for p, _ in records] == list(range(1, 26))
    assert records[0][1] == next(comment_records(1))
    (request,) = server.seen
    assert request.authorized
    assert request.view == "comments"
    assert f"id={VIEW_GUIDS['comments']}" in request.path
    assert request.user_agent == f"otc-pipeline/{__version__}"
    assert breaker_state(settings_for(server, tmp_path)).failures == 0


def test_first_record_arrives_before_the_body_is_complete(
    server: OtcServer, tmp_path: Path
) -> None:
    release = threading.Event()
    server.queue(Reply(cut_after=3, hold=release))
    records = fetch_view("comments", settings_for(server, tmp_path))
    started = time.monotonic()
    position, record = next(records)
    # The server is still waiting for `release`: the record came from a partial body.
    assert not release.is_set()
    assert time.monotonic() - started < 5
    assert position == 1 and record["TKTCT-CommentID"] == 500000
    release.set()
    rest = list(records)
    assert [p for p, _ in rest] == list(range(2, 26))


def test_consecutive_fetches_keep_the_minimum_interval(server: OtcServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path, OTC_API_MIN_INTERVAL_S="0.5")
    fetch_all("comments", settings)
    fetch_all("tickets", settings)
    assert server.gaps()[0] >= 0.45


def test_minimum_interval_holds_across_processes(server: OtcServer, tmp_path: Path) -> None:
    env = small_limits(server, tmp_path / "state", OTC_API_MIN_INTERVAL_S="1.5")
    fetch_all("comments", ApiSettings.from_env(env))
    result = run_python(
        "from otc_pipeline.sources.api import ApiSettings, fetch_view\n"
        "print(sum(1 for _ in fetch_view('comments', ApiSettings.from_env())))",
        env,
    )
    assert result.stdout.strip() == "25", result.stderr
    assert server.gaps()[0] >= 1.45


def test_hourly_cap_refuses_without_calling(server: OtcServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path, OTC_API_MAX_PER_HOUR="2", OTC_API_BACKOFF_MAX_S="1")
    fetch_all("comments", settings)
    fetch_all("comments", settings)
    error, _ = fetch_error("comments", settings)
    assert isinstance(error, ApiUnavailable)
    assert "hourly cap" in str(error) and "OTC_API_MAX_PER_HOUR=2" in str(error)
    assert server.request_count == 2
    # Not calling is not a failure of the API: the breaker does not count it.
    assert breaker_state(settings).failures == 0


# --- retries -----------------------------------------------------------------------------


def test_500_then_200_is_retried_after_backoff(server: OtcServer, tmp_path: Path) -> None:
    server.queue(status(500))
    assert len(fetch_all("comments", settings_for(server, tmp_path))) == 25
    assert server.request_count == 2
    assert server.gaps()[0] >= 0.1


def test_retries_back_off_exponentially_then_give_up(server: OtcServer, tmp_path: Path) -> None:
    server.queue(*[status(500)] * 4)
    error, _ = fetch_error("comments", settings_for(server, tmp_path))
    assert "gave up after 4 attempts" in str(error)
    assert "last error: HTTP 500 Internal Server Error" in str(error)
    assert server.request_count == 4
    gaps = server.gaps()
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4


@pytest.mark.parametrize("code", [429, 503])
def test_retry_after_seconds_is_honoured(server: OtcServer, tmp_path: Path, code: int) -> None:
    if code == 503:
        # One delta-seconds wait is enough to show; 503 gets the short version.
        server.queue(status(code, retry_after="1"))
    else:
        server.queue(status(code, retry_after="2"))
    assert len(fetch_all("comments", settings_for(server, tmp_path))) == 25
    assert server.request_count == 2
    assert server.gaps()[0] >= (0.95 if code == 503 else 1.95)


def test_retry_after_http_date_is_honoured(server: OtcServer, tmp_path: Path) -> None:
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    server.queue(status(429, retry_after=when))
    assert len(fetch_all("comments", settings_for(server, tmp_path))) == 25
    assert server.request_count == 2
    # HTTP dates have whole seconds: at least 2 of the 3 seconds remain when the answer
    # comes, and a busy machine may take up to a second more to send the first request.
    assert server.gaps()[0] >= 0.95


def test_retry_after_zero_does_not_burn_retries_in_a_tight_loop(
    server: OtcServer, tmp_path: Path
) -> None:
    server.queue(*[status(429, retry_after="0")] * 4)
    error, _ = fetch_error("comments", settings_for(server, tmp_path))
    assert "gave up after 4 attempts" in str(error) and "HTTP 429" in str(error)
    assert server.request_count == 4
    gaps = server.gaps()
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4


def test_retry_after_longer_than_the_backoff_cap_gives_up_at_once(
    server: OtcServer, tmp_path: Path
) -> None:
    server.queue(status(503, retry_after="3600"))
    error, _ = fetch_error("comments", settings_for(server, tmp_path))
    assert "asked for 3600 s" in str(error) and "OTC_API_BACKOFF_MAX_S" in str(error)
    assert server.request_count == 1


def test_a_response_slower_than_the_timeout_is_retried(server: OtcServer, tmp_path: Path) -> None:
    server.queue(Reply(delay_s=1.0))
    settings = settings_for(server, tmp_path, OTC_API_TIMEOUT_S="0.3")
    assert len(fetch_all("comments", settings)) == 25
    assert server.request_count == 2
    assert server.gaps()[0] >= 0.3 + 0.1


def test_timeouts_exhaust_the_retries(server: OtcServer, tmp_path: Path) -> None:
    server.queue(*[Reply(delay_s=1.0)] * 2)
    settings = settings_for(server, tmp_path, OTC_API_TIMEOUT_S="0.3", OTC_API_RETRIES="1")
    started = time.monotonic()
    error, _ = fetch_error("comments", settings)
    assert "gave up after 2 attempts" in str(error)
    assert "no answer within OTC_API_TIMEOUT_S=0.3 s" in str(error)
    assert server.request_count == 2
    assert time.monotonic() - started >= 0.6 + 0.1


def test_a_reset_before_the_first_record_is_retried(server: OtcServer, tmp_path: Path) -> None:
    server.queue(Reply(cut_after=0, cut="reset"))
    assert len(fetch_all("comments", settings_for(server, tmp_path))) == 25
    assert server.request_count == 2


# --- failures that must not be retried once records were yielded, or at all -----------


def test_a_reset_mid_body_fails_without_retry(server: OtcServer, tmp_path: Path) -> None:
    server.queue(Reply(cut_after=5, cut="reset"))
    error, got = fetch_error("comments", settings_for(server, tmp_path))
    assert got == 5
    assert "broke off after 5 records" in str(error)
    assert "reset" in str(error).lower()
    assert server.request_count == 1


def test_a_connection_closed_before_content_length_fails(server: OtcServer, tmp_path: Path) -> None:
    server.queue(Reply(cut_after=5, cut="short"))
    error, got = fetch_error("comments", settings_for(server, tmp_path))
    assert got == 5
    assert "broke off after 5 records" in str(error) and "dropped" in str(error)
    assert server.request_count == 1


def test_a_truncated_json_body_fails(server: OtcServer, tmp_path: Path) -> None:
    server.queue(Reply(cut_after=5, cut="close"))
    error, got = fetch_error("comments", settings_for(server, tmp_path))
    assert got == 5
    assert "ended before the JSON was complete (truncated body)" in str(error)
    assert server.request_count == 1


def test_malformed_json_fails(server: OtcServer, tmp_path: Path) -> None:
    server.queue(Reply(body=b'{"message": {"data": [{"TKTCT-CommentID": 1}, {"b" 2}]}}'))
    error, got = fetch_error("comments", settings_for(server, tmp_path))
    assert "malformed JSON" in str(error) and "colon" in str(error)
    assert "\n" not in str(error)
    assert server.request_count == 1


def test_json_without_a_list_of_records_fails(server: OtcServer, tmp_path: Path) -> None:
    server.queue(Reply(body=b'{"message": "view not found"}'))
    error, _ = fetch_error("comments", settings_for(server, tmp_path))
    assert "without a list of records" in str(error) and "view not found" in str(error)


def test_an_html_login_page_with_status_200_fails(server: OtcServer, tmp_path: Path) -> None:
    server.queue(html_login_page())
    error, _ = fetch_error("comments", settings_for(server, tmp_path))
    assert "the OTC API answered with an HTML page, not JSON (a login page?)" in str(error)
    assert server.request_count == 1


def test_html_labelled_as_json_is_still_an_html_page(server: OtcServer, tmp_path: Path) -> None:
    server.queue(Reply(body=b"\n  <html><body>Sign in</body></html>"))
    error, _ = fetch_error("comments", settings_for(server, tmp_path))
    assert "HTML page, not JSON" in str(error)


def test_a_wrong_content_type_fails(server: OtcServer, tmp_path: Path) -> None:
    server.queue(Reply(body=b"<?xml version='1.0'?><data/>", content_type="application/xml"))
    error, _ = fetch_error("comments", settings_for(server, tmp_path))
    assert "answered application/xml, not JSON" in str(error)


def test_401_names_the_credential_variables(server: OtcServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path, OTC_API_PASSWORD="wrong-password-123")
    error, _ = fetch_error("comments", settings)
    assert "HTTP 401" in str(error)
    assert "OTC_API_USER" in str(error) and "OTC_API_PASSWORD" in str(error)
    assert "wrong-password-123" not in str(error)
    assert server.request_count == 1
    assert server.seen[0].authorized is False


# --- circuit breaker ---------------------------------------------------------------------


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_breaker_opens_after_failures_and_stays_open_in_a_new_process(
    server: OtcServer, tmp_path: Path
) -> None:
    env = small_limits(
        server, tmp_path / "state", OTC_API_RETRIES="0", OTC_API_BREAKER_FAILURES="2"
    )
    settings = ApiSettings.from_env(env)
    server.queue(*[status(500)] * 10)
    fetch_error("comments", settings)
    assert breaker_state(settings).open_until is None
    fetch_error("comments", settings)
    assert breaker_state(settings).open_until is not None
    assert server.request_count == 2

    fetched = run_python(
        "from otc_pipeline.sources.api import ApiSettings, fetch_view\n"
        "list(fetch_view('comments', ApiSettings.from_env()))",
        env,
    )
    assert fetched.returncode != 0
    assert "ApiUnavailable: the OTC API circuit breaker is open" in fetched.stderr
    assert "after 2 consecutive failed fetches" in fetched.stderr
    assert "HTTP 500" in fetched.stderr and "no requests until" in fetched.stderr
    assert server.request_count == 2

    checked = subprocess.run(
        [sys.executable, "-m", "otc_pipeline.cli", "api", "check"],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert "breaker: open until" in checked.stdout
    assert PASSWORD not in checked.stdout
    assert server.request_count == 2


def test_breaker_lets_one_fetch_through_after_cooldown_and_success_closes_it(
    server: OtcServer, tmp_path: Path
) -> None:
    settings = settings_for(
        server,
        tmp_path,
        OTC_API_RETRIES="0",
        OTC_API_BREAKER_FAILURES="1",
        OTC_API_BREAKER_COOLDOWN_S="0.5",
    )
    server.queue(status(502))
    fetch_error("comments", settings)
    refused, _ = fetch_error("comments", settings)
    assert isinstance(refused, ApiUnavailable)
    assert server.request_count == 1
    time.sleep(0.6)
    assert len(fetch_all("comments", settings)) == 25
    state = breaker_state(settings)
    assert state.failures == 0 and state.open_until is None


def test_a_failure_mid_body_counts_for_the_breaker(server: OtcServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path, OTC_API_BREAKER_FAILURES="1")
    server.queue(Reply(cut_after=5, cut="close"))
    fetch_error("comments", settings)
    assert breaker_state(settings).open_until is not None


def test_an_abandoned_fetch_neither_fails_nor_closes_the_breaker(
    server: OtcServer, tmp_path: Path
) -> None:
    settings = settings_for(server, tmp_path, OTC_API_RETRIES="0")
    server.queue(status(500))
    fetch_error("comments", settings)
    records = fetch_view("comments", settings)
    next(records)
    records.close()  # e.g. the database failed and the pipeline stopped reading
    assert breaker_state(settings).failures == 1


# --- settings and `otc api check` --------------------------------------------------------


def test_settings_defaults_are_the_old_clients_limits(tmp_path: Path) -> None:
    settings = ApiSettings.from_env({"XDG_STATE_HOME": str(tmp_path)})
    assert settings.base_url == DEFAULT_BASE_URL
    assert (settings.min_interval_s, settings.max_per_hour, settings.view_gap_s) == (5, 100, 30)
    assert (settings.timeout_s, settings.retries) == (120, 3)
    assert (settings.backoff_s, settings.backoff_max_s) == (10, 300)
    assert (settings.breaker_failures, settings.breaker_cooldown_s) == (3, 600)
    assert settings.state_dir == tmp_path / "otc-pipeline"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTC_API_MIN_INTERVAL_S", "soon"),
        ("OTC_API_MAX_PER_HOUR", "1.5"),
        ("OTC_API_RETRIES", "-1"),
        ("OTC_API_TIMEOUT_S", "0"),
        ("OTC_API_BREAKER_FAILURES", "0"),
        ("OTC_API_BACKOFF_S", "nan"),
    ],
)
def test_invalid_numbers_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        ApiSettings.from_env({name: value})


def test_missing_credentials_name_the_variables(tmp_path: Path) -> None:
    settings = ApiSettings.from_env({"OTC_STATE_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="OTC_API_USER and OTC_API_PASSWORD"):
        fetch_view("comments", settings)
    with pytest.raises(ConfigError, match="OTC_API_PASSWORD"):
        fetch_view("comments", ApiSettings.from_env({"OTC_API_USER": "me"}))


def test_the_password_is_never_shown(server: OtcServer, tmp_path: Path) -> None:
    env = small_limits(server, tmp_path / "state")
    env["OTC_API_BASE_URL"] = server.base_url.replace("http://", f"http://x:{PASSWORD}@")
    settings = ApiSettings.from_env(env)
    assert PASSWORD not in repr(settings)
    lines = api_check(settings, ping=True)
    assert not any(PASSWORD in line for line in lines)
    assert "password: set" in lines
    server.queue(status(500, body=PASSWORD.encode()), *[html_login_page()] * 3)
    error, _ = fetch_error("comments", settings)
    assert PASSWORD not in str(breaker_state(settings).last_error)


def test_api_check_reports_settings_without_a_request(server: OtcServer, tmp_path: Path) -> None:
    lines = api_check(settings_for(server, tmp_path))
    text = "\n".join(lines)
    assert f"base URL: {server.base_url} (OTC_API_BASE_URL)" in text
    assert "user: otc-user" in text and "password: set" in text
    assert "at least 0.05 s between requests, at most 100 per hour" in text
    assert "breaker: closed" in text and "requests in the last hour: 0 of 100" in text
    assert server.request_count == 0


def test_api_check_ping_counts_records_in_one_request(server: OtcServer, tmp_path: Path) -> None:
    lines = api_check(settings_for(server, tmp_path), ping=True)
    assert lines[-1].startswith("ping: HTTP 200")
    assert "25 comments records" in lines[-1]
    assert server.request_count == 1


def test_otc_api_check_command(
    server: OtcServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otc_pipeline.cli import app

    for name, value in small_limits(server, tmp_path / "state").items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    result = runner.invoke(app, ["api", "check", "--ping"])
    assert result.exit_code == 0, result.output
    assert "ping: HTTP 200" in result.output and PASSWORD not in result.output
    server.queue(html_login_page())
    result = runner.invoke(app, ["api", "check", "--ping"])
    assert result.exit_code == 1
    assert "Error: the OTC API answered with an HTML page" in result.output
    monkeypatch.delenv("OTC_API_PASSWORD")
    result = runner.invoke(app, ["api", "check", "--ping"])
    assert result.exit_code == 2 and "OTC_API_PASSWORD" in result.output


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2
    assert parse_retry_after("0") == 0
    assert parse_retry_after("junk") is None
    assert parse_retry_after(None) is None
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 10, usegmt=True), now) == pytest.approx(
        10, abs=1
    )
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0


# --- through the pipeline: a failed fetch leaves the view as it was ---------------------


_FAULTS = {
    "reset": Reply(cut_after=5, cut="reset"),
    "truncated": Reply(cut_after=5, cut="close"),
    "malformed": Reply(body=b'{"message": {"data": [{"TKTCT-CommentID": 1}, {"b" 2}]}}'),
    "html": html_login_page(),
    "401": status(401),
}
# Every fault on SQLite; on PostgreSQL the two that fail after chunks were staged
# (creating a PostgreSQL database per case costs over a second).
_PIPELINE_CASES = [("sqlite", name) for name in _FAULTS] + [
    ("postgresql", "reset"),
    ("postgresql", "truncated"),
]


@pytest.mark.parametrize(
    ("dialect", "fault_name"), _PIPELINE_CASES, ids=[f"{d}-{f}" for d, f in _PIPELINE_CASES]
)
def test_a_failed_fetch_fails_the_run_and_leaves_the_table_unchanged(
    server: OtcServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine: Any,
    fault_name: str,
) -> None:
    from sqlalchemy import func, select

    from otc_pipeline.pipeline import load_view
    from otc_pipeline.views import COMMENTS

    for name, value in small_limits(server, tmp_path / "state").items():
        monkeypatch.setenv(name, value)
    first = load_view(engine, "comments", "api")
    assert first.status == "success" and first.inserted == 25

    def table() -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(select(COMMENTS.table).order_by("comment_id")))

    before = table()
    # The next answer has other comments and edits: none of them may land.
    server.views["comments"] = [
        {**record, "TKTCT-Comment": "edited"} for record in comment_records(40, start=10)
    ]
    server.queue(_FAULTS[fault_name])
    failed = load_view(engine, "comments", "api", chunk_size=2)
    assert failed.status == "failed"
    assert failed.error and "OTC API" in failed.error and PASSWORD not in failed.error
    assert table() == before
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(COMMENTS.table)).scalar() == 25
    assert server.request_count == 2


def test_rolling_windows_merge_into_history(
    server: OtcServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: Any
) -> None:
    """A later window that no longer holds old comments adds and updates, never deletes."""
    from sqlalchemy import select

    from otc_pipeline.pipeline import load_view
    from otc_pipeline.views import COMMENTS

    for name, value in small_limits(server, tmp_path / "state").items():
        monkeypatch.setenv(name, value)
    server.views["comments"] = list(comment_records(20))
    assert load_view(engine, "comments", "api").inserted == 20
    # The window moved on: the first ten fell out, five were edited, ten are new.
    later = list(comment_records(20, start=10))
    for record in later[:5]:
        record["TKTCT-Comment"] = "edited"
    server.views["comments"] = later
    summary = load_view(engine, "comments", "api")
    assert (summary.inserted, summary.updated, summary.unchanged) == (10, 5, 5)
    with engine.connect() as conn:
        ids = list(conn.scalars(select(COMMENTS.table.c.comment_id)))
    assert len(ids) == 30


def test_load_all_goes_on_after_a_failed_view_keeps_the_gap_and_exits_1(
    server: OtcServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    from otc_pipeline.cli import app

    limits = small_limits(server, tmp_path / "state", OTC_API_VIEW_GAP_S="0.5")
    for name, value in limits.items():
        monkeypatch.setenv(name, value)
    server.queue(status(401))  # the first view (tickets) is refused
    result = CliRunner().invoke(app, ["load", "all", "--database-url", db_url, "--json"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    import json

    statuses = {o["view"]: o["status"] for o in map(json.loads, lines)}
    assert statuses == {"tickets": "failed", "timesheets": "success", "comments": "success"}
    starts = [r.at for r in server.seen]
    assert len(starts) == 3
    assert all(b - a >= 0.5 for a, b in zip(starts, starts[1:], strict=False))


def test_an_api_load_reports_its_body_s_progress_against_content_length(
    server: OtcServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: Any
) -> None:
    """The reader, a forked process, tells the loading one how much of the body arrived."""
    from otc_server import body_chunks

    from otc_pipeline.pipeline import LoadProgress, load_view

    for name, value in small_limits(server, tmp_path / "state").items():
        monkeypatch.setenv(name, value)
    body = b"".join(body_chunks(comment_records(3000)))
    # With a Content-Length, sent in pieces so that rows arrive while the body does.
    server.queue(Reply(body=body, trickle_s=0.002, trickle_bytes=32 * 1024))
    seen: list[tuple[int, int | None, int | None]] = []

    class Watching(LoadProgress):
        def rows_read(
            self, view: str, rows: int, bytes_read: int | None, size: int | None = None
        ) -> None:
            seen.append((rows, bytes_read, size))

    summary = load_view(engine, "comments", "api", chunk_size=250, progress=Watching())
    assert summary.status == "success" and summary.inserted == 3000
    assert {size for _, _, size in seen} == {len(body)}
    done = [bytes_read or 0 for _, bytes_read, _ in seen]
    assert done == sorted(done) and done[0] < len(body) and done[-1] == len(body)

    # Without one (the body streamed until the connection ends): bytes, and no total.
    seen.clear()
    server.views["comments"] = comment_records(2000)
    load_view(engine, "comments", "api", chunk_size=250, progress=Watching())
    assert {size for _, _, size in seen} == {None}
    assert (seen[-1][1] or 0) > 100_000
