"""The breaker counts outages, not mistakes; refusals exit 75 (a real OTC stand-in on 127.0.0.1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from otc_server import OtcServer, status
from typer.testing import CliRunner

from otc_pipeline.cli import app
from otc_pipeline.errors import ApiError, ApiRejected, ApiUnavailable
from otc_pipeline.pipeline import RunSummary, worst_exit_code
from otc_pipeline.sources.api import ApiSettings, api_check, breaker_state, fetch_view

PASSWORD = "s3cret-pw"


@pytest.fixture
def server() -> Iterator[OtcServer]:
    with OtcServer(password=PASSWORD) as srv:
        yield srv


def limits(server: OtcServer, tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = server.env(
        OTC_STATE_DIR=str(tmp_path / "state"),
        OTC_API_MIN_INTERVAL_S="0",
        OTC_API_VIEW_GAP_S="0",
        OTC_API_TIMEOUT_S="2",
        OTC_API_RETRIES="0",
        OTC_API_BACKOFF_S="0.05",
        OTC_API_BACKOFF_MAX_S="5",
        OTC_API_BREAKER_FAILURES="1",
        OTC_API_BREAKER_COOLDOWN_S="600",
    )
    env.update(overrides)
    return env


def fetch_error(settings: ApiSettings) -> ApiError:
    with pytest.raises(ApiError) as info:
        list(fetch_view("comments", settings))
    return info.value


@pytest.mark.parametrize("code", [401, 403, 400, 404, 410])
def test_a_4xx_fails_at_once_and_never_counts_towards_the_breaker(
    server: OtcServer, tmp_path: Path, code: int
) -> None:
    settings = ApiSettings.from_env(limits(server, tmp_path, OTC_API_RETRIES="3"))
    server.queue(*[status(code)] * 3)
    for _ in range(3):  # three times the breaker's threshold
        error = fetch_error(settings)
        assert isinstance(error, ApiRejected)
        assert "OTC_API_BASE_URL" in str(error)
        if code in (401, 403):
            assert "refused the credentials" in str(error)
            assert "OTC_API_USER and OTC_API_PASSWORD" in str(error)
    assert server.request_count == 3  # no retries either
    state = breaker_state(settings)
    assert (state.failures, state.open_until) == (0, None)
    # The corrected password goes straight through.
    assert len(list(fetch_view("comments", settings))) == 25


def test_a_5xx_still_opens_the_breaker(server: OtcServer, tmp_path: Path) -> None:
    settings = ApiSettings.from_env(limits(server, tmp_path))
    server.queue(status(500))
    fetch_error(settings)
    assert breaker_state(settings).open_until is not None
    refused = fetch_error(settings)
    assert isinstance(refused, ApiUnavailable)
    assert "run `otc api reset` to try now" in str(refused)


def test_ping_never_opens_the_breaker(server: OtcServer, tmp_path: Path) -> None:
    settings = ApiSettings.from_env(limits(server, tmp_path))
    server.queue(*[status(503)] * 3)
    for _ in range(3):
        with pytest.raises(ApiError):
            api_check(settings, ping=True)
    state = breaker_state(settings)
    assert (state.failures, state.open_until) == (0, None)
    assert server.request_count == 3


def test_ping_goes_through_an_open_breaker_and_leaves_it_open(
    server: OtcServer, tmp_path: Path
) -> None:
    settings = ApiSettings.from_env(limits(server, tmp_path))
    server.queue(status(500))
    fetch_error(settings)
    lines = api_check(settings, ping=True)
    assert any(line.startswith("ping: HTTP 200") for line in lines)
    assert breaker_state(settings).open_until is not None


def test_api_reset_closes_the_breaker_and_says_what_it_cleared(
    server: OtcServer, tmp_path: Path
) -> None:
    env = limits(server, tmp_path)
    settings = ApiSettings.from_env(env)
    server.queue(status(502))
    fetch_error(settings)
    runner = CliRunner()
    result = runner.invoke(app, ["api", "reset"], env=env)
    assert result.exit_code == 0, result.output
    assert "breaker: closed; it was open until" in result.stdout
    assert "after 1 consecutive failed fetches (last: " in result.stdout
    assert "HTTP 502" in result.stdout
    assert "requests in the last hour: 1 of 100 (kept" in result.stdout
    assert PASSWORD not in result.stdout
    state = breaker_state(settings)
    assert (state.failures, state.open_until, state.requests_last_hour) == (0, None, 1)
    assert len(list(fetch_view("comments", settings))) == 25
    again = runner.invoke(app, ["api", "reset"], env=env)
    assert "nothing to clear" in again.stdout


def test_api_reset_clears_failures_below_the_threshold(server: OtcServer, tmp_path: Path) -> None:
    env = limits(server, tmp_path, OTC_API_BREAKER_FAILURES="3")
    server.queue(status(500), status(500))
    fetch_error(ApiSettings.from_env(env))
    fetch_error(ApiSettings.from_env(env))
    result = CliRunner().invoke(app, ["api", "reset"], env=env)
    assert "breaker: was closed; cleared 2 failed fetches" in result.stdout
    assert breaker_state(ApiSettings.from_env(env)).failures == 0


def load(db_url: str, view: str, env: dict[str, str]) -> tuple[int, list[dict[str, object]]]:
    result = CliRunner().invoke(
        app, ["load", view, "--from", "api", "--json", "--database-url", db_url], env=env
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, lines


def test_an_open_breaker_exits_75(server: OtcServer, tmp_path: Path, db_url: str) -> None:
    env = limits(server, tmp_path)
    server.queue(status(500))
    code, _ = load(db_url, "comments", env)
    assert code == 1  # the outage itself is a failure
    code, objects = load(db_url, "comments", env)
    assert code == 75
    assert objects[0]["status"] == "failed"
    assert server.request_count == 1


def test_the_hourly_cap_exits_75(server: OtcServer, tmp_path: Path, db_url: str) -> None:
    env = limits(server, tmp_path, OTC_API_MAX_PER_HOUR="1")
    assert load(db_url, "comments", env)[0] == 0
    code, objects = load(db_url, "comments", env)
    assert code == 75
    assert "hourly cap is used up" in str(objects[0]["error"])


def test_load_all_worst_code_a_failure_over_a_refusal(
    server: OtcServer, tmp_path: Path, db_url: str
) -> None:
    # tickets: 500 opens the breaker (1); the two other views are then refused (75).
    env = limits(server, tmp_path)
    server.queue(status(500))
    code, objects = load(db_url, "all", env)
    assert [o["status"] for o in objects] == ["failed"] * 3
    assert code == 1
    # Now every view is refused: 75, a scheduler's "skip, try next time".
    assert load(db_url, "all", env)[0] == 75


def summary(status_: str, rejected: int = 0, retry_later: bool = False) -> RunSummary:
    return RunSummary(
        view="tickets",
        run_id=1,
        status=status_,
        source="api",
        rejected=rejected,
        retry_later=retry_later,
    )


def test_worst_exit_code_order() -> None:
    ok, rejects = summary("success"), summary("partial", rejected=2)
    refused, failed = summary("failed", retry_later=True), summary("failed")
    assert worst_exit_code([ok]) == 0
    assert worst_exit_code([ok, rejects]) == 3
    assert worst_exit_code([rejects, refused]) == 75
    assert worst_exit_code([refused, failed, rejects]) == 1
    assert worst_exit_code([]) == 0


def test_load_help_documents_every_exit_code() -> None:
    text = CliRunner().invoke(app, ["load", "--help"], terminal_width=200).stdout
    for fragment in (
        "0 every view loaded",
        "3 loaded",
        "1 a view",
        "2 usage",
        "75 refused",
        "128+N",
    ):
        assert fragment in " ".join(text.split())
