"""Is each view fresh? Its thresholds, its state, and the exit code of `otc status --check`.

A view is judged by its runs in etl_metadata, like ``dbt source freshness``:

- ``failed``: its last finished run failed or was interrupted;
- ``error``: its last successful load is older than the error threshold, or it
  was never loaded;
- ``warn``: its last successful load is older than the warn threshold, or its
  last successful API load fetched 0 records (an API that answers nothing is
  an outage that looks like success: the age counts from the last load that
  brought records);
- ``fresh``: none of these.

``failed`` and ``error`` make `otc status --check` exit 1. Thresholds come from
``--warn-after`` / ``--error-after``, else ``OTC_<VIEW>_STALE_WARN_HOURS`` /
``OTC_<VIEW>_STALE_ERROR_HOURS``, else ``OTC_STALE_WARN_HOURS`` /
``OTC_STALE_ERROR_HOURS``, else 26 h / 50 h.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, not_, select
from sqlalchemy.orm import Session

from .models import COMMITTED, ENDED_BADLY, EtlRun, Status
from .settings import stale_hours
from .sources.records import API
from .views import VIEW_ORDER

# A daily cron run plus two hours of slack; then a second missed day.
DEFAULT_WARN_HOURS = 26.0
DEFAULT_ERROR_HOURS = 50.0

FRESH, WARN, ERROR, FAILED = "fresh", "warn", "error", "failed"
GOOD_STATUSES = COMMITTED
FAILED_STATUSES = ENDED_BADLY


@dataclass(frozen=True)
class Thresholds:
    """How old, in hours, a view's last successful load may be before a warning or an error."""

    warn_hours: float
    error_hours: float


def thresholds(
    view_name: str,
    *,
    warn_after: float | None = None,
    error_after: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> Thresholds:
    """The view's thresholds: the options, else its own variables, else the global ones."""
    return Thresholds(
        warn_hours=warn_after
        if warn_after is not None
        else stale_hours(view_name, "WARN", DEFAULT_WARN_HOURS, environ),
        error_hours=error_after
        if error_after is not None
        else stale_hours(view_name, "ERROR", DEFAULT_ERROR_HOURS, environ),
    )


@dataclass(frozen=True)
class ViewFreshness:
    """One view's freshness and why (the reason is empty when it is fresh)."""

    view: str
    state: str  # fresh, warn, error, failed
    reason: str
    age_hours: float | None  # since the last successful load that brought records
    warn_after_hours: float
    error_after_hours: float
    last_run_id: int | None
    last_status: str | None
    last_success: datetime | None
    last_error: str | None

    @property
    def failing(self) -> bool:
        """Past the error threshold, or the last run failed: `--check` exits 1."""
        return self.state in (ERROR, FAILED)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def line(self) -> str:
        """The one line `otc status --check` prints for a view that is not fresh."""
        return f"{self.view}: {self.state.upper()} — {self.reason}"


def _hours(value: float) -> str:
    return f"{value:g} h"


def view_freshness(
    session: Session, view_name: str, limits: Thresholds, now: datetime
) -> ViewFreshness:
    """Judge one view by its runs (``now`` naive UTC, like the stored times)."""

    def latest(*conditions: ColumnElement[bool]) -> EtlRun | None:
        query = (
            select(EtlRun)
            .where(EtlRun.view_name == view_name, *conditions)
            .order_by(EtlRun.id.desc())
            .limit(1)
        )
        return session.scalars(query).first()

    # A load still running decides nothing yet: the last finished one does.
    last = latest(EtlRun.load_status != Status.RUNNING)
    good = latest(EtlRun.load_status.in_(GOOD_STATUSES))
    empty_api = and_(EtlRun.source == API, EtlRun.records_fetched == 0)
    with_records = latest(EtlRun.load_status.in_(GOOD_STATUSES), not_(empty_api))
    since = with_records.load_end if with_records is not None else None
    # Compared unrounded (a threshold of minutes is honoured), shown to a tenth of an hour.
    exact_age = (now - since).total_seconds() / 3600 if since is not None else None
    age = round(exact_age, 1) if exact_age is not None else None
    ago = f"{age:g} h ago" if age is not None else "never"

    if last is not None and last.load_status in FAILED_STATUSES:
        first_line = (last.error_message or "no error recorded").splitlines()[0]
        state, reason = (
            FAILED,
            f"the last run ({last.id}) {last.load_status}: {first_line}; "
            f"last successful load {ago}",
        )
    elif exact_age is None:
        state = ERROR
        reason = (
            "the API loads fetched 0 records; no load has brought any"
            if good is not None
            else "never loaded"
        )
    elif exact_age > limits.error_hours:
        state, reason = (
            ERROR,
            f"last successful load {ago} (error after {_hours(limits.error_hours)})",
        )
    elif good is not None and with_records is not None and good.id != with_records.id:
        state, reason = (
            WARN,
            f"the last API load (run {good.id}) fetched 0 records; the last load with "
            f"records was {ago}",
        )
    elif exact_age > limits.warn_hours:
        state, reason = (
            WARN,
            f"last successful load {ago} (warn after {_hours(limits.warn_hours)})",
        )
    else:
        state, reason = FRESH, ""
    return ViewFreshness(
        view=view_name,
        state=state,
        reason=reason,
        age_hours=age,
        warn_after_hours=limits.warn_hours,
        error_after_hours=limits.error_hours,
        last_run_id=last.id if last is not None else None,
        last_status=last.load_status if last is not None else None,
        last_success=good.load_end if good is not None else None,
        last_error=last.error_message
        if last is not None and last.load_status in FAILED_STATUSES
        else None,
    )


def check(
    session: Session,
    now: datetime,
    *,
    warn_after: float | None = None,
    error_after: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[ViewFreshness]:
    """Every view's freshness, in load order."""
    return [
        view_freshness(
            session,
            name,
            thresholds(name, warn_after=warn_after, error_after=error_after, environ=environ),
            now,
        )
        for name in VIEW_ORDER
    ]


def exit_code(views: Iterable[ViewFreshness]) -> int:
    """1 when any view is failing (past its error threshold, or its last run failed), else 0."""
    return 1 if any(view.failing for view in views) else 0
