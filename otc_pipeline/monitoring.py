"""Around a load, tell the monitoring: events for the log, alerts, the metrics file.

Called by ``commands.load`` (so the command line and the Python API both get it)
once the views' transactions are over. Nothing here can fail a load: the data
is committed (or rolled back) already, so an alert, a metrics file or a log
event that cannot be delivered is a warning, not an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import fields

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from . import alerts, metrics
from .load import LoadCounts
from .logs import event
from .models import Status
from .pipeline import RunSummary, worst_exit_code

log = logging.getLogger(__name__)


def check_settings(environ: Mapping[str, str] | None = None) -> None:
    """Refuse bad alert and notify settings before any run opens (ConfigError, exit 2)."""
    alerts.AlertSettings.from_env(environ)


def load_started(view: str, source: str, url: URL) -> None:
    event(
        "load_started",
        f"load of {view} from {source} started",
        view=view,
        source=source,
        database=alerts.database_without_credentials(url),
        pid=os.getpid(),
    )


def _log_result(summary: RunSummary) -> None:
    counts = {count.name: getattr(summary, count.name) for count in fields(LoadCounts)}
    if summary.status == Status.FAILED:
        message = f"{summary.view}: failed — {summary.error}"
        level = logging.WARNING if summary.retry_later else logging.ERROR
    else:
        message = f"{summary.view}: {summary.status} — " + ", ".join(
            f"{value:,} {name}" for name, value in counts.items()
        )
        level = logging.INFO
    event(
        "view_result",
        message,
        level=level,
        printed=True,
        view=summary.view,
        run_id=summary.run_id,
        status=summary.status,
        exit_code=summary.exit_code,
        source=summary.source,
        counts=counts,
        duration_s=summary.duration_s,
        error=summary.error,
    )
    for warning in summary.warnings:
        event(
            "view_warning",
            warning,
            level=logging.WARNING,
            printed=True,
            view=summary.view,
            run_id=summary.run_id,
        )


def after_load(engine: Engine, summaries: Sequence[RunSummary]) -> None:
    """Log each view's result, send the alerts they call for, rewrite the metrics file."""
    for summary in summaries:
        _log_result(summary)
    if any(summary.run_id is not None for summary in summaries):
        try:
            alerts.send_alerts(engine, summaries)
        except Exception as exc:  # noqa: BLE001 - an alert never fails a committed load
            log.warning(
                "alerts were not sent: %s: %s",
                type(exc).__name__,
                exc,
                extra={"event": "alert_failed"},
            )
        try:
            metrics.write_metrics(engine)
        except Exception as exc:  # noqa: BLE001 - nor does the metrics file
            log.warning(
                "the metrics file (OTC_METRICS_FILE) was not written: %s: %s",
                type(exc).__name__,
                exc,
                extra={"event": "metrics_failed"},
            )
    event(
        "load_finished",
        f"load finished with exit code {worst_exit_code(summaries)}",
        exit_code=worst_exit_code(summaries),
        views=[summary.view for summary in summaries],
    )
