"""`otc prune`: old runs and their rejects go, in batches; the latest run of a view stays."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from typer.testing import CliRunner

from otc_pipeline.cli import app
from otc_pipeline.db import make_engine
from otc_pipeline.models import EtlReject, EtlRun
from otc_pipeline.runs import utcnow


def seed_history(db_url: str) -> dict[str, list[int]]:
    """Runs of each view, days_ago apart, each with two rejects; returns run ids per view."""
    now = utcnow()
    plan = {
        "tickets": [200, 120, 95, 89, 1],
        "timesheets": [300, 100],  # only old runs: the latest must stay anyway
        "comments": [10],
    }
    ids: dict[str, list[int]] = {}
    engine = make_engine(db_url)
    with engine.begin() as conn:
        for view, ages in plan.items():
            for days in ages:
                ended = now - timedelta(days=days)
                run_id = conn.execute(
                    insert(EtlRun)
                    .values(
                        view_name=view,
                        source="x.json",
                        load_status="partial",
                        load_start=ended - timedelta(minutes=1),
                        load_end=ended,
                        records_rejected=2,
                    )
                    .returning(EtlRun.id)
                ).scalar_one()
                ids.setdefault(view, []).append(run_id)
                for position in (1, 2):
                    conn.execute(
                        insert(EtlReject).values(
                            run_id=run_id,
                            view_name=view,
                            source_position=position,
                            reason="bad",
                        )
                    )
        # A legacy row with no time at all: its age is unknown, so it stays.
        conn.execute(insert(EtlRun).values(view_name="tickets", load_status="success"))
        # ...but the latest tickets run is a newer one:
        ended = now - timedelta(hours=1)
        ids["tickets"].append(
            conn.execute(
                insert(EtlRun)
                .values(
                    view_name="tickets", load_status="success", load_start=ended, load_end=ended
                )
                .returning(EtlRun.id)
            ).scalar_one()
        )
    engine.dispose()
    return ids


def remaining(db_url: str) -> tuple[list[int], int]:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        runs = list(conn.scalars(select(EtlRun.id).order_by(EtlRun.id)))
        rejects = conn.scalar(select(func.count()).select_from(EtlReject)) or 0
    engine.dispose()
    return runs, int(rejects)


def test_prune_removes_old_runs_and_their_rejects_but_never_a_views_latest(db_url: str) -> None:
    ids = seed_history(db_url)
    all_runs, all_rejects = remaining(db_url)
    runner = CliRunner()
    dry = runner.invoke(
        app, ["prune", "--older-than", "90d", "--dry-run", "--database-url", db_url]
    )
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("would remove 4 runs and 8 rejected rows older than 90 days")
    assert remaining(db_url) == (all_runs, all_rejects)

    result = runner.invoke(
        app,
        ["prune", "--older-than", "90d", "--batch-size", "1", "--json", "--database-url", db_url],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["runs"], report["rejects"], report["batches"], report["dry_run"]) == (
        4,
        8,
        4,
        False,
    )
    runs, rejects = remaining(db_url)
    gone = {ids["tickets"][0], ids["tickets"][1], ids["tickets"][2], ids["timesheets"][0]}
    assert set(runs) == set(all_runs) - gone
    assert ids["timesheets"][1] in runs  # 100 days old, but the view's latest run
    assert rejects == all_rejects - 8
    # Nothing left to prune: a second run removes nothing.
    again = runner.invoke(app, ["prune", "--older-than", "90d", "--database-url", db_url])
    assert again.exit_code == 0
    assert again.stdout.startswith("removed 0 runs and 0 rejected rows")


def test_prune_keeps_a_running_run(db_url: str) -> None:
    now = utcnow()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        for status in ("running", "success"):
            conn.execute(
                insert(EtlRun).values(
                    view_name="tickets",
                    load_status=status,
                    load_start=now - timedelta(days=200),
                    load_end=None if status == "running" else now,
                )
            )
    engine.dispose()
    result = CliRunner().invoke(app, ["prune", "--older-than", "1d", "--database-url", db_url])
    assert result.exit_code == 0
    assert len(remaining(db_url)[0]) == 2


@pytest.mark.parametrize("value", ["soon", "0d", "-5"])
def test_prune_needs_a_positive_age(value: str, tmp_path: Any) -> None:
    result = CliRunner().invoke(
        app, ["prune", "--older-than", value, "--database-url", f"sqlite:///{tmp_path}/x.db"]
    )
    assert result.exit_code == 2
    assert "--older-than must be a positive duration" in result.stderr


def test_prune_requires_the_age(tmp_path: Any) -> None:
    result = CliRunner().invoke(app, ["prune", "--database-url", f"sqlite:///{tmp_path}/x.db"])
    assert result.exit_code == 2
