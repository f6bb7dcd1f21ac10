"""Retention: remove old runs from etl_metadata and their rejects from etl_rejects.

`otc prune --older-than 90d` removes every run that ended (or, for a run without an
end, started) before the cutoff, with its rejected rows, in batches of
``batch_size`` runs, each batch its own transaction: a long prune never holds
one huge transaction, and a prune stopped half-way leaves whole runs only.
Never removed: the latest run of each view (it is what `otc status` and the
freshness check judge), a run still running, and a run with no recorded time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.sql import ColumnElement

from .models import EtlReject, EtlRun, Status

DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True)
class PruneResult:
    """What a prune removed (or, with dry_run, would remove)."""

    cutoff: datetime
    runs: int
    rejects: int
    batches: int
    dry_run: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "cutoff": self.cutoff,
            "runs": self.runs,
            "rejects": self.rejects,
            "batches": self.batches,
            "dry_run": self.dry_run,
        }


def _prunable(cutoff: datetime) -> ColumnElement[bool]:
    latest_per_view = select(func.max(EtlRun.id)).group_by(EtlRun.view_name)
    ended = func.coalesce(EtlRun.load_end, EtlRun.load_start, EtlRun.last_load_time)
    return (
        (ended < cutoff)
        & EtlRun.id.not_in(latest_per_view.scalar_subquery())
        & ((EtlRun.load_status.is_(None)) | (EtlRun.load_status != Status.RUNNING))
    )


def prune(
    engine: Engine,
    older_than: timedelta,
    now: datetime,
    *,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PruneResult:
    """Remove runs older than ``older_than`` before ``now`` (naive UTC) and their rejects."""
    cutoff = now - older_than
    condition = _prunable(cutoff)
    if dry_run:
        with engine.connect() as conn:
            runs = conn.scalar(select(func.count()).select_from(EtlRun).where(condition)) or 0
            rejects = (
                conn.scalar(
                    select(func.count())
                    .select_from(EtlReject)
                    .where(EtlReject.run_id.in_(select(EtlRun.id).where(condition)))
                )
                or 0
            )
        return PruneResult(cutoff, int(runs), int(rejects), 0, True)
    runs = rejects = batches = 0
    while True:
        with engine.begin() as conn:
            ids = list(
                conn.scalars(
                    select(EtlRun.id).where(condition).order_by(EtlRun.id).limit(batch_size)
                )
            )
            if not ids:
                break
            # Rejects first: they point at their run.
            rejects += conn.execute(delete(EtlReject).where(EtlReject.run_id.in_(ids))).rowcount
            runs += conn.execute(delete(EtlRun).where(EtlRun.id.in_(ids))).rowcount
            batches += 1
    return PruneResult(cutoff, runs, rejects, batches, False)
