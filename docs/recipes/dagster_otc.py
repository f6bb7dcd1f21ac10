"""Dagster: a job that loads every OTC view, retries a temporary refusal, checks freshness.

``dagster dev -f dagster_otc.py`` to try it. The settings come from the environment of
the run worker (OTC_DATABASE_URL, OTC_API_USER, OTC_API_PASSWORD, …).

A load's outcome, from ``otc_pipeline.exit_code``: 0 (or 3, committed with some rows
rejected) succeeds; 75 — refused for now (another load holds a view, the API breaker
is open, the hourly cap is used up) — asks Dagster to retry later; 1 fails the op.
"""

from __future__ import annotations

from dagster import (
    Definitions,
    Failure,
    In,
    Nothing,
    OpExecutionContext,
    RetryRequested,
    ScheduleDefinition,
    job,
    op,
)

import otc_pipeline

EX_TEMPFAIL = 75


@op
def otc_load_all(context: OpExecutionContext) -> None:
    """Load tickets, timesheets and comments from the OTC API."""
    summaries = otc_pipeline.load("all", "api")
    for summary in summaries:
        context.log.info(str(summary.as_dict()))
    code = otc_pipeline.exit_code(summaries)
    if code == EX_TEMPFAIL:
        # The breaker's cooldown is 10 minutes by default.
        raise RetryRequested(max_retries=3, seconds_to_wait=900)
    if code == 1:
        raise Failure(
            description="; ".join(f"{s.view}: {s.error}" for s in summaries if s.error),
            metadata={s.view: s.status for s in summaries},
        )


@op(ins={"after": In(Nothing)})
def otc_check_freshness(context: OpExecutionContext) -> None:
    """Fail when a view is past its error threshold or its last run failed."""
    views = otc_pipeline.check_freshness()
    for view in views:
        context.log.info(f"{view.view}: {view.state} {view.reason}")
    failing = [view for view in views if view.failing]
    if failing:
        raise Failure(description="; ".join(view.line() for view in failing))


@job
def otc_job() -> None:
    otc_check_freshness(after=otc_load_all())


defs = Definitions(
    jobs=[otc_job],
    schedules=[ScheduleDefinition(job=otc_job, cron_schedule="15 2 * * *")],
)
