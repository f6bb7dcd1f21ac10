"""The metrics file: each view's state in the Prometheus text format, after every load.

``OTC_METRICS_FILE`` (e.g. ``/var/lib/node_exporter/textfile/otc.prom``) is
rewritten atomically (a temporary file beside it, then a rename) by
``prometheus_client.write_to_textfile``, so node_exporter's textfile collector
never reads half a file. Every sample describes the database, not the one
command that wrote it: a ``load tickets`` run rewrites the timesheets and
comments lines too, from their last runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from .models import COMMITTED, ENDED_BADLY, EtlRun
from .views import VIEW_ORDER, VIEWS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

RUN_STATUSES = (*COMMITTED, *ENDED_BADLY)
COUNTS = ("fetched", "inserted", "updated", "unchanged", "duplicates", "rejected")


def _timestamp(value: datetime | None) -> float:
    # Stored times are naive UTC; 0 (1970) for "never" makes "time since" alerts fire.
    return value.replace(tzinfo=UTC).timestamp() if value is not None else 0.0


def registry_for(engine: Engine) -> CollectorRegistry:
    """A registry holding every view's gauges, read from etl_metadata and the tables."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    labels = ["view"]
    last_success = Gauge(
        "otc_view_last_success_timestamp_seconds",
        "End of the view's last successful (or partial) load, Unix time; 0 if never.",
        labels,
        registry=registry,
    )
    last_run = Gauge(
        "otc_view_last_run_timestamp_seconds",
        "End of the view's last finished run, Unix time; 0 if never.",
        labels,
        registry=registry,
    )
    run_id = Gauge(
        "otc_view_last_run_id", "Id of the view's last finished run.", labels, registry=registry
    )
    status = Gauge(
        "otc_view_last_run_status",
        "1 for the status of the view's last finished run, 0 for the others.",
        ["view", "status"],
        registry=registry,
    )
    duration = Gauge(
        "otc_view_last_run_duration_seconds",
        "How long the view's last finished run took.",
        labels,
        registry=registry,
    )
    records = Gauge(
        "otc_view_last_run_records",
        "Records of the view's last finished run, by count (fetched, inserted, …).",
        ["view", "count"],
        registry=registry,
    )
    rows = Gauge("otc_view_rows", "Rows the view's table holds.", labels, registry=registry)
    with Session(engine) as session:
        for name in VIEW_ORDER:
            last = session.scalars(
                select(EtlRun)
                .where(EtlRun.view_name == name, EtlRun.load_status.in_(RUN_STATUSES))
                .order_by(EtlRun.id.desc())
                .limit(1)
            ).first()
            good = session.scalar(
                select(func.max(EtlRun.load_end)).where(
                    EtlRun.view_name == name, EtlRun.load_status.in_(COMMITTED)
                )
            )
            last_success.labels(name).set(_timestamp(good))
            rows.labels(name).set(
                session.scalar(select(func.count()).select_from(VIEWS[name].table)) or 0
            )
            last_run.labels(name).set(_timestamp(last.load_end if last else None))
            run_id.labels(name).set(last.id if last else 0)
            duration.labels(name).set(
                float(last.load_duration_seconds or 0) if last is not None else 0.0
            )
            for each in RUN_STATUSES:
                status.labels(name, each).set(
                    1 if last is not None and last.load_status == each else 0
                )
            values = (
                (
                    last.records_fetched,
                    last.records_inserted,
                    last.records_updated,
                    last.records_unchanged,
                    last.records_duplicates,
                    last.records_rejected,
                )
                if last is not None
                else (0,) * len(COUNTS)
            )
            for count, value in zip(COUNTS, values, strict=True):
                records.labels(name, count).set(value or 0)
    return registry


def metrics_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """``OTC_METRICS_FILE``, or None when unset."""
    env = os.environ if environ is None else environ
    text = env.get("OTC_METRICS_FILE")
    return Path(text).expanduser() if text else None


def write_metrics(engine: Engine, environ: Mapping[str, str] | None = None) -> Path | None:
    """Rewrite ``OTC_METRICS_FILE`` atomically; the path written, or None when unset."""
    path = metrics_path(environ)
    if path is None:
        return None
    # Imported here: a load without OTC_METRICS_FILE does not pay for it (~10 ms).
    from prometheus_client import write_to_textfile

    write_to_textfile(str(path), registry_for(engine))
    return path
