"""Alerts to a chat webhook when a view fails, keeps failing, or recovers.

``OTC_ALERT_WEBHOOK_URL`` receives one JSON POST per event, with a ``text`` that
Slack and Microsoft Teams incoming webhooks show as the message, and the same
facts as fields for anything else (view, run id, status, counts, error, the
database without credentials). Events, judged from the view's runs in etl_metadata:

- ``failed``: the view failed, and its run before did not;
- ``failing``: it has now failed ``OTC_ALERT_REPEAT`` (default 3) times in a row,
  or a multiple of that;
- ``recovered``: it loaded after one or more failures.

A webhook that is down, slow (cut off after ``OTC_NOTIFY_TIMEOUT_S``, default 5 s)
or refuses the alert is logged as a warning and never fails the load. The URL
itself is never logged: chat webhook URLs are secrets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from .errors import ConfigError
from .heartbeat import notify_timeout
from .load import LoadCounts
from .models import ENDED_BADLY, EtlRun, Status
from .pipeline import RunSummary

log = logging.getLogger(__name__)

DEFAULT_REPEAT = 3
FAILED_STATUSES = ENDED_BADLY


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go and how often a failing view is reported again."""

    webhook_url: str | None
    repeat: int = DEFAULT_REPEAT
    timeout_s: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AlertSettings:
        env = os.environ if environ is None else environ
        return cls(
            webhook_url=env.get("OTC_ALERT_WEBHOOK_URL") or None,
            repeat=_positive_int(env, "OTC_ALERT_REPEAT", DEFAULT_REPEAT),
            timeout_s=notify_timeout(env),
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, not {text!r}")
    return value


def database_without_credentials(url: URL) -> str:
    """The database as ``driver://host:port/name``: no user, no password."""
    bare = URL.create(url.drivername, host=url.host, port=url.port, database=url.database)
    return bare.render_as_string(hide_password=True)


def _consecutive_failures(session: Session, view_name: str, run_id: int) -> tuple[int, bool]:
    """How many runs in a row up to ``run_id`` failed, and whether the run before it failed."""
    statuses = session.scalars(
        select(EtlRun.load_status)
        .where(EtlRun.view_name == view_name, EtlRun.id <= run_id)
        .order_by(EtlRun.id.desc())
        .limit(1000)
    ).all()
    failures = 0
    for status in statuses:
        if status not in FAILED_STATUSES:
            break
        failures += 1
    previous_failed = len(statuses) > 1 and statuses[1] in FAILED_STATUSES
    return failures, previous_failed


def _text(event: str, summary: RunSummary, failures: int, database: str) -> str:
    where = f"run {summary.run_id}, {database}"
    if event == "recovered":
        return (
            f"otc: {summary.view} loaded again after failing ({where}): "
            f"{summary.fetched:,} fetched, {summary.inserted:,} inserted, "
            f"{summary.updated:,} updated, {summary.rejected:,} rejected"
        )
    times = "" if failures == 1 else f" {failures} times in a row"
    return f"otc: {summary.view} failed{times} ({where}): {summary.error}"


def alert_payload(event: str, summary: RunSummary, failures: int, database: str) -> dict[str, Any]:
    """The JSON body of one alert: ``text`` for chat, the rest for machines."""
    return {
        "text": _text(event, summary, failures, database),
        "event": event,
        "view": summary.view,
        "run_id": summary.run_id,
        "status": summary.status,
        "exit_code": summary.exit_code,
        "consecutive_failures": failures,
        "source": summary.source,
        "counts": {count.name: getattr(summary, count.name) for count in fields(LoadCounts)},
        "duration_s": summary.duration_s,
        "error": summary.error,
        "database": database,
    }


def alerts_for(
    engine: Engine, summaries: Iterable[RunSummary], settings: AlertSettings
) -> list[dict[str, Any]]:
    """The alerts these loads call for, judged from each view's recorded runs."""
    database = database_without_credentials(engine.url)
    found = []
    with Session(engine) as session:
        for summary in summaries:
            if summary.run_id is None:  # a dry run, or refused before any run opened
                continue
            failures, previous_failed = _consecutive_failures(session, summary.view, summary.run_id)
            if summary.status == Status.FAILED:
                if failures == 1:
                    event = "failed"
                elif failures % settings.repeat == 0:
                    event = "failing"
                else:
                    continue
            elif previous_failed:
                event = "recovered"
            else:
                continue
            found.append(alert_payload(event, summary, failures, database))
    return found


def deliver(payload: dict[str, Any], settings: AlertSettings) -> bool:
    """POST one alert; False (and a logged warning) when the webhook did not take it."""
    import httpx  # here: a load without OTC_ALERT_WEBHOOK_URL does not import it (~20 ms)

    assert settings.webhook_url is not None
    try:
        response = httpx.post(
            settings.webhook_url,
            json=payload,
            timeout=httpx.Timeout(settings.timeout_s),
            headers={"User-Agent": "otc-pipeline"},
        )
    except httpx.HTTPError as exc:
        log.warning(
            "the alert webhook (OTC_ALERT_WEBHOOK_URL) did not take the %s alert for %s: %s",
            payload["event"],
            payload["view"],
            type(exc).__name__,
            extra={"event": "alert_failed", "view": payload["view"], "run_id": payload["run_id"]},
        )
        return False
    if not response.is_success:
        log.warning(
            "the alert webhook (OTC_ALERT_WEBHOOK_URL) answered HTTP %s to the %s alert for %s",
            response.status_code,
            payload["event"],
            payload["view"],
            extra={"event": "alert_failed", "view": payload["view"], "run_id": payload["run_id"]},
        )
        return False
    return True


def send_alerts(
    engine: Engine, summaries: Iterable[RunSummary], environ: Mapping[str, str] | None = None
) -> int:
    """Send the alerts these loads call for; the number the webhook took."""
    settings = AlertSettings.from_env(environ)
    if settings.webhook_url is None:
        return 0
    return sum(deliver(payload, settings) for payload in alerts_for(engine, summaries, settings))
