"""`otc status --check`: exit codes at each threshold, on SQLite and PostgreSQL.

Runs are seeded straight into etl_metadata with load_end set so many hours ago,
so each case sits just inside or just past a threshold.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from otc_pipeline.cli import app
from otc_pipeline.db import make_engine
from otc_pipeline.models import EtlRun
from otc_pipeline.runs import utcnow

THRESHOLD_VARIABLES = [
    "OTC_STALE_WARN_HOURS",
    "OTC_STALE_ERROR_HOURS",
    *(
        f"OTC_{v}_STALE_{lvl}_HOURS"
        for v in ("TICKETS", "TIMESHEETS", "COMMENTS")
        for lvl in ("WARN", "ERROR")
    ),
]


@pytest.fixture(autouse=True)
def _no_threshold_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in THRESHOLD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def seed(db_url: str, *runs: dict[str, Any]) -> None:
    """Insert runs in order: each gives view, hours_ago and optionally status, source, fetched."""
    now = utcnow()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        for run in runs:
            ended = now - timedelta(hours=run["hours_ago"])
            conn.execute(
                insert(EtlRun).values(
                    view_name=run["view"],
                    source=run.get("source", "tickets.json"),
                    load_status=run.get("status", "success"),
                    load_start=ended - timedelta(seconds=5),
                    load_end=ended,
                    records_fetched=run.get("fetched", 10),
                    error_message=run.get("error"),
                )
            )
    engine.dispose()


def check(db_url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["status", "--check", "--database-url", db_url, *args], env=env)


def all_fresh(hours_ago: float = 1.0) -> list[dict[str, Any]]:
    return [{"view": v, "hours_ago": hours_ago} for v in ("tickets", "timesheets", "comments")]


def test_fresh_views_exit_0_and_say_so(db_url: str) -> None:
    seed(db_url, *all_fresh())
    result = check(db_url)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "all 3 views are fresh"


def test_default_thresholds_26_warn_50_error(db_url: str) -> None:
    seed(
        db_url,
        {"view": "tickets", "hours_ago": 25.5},
        {"view": "timesheets", "hours_ago": 26.5},
        {"view": "comments", "hours_ago": 49.5},
    )
    result = check(db_url)
    # Past warn only: exit 0, but the two stale views are named.
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines == [
        "timesheets: WARN — last successful load 26.5 h ago (warn after 26 h)",
        "comments: WARN — last successful load 49.5 h ago (warn after 26 h)",
    ]
    seed(db_url, {"view": "comments", "hours_ago": 50.5})
    result = check(db_url)
    assert result.exit_code == 1, result.output
    assert "comments: ERROR — last successful load 50.5 h ago (error after 50 h)" in result.stdout


def test_variables_set_thresholds_and_a_view_overrides_the_global_one(db_url: str) -> None:
    seed(
        db_url,
        {"view": "tickets", "hours_ago": 5},
        {"view": "timesheets", "hours_ago": 11},
        {"view": "comments", "hours_ago": 11},
    )
    env = {"OTC_STALE_WARN_HOURS": "2", "OTC_STALE_ERROR_HOURS": "12"}
    result = check(db_url, env=env)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3  # all past warn, none past error
    env["OTC_TIMESHEETS_STALE_ERROR_HOURS"] = "10"
    result = check(db_url, env=env)
    assert result.exit_code == 1, result.output
    assert "timesheets: ERROR" in result.stdout and "comments: WARN" in result.stdout
    env["OTC_TIMESHEETS_STALE_ERROR_HOURS"] = "11.5"
    assert check(db_url, env=env).exit_code == 0


def test_options_win_over_the_variables(db_url: str) -> None:
    seed(db_url, *all_fresh(hours_ago=3))
    env = {"OTC_STALE_ERROR_HOURS": "1"}
    assert check(db_url, env=env).exit_code == 1
    assert check(db_url, "--error-after", "4h", env=env).exit_code == 0
    result = check(db_url, "--warn-after", "90m", "--error-after", "1d", env=env)
    assert result.exit_code == 0
    assert "warn after 1.5 h" in result.stdout
    assert check(db_url, "--error-after", "2.5").exit_code == 1  # a bare number is hours


def test_a_failed_last_run_fails_the_check_even_when_recent_data_is_fresh(db_url: str) -> None:
    seed(
        db_url,
        *all_fresh(),
        {"view": "timesheets", "hours_ago": 0.5, "status": "failed", "error": "disk full\nmore"},
    )
    result = check(db_url)
    assert result.exit_code == 1, result.output
    run_line = [line for line in result.stdout.splitlines() if line.startswith("timesheets")]
    assert run_line == [
        "timesheets: FAILED — the last run (4) failed: disk full; last successful load 1 h ago"
    ]
    # The next successful run clears it.
    seed(db_url, {"view": "timesheets", "hours_ago": 0.1})
    assert check(db_url).exit_code == 0


def test_an_interrupted_last_run_counts_as_failed_and_a_running_one_is_ignored(
    db_url: str,
) -> None:
    seed(db_url, *all_fresh(), {"view": "tickets", "hours_ago": 0.5, "status": "interrupted"})
    assert check(db_url).exit_code == 1
    seed(
        db_url,
        {"view": "tickets", "hours_ago": 0.2},
        {"view": "tickets", "hours_ago": 0, "status": "running"},
    )
    assert check(db_url).exit_code == 0


def test_a_view_never_loaded_is_an_error(db_url: str) -> None:
    seed(db_url, {"view": "tickets", "hours_ago": 1}, {"view": "timesheets", "hours_ago": 1})
    result = check(db_url)
    assert result.exit_code == 1
    assert result.stdout.strip() == "comments: ERROR — never loaded"


def test_an_api_load_of_0_records_is_not_fresh(db_url: str) -> None:
    seed(
        db_url,
        *all_fresh(hours_ago=20),
        {"view": "comments", "hours_ago": 0.5, "source": "api", "fetched": 0},
    )
    result = check(db_url)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "comments: WARN — the last API load (run 4) fetched 0 records; "
        "the last load with records was 20 h ago"
    )
    # Its age counts from the last load that brought records, so it goes on to error.
    assert check(db_url, "--error-after", "19h").exit_code == 1
    # A file export of 0 records is not an outage.
    seed(db_url, {"view": "tickets", "hours_ago": 0.5, "source": "tickets.json", "fetched": 0})
    assert "tickets" not in check(db_url).stdout


def test_json_gives_every_views_state(db_url: str) -> None:
    seed(
        db_url,
        {"view": "tickets", "hours_ago": 1},
        {"view": "timesheets", "hours_ago": 30},
        {"view": "comments", "hours_ago": 1, "status": "failed", "error": "boom"},
    )
    result = check(db_url, "--json")
    assert result.exit_code == 1
    views = {v["view"]: v for v in json.loads(result.stdout)["views"]}
    assert {name: v["state"] for name, v in views.items()} == {
        "tickets": "fresh",
        "timesheets": "warn",
        "comments": "failed",
    }
    assert views["timesheets"]["age_hours"] == 30
    assert views["timesheets"]["warn_after_hours"] == 26
    assert views["timesheets"]["error_after_hours"] == 50
    assert views["comments"]["last_error"] == "boom"
    assert views["tickets"]["reason"] == ""


def test_plain_status_uses_the_warn_threshold_for_stale(db_url: str) -> None:
    seed(db_url, *all_fresh(hours_ago=3))
    result = CliRunner().invoke(
        app, ["status", "--json", "--database-url", db_url, "--warn-after", "2h"]
    )
    assert result.exit_code == 0, result.output
    views = json.loads(result.stdout)["views"]
    assert all(v["stale"] and v["freshness"] == "warn" for v in views)


@pytest.mark.parametrize("value", ["soon", "-3h", "0", "nanh"])
def test_a_bad_threshold_names_the_option(value: str, tmp_path: Any) -> None:
    result = CliRunner().invoke(
        app,
        [
            "status",
            "--check",
            "--database-url",
            f"sqlite:///{tmp_path}/x.db",
            "--warn-after",
            value,
        ],
    )
    assert result.exit_code == 2
    assert "Error: --warn-after must be a positive duration" in result.stderr


def test_a_bad_threshold_variable_is_named(db_url: str) -> None:
    seed(db_url, *all_fresh())
    result = check(db_url, env={"OTC_COMMENTS_STALE_ERROR_HOURS": "two days"})
    assert result.exit_code == 2
    assert "OTC_COMMENTS_STALE_ERROR_HOURS must be a positive duration" in result.stderr
