"""otc-pipeline: keep the servicedesk database full, fresh and trustworthy.

The Python API for orchestrators (Airflow, Dagster, your own scheduler) does what
the command line does, without a subprocess::

    import otc_pipeline

    summaries = otc_pipeline.load("all", "api", database_url="postgresql+psycopg2://…")
    code = otc_pipeline.exit_code(summaries)      # 0, 3, 1 or 75, as `otc load` exits
    views = otc_pipeline.check_freshness()         # as `otc status --check`

Errors a caller can act on are :class:`otc_pipeline.errors.OtcError` subclasses,
each with the ``exit_code`` the command line would use. Imports happen on first
use, so ``import otc_pipeline`` stays cheap.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .freshness import ViewFreshness
    from .pipeline import Progress, RunSummary

__all__ = ["__version__", "check_freshness", "exit_code", "load"]


def load(
    view: str,
    source: str | Path = "api",
    *,
    database_url: str | None = None,
    chunk_size: int = 10000,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> list[RunSummary]:
    """Load ``view`` (tickets, timesheets, comments or all) from ``source``, like `otc load`.

    ``source`` is ``"api"`` (the OTC API, with the OTC_API_* settings), an export
    file (.json, .csv, .xlsx) or, for ``all``, a folder of exports. The database is
    ``database_url``, else OTC_DATABASE_URL, the OTC_PG_* variables or
    ``sqlite:///otc.db``; an empty database gets the schema first. Alerts and the
    metrics file (OTC_ALERT_WEBHOOK_URL, OTC_METRICS_FILE) work as on the command line.

    Returns one :class:`~otc_pipeline.pipeline.RunSummary` per view. A view that
    failed is a summary with ``status == "failed"`` and its ``error`` (``exit_code``
    1, or 75 when refused for now: API breaker open, hourly cap used up), not an
    exception: with ``all``, the other views still load.

    Raises (all :class:`~otc_pipeline.errors.OtcError`, with ``exit_code``):
    ``ConfigError`` (2) for a bad view, option or setting (missing API credentials
    included); ``DatabaseUnreachable`` (2); ``SchemaNotReady`` (2) for a database
    behind the code or a legacy one not adopted; ``SourceError`` (1) for a source
    that does not exist or is not an export; ``LoadLocked`` when another load of a
    single view holds it.
    """
    from .commands import load as load_command

    return load_command(
        database_url,
        view,
        str(source),
        chunk_size=chunk_size,
        dry_run=dry_run,
        progress=progress,
    )


def exit_code(summaries: list[RunSummary]) -> int:
    """The exit code `otc load` would end with: 1 over 75 over 3 over 0."""
    from .pipeline import worst_exit_code

    return worst_exit_code(summaries)


def check_freshness(
    *,
    database_url: str | None = None,
    warn_after: float | str | None = None,
    error_after: float | str | None = None,
) -> list[ViewFreshness]:
    """Every view's freshness, like `otc status --check`; ``view.failing`` means exit 1.

    ``warn_after`` / ``error_after`` are hours or durations (``"90m"``, ``"26h"``,
    ``"2d"``); unset, the OTC_<VIEW>_STALE_*_HOURS and OTC_STALE_*_HOURS settings or
    26 / 50 hours apply. Raises ``ConfigError`` for a bad threshold and
    ``SchemaNotReady`` for a database never loaded or not at head.
    """
    from .commands import status_check
    from .settings import parse_hours

    def hours(value: float | str | None, name: str) -> float | None:
        if value is None:
            return None
        return parse_hours(str(value), name)

    return status_check(
        database_url,
        warn_after=hours(warn_after, "warn_after"),
        error_after=hours(error_after, "error_after"),
    )


class _Package(types.ModuleType):
    """Keeps ``otc_pipeline.load`` the function once the ``otc_pipeline.load`` module loads.

    Importing a submodule sets it as an attribute of its package, which would
    replace :func:`load` with the module ``load.py``. The module stays reachable
    the usual ways (``from otc_pipeline.load import ViewLoader``,
    ``sys.modules["otc_pipeline.load"]``).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
