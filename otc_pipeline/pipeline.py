"""Source → parse → load → run record, for one view or all of them.

One transaction per view. A failure of any stage rolls the view back and
closes its run as ``failed`` with the reason; `load all` goes on with the next
view. Nothing here prints: callers get a :class:`RunSummary` per view.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError, OperationalError

from . import migrate, runs, stopping, users
from .chunks import SplitEnd
from .db import WRITER, connection, schema_lock
from .errors import ConfigError, OtcError, SchemaNotReady, SourceError, TemporaryRefusal
from .load import Load, LoadCounts, start_load
from .models import EtlRun, Status
from .parse import OTHER_DATE_ORDER, Reject, load_timezone
from .reading import (
    ReadPlan,
    Source,
    SplitRefuted,
    describe_source,
    find_view_files,
    in_halves,
    is_api,
    plan_read,
    read_chunks,
    whole,
)
from .readmeter import BodyMeter, ReadMeter, install_body_meter
from .reconcile import Reconcile
from .refusals import database_failure
from .settings import date_order_setting, timezone_name
from .sources.files import ReadOptions
from .views import VIEW_ORDER, View, known_view

# Measured on 100k timesheets (first load / reload): 5k 1.86 / 1.50 s, 10k 1.89 / 1.42 s,
# 20k 1.94 / 1.54 s. First loads were within noise; 10k gave the fastest reload.
DEFAULT_CHUNK_SIZE = 10000
TOP_REASONS = 5  # reject reasons a load reports, most frequent first


class LoadProgress:
    """What a load tells a progress display as it goes; every method does nothing here.

    The CLI's display (display.py) overrides them. A source's ``size`` is its bytes
    when known (a file); ``bytes_read`` is how far its readers are (None: unknown).
    """

    def note(self, text: str) -> None:
        """Something worth saying with --verbose (connecting, the schema, ...)."""

    def view_started(self, view: str, source: str, size: int | None) -> None:
        """A view's load begins reading ``source``."""

    def rows_read(
        self, view: str, rows: int, bytes_read: int | None, size: int | None = None
    ) -> None:
        """Another chunk of the view was read and staged: ``rows`` so far.

        ``size``: the source's bytes, once known later than view_started (an API body's
        Content-Length).
        """

    def stage(self, view: str, what: str) -> None:
        """The view's load moved on to ``what`` (e.g. merging the staged rows)."""

    def view_finished(self, summary: RunSummary) -> None:
        """The view's load ended (committed, dry-run or failed)."""

    def waiting(self, what: str, seconds: float | None) -> None:
        """Nothing moves until ``what`` (the API's pause between views, a lock) is over."""


Progress = LoadProgress


@dataclass(kw_only=True)
class RunSummary(LoadCounts):
    """What one load of one view did: its counts, and the run around them."""

    view: str
    run_id: int | None
    status: Status
    source: str
    duration_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    latest_source_time: datetime | None = None
    # The failure was a temporary refusal (breaker open, hourly cap, view held): exit 75.
    retry_later: bool = False
    # The most frequent reasons records were rejected: {"field", "reason", "count"}.
    reject_reasons: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 committed without rejects, 3 committed with rejects, 1 failed, 75 refused for now."""
        if self.status == Status.FAILED:
            return 75 if self.retry_later else 1
        return 3 if self.rejected else 0

    def as_dict(self) -> dict[str, Any]:
        """The `otc load --json` object."""
        data: dict[str, Any] = {
            "view": self.view,
            "run_id": self.run_id,
            "status": self.status,
            "source": self.source,
            **{count.name: getattr(self, count.name) for count in fields(LoadCounts)},
            "duration_s": self.duration_s,
        }
        if self.error:
            data["error"] = self.error
        if self.warnings:
            data["warnings"] = self.warnings
        if self.reject_reasons:
            data["reject_reasons"] = self.reject_reasons
        return data


def worst_exit_code(summaries: Iterable[RunSummary]) -> int:
    """The exit code of a load of several views: 1 over 75 over 3 over 0.

    A real failure outranks a refusal that a later run clears, which outranks rejects.
    """
    codes = {summary.exit_code for summary in summaries}
    return next((code for code in (1, 75, 3) if code in codes), 0)


def ensure_schema(engine: Engine | Connection) -> None:
    """Create the schema on an empty database; refuse one that is behind or not adopted."""
    state = migrate.state(engine)
    if state == "empty":
        if isinstance(engine, Connection):
            # A caller's transaction is no place for a whole schema migration.
            raise SchemaNotReady("the database is empty; run `otc db upgrade` first")
        # Another first load may be creating it right now: the upgrade waits for it,
        # then finds the schema at head and does nothing.
        with schema_lock(engine):
            state = migrate.state(engine)
            if state == "empty":
                migrate.upgrade(engine, "head")
    elif state == "legacy":
        raise SchemaNotReady(
            "this is a legacy servicedesk database that otc-pipeline has not adopted yet; "
            "run `otc db adopt` first"
        )
    elif state == "behind":
        raise SchemaNotReady(
            "the database schema is behind this otc-pipeline; run `otc db upgrade`"
        )
    elif state != "head":
        raise SchemaNotReady(
            "the database schema is newer than this otc-pipeline or unknown; upgrade otc-pipeline"
        )


def load_view(
    engine: Engine | Connection,
    view_name: str,
    source: Source,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dry_run: bool = False,
    progress: Progress | None = None,
    options: ReadOptions | None = None,
    wait_s: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
    reconcile: Reconcile | None = None,
) -> RunSummary:
    """Load one view from ``source`` (a file, "api", or an iterable of records).

    ``options`` says how to read an unusual export (sheet, delimiter, encoding,
    date order); the date order defaults to OTC_DATE_ORDER. With ``reconcile``
    the source is taken as complete for a range: rows held in it that the source
    lacks move to ``<table>_removed`` (see reconcile.py).

    Given a Connection inside a transaction (the ``otc_load`` test fixture does
    this), everything runs in SAVEPOINTs on it and nothing is committed.
    Ctrl-C, SIGTERM or SIGHUP before the commit rolls the view back, closes its
    run ``failed`` and raises :class:`~otc_pipeline.stopping.Stopped`; one that
    arrives once the commit has begun waits until the summary is returned. A view
    held by another load raises LoadLocked at once, or after waiting up to
    ``wait_s`` seconds for that load to end (``on_wait`` hears that it waits).
    """
    view = known_view(view_name, or_all=True)
    if chunk_size < 1:
        raise ConfigError("--chunk-size must be at least 1")
    if reconcile is not None and is_api(source) and not view.api_complete:
        raise ConfigError(
            f"--reconcile refused: the API's {view.name} view is a window of modified times, "
            f"complete for no range of {view.columns[view.reconcile_by or '']!r}; reconcile "
            f"{view.name} with a full export file instead"
        )
    options = replace(
        options or ReadOptions(),
        header_fields=tuple(view.columns[k] for k in view.key if view.columns[k] in view.required),
    )
    if options.date_order is None:
        options = replace(options, date_order=date_order_setting())
    plan = plan_read(
        view,
        source,
        chunk_size=chunk_size,
        timezone=load_timezone(timezone_name()),
        for_copy=engine.dialect.name == "postgresql",
        options=options,
    )
    with stopping.Guard() as guard:
        if dry_run:
            if migrate.state(engine) != "head":
                raise SchemaNotReady(
                    "--dry-run needs a database at head; run `otc db upgrade` (or adopt) first"
                )
            return _run(engine, plan, None, progress, guard, engine, reconcile)
        ensure_schema(engine)
        # The load runs on the lock's own connection: the lock ends exactly when it does.
        with runs.view_lock(engine, view.name, wait_s=wait_s, on_wait=on_wait) as conn:
            # A signal during these few statements waits: the run it opens is then closed.
            with stopping.held():
                run_id = runs.open_run(conn, view.name, plan.source_text)
            return _run(conn, plan, run_id, progress, guard, engine, reconcile)


def _run(
    engine: Engine | Connection,
    plan: ReadPlan,
    run_id: int | None,
    progress: Progress | None,
    guard: stopping.Guard,
    closer: Engine | Connection,
    reconcile: Reconcile | None = None,
) -> RunSummary:
    """Load the view on ``engine`` (the view lock's connection) and record the run.

    No run (``run_id`` None) is a dry run: it rolls back. A run that fails is
    closed, and whether an interrupted commit happened is read, through
    ``closer``: the caller's Engine (a fresh connection, since the load's own may
    be the one that was lost) or the caller's Connection (the test fixture's
    transaction, which alone can see the run).
    """
    view, source_text = plan.view, plan.source_text
    dry_run = run_id is None
    started = time.monotonic()
    summary = RunSummary(view=view.name, run_id=run_id, status=Status.RUNNING, source=source_text)
    if progress is not None:
        size = plan.file.stat().st_size if plan.file is not None and plan.file.is_file() else None
        progress.view_started(view.name, source_text, size)
    load: Load | None = None
    unknown_fields: frozenset[str] = frozenset()
    renamed_fields: frozenset[tuple[str, str]] = frozenset()
    reasons: Counter[tuple[str | None, str]] = Counter()
    commit_begun = False

    def fill_summary(load: Load) -> None:
        """The summary of a load about to commit (or a dry run about to roll back)."""
        _copy_counts(summary, load)
        summary.latest_source_time = load.latest_source_time
        summary.warnings.extend(load.warnings)
        if unknown_fields:
            names = ", ".join(repr(name) for name in sorted(unknown_fields))
            summary.warnings.insert(0, f"unknown fields ignored: {names}")
        if renamed_fields:
            names = ", ".join(f"{name!r} as {field!r}" for name, field in sorted(renamed_fields))
            summary.warnings.insert(0, f"fields read under their OTC names: {names}")
        refused = summary.rejected - sum(reasons.values())
        if refused > 0:
            reasons[(None, "refused by the database")] += refused
        summary.reject_reasons = [
            {"field": name, "reason": reason, "count": count}
            for (name, reason), count in reasons.most_common(TOP_REASONS)
        ]
        summary.status = (
            Status.DRY_RUN if dry_run else (Status.PARTIAL if summary.rejected else Status.SUCCESS)
        )
        if summary.fetched and summary.rejected == summary.fetched:
            # Nothing of the view was written; the rejects stay for `otc rejects`.
            summary.status = Status.FAILED
            summary.error = _nothing_loaded(summary)
        summary.duration_s = round(time.monotonic() - started, 3)

    def load_once(conn: Connection, plan: ReadPlan) -> None:
        """One attempt in one transaction (a savepoint inside a caller's)."""
        nonlocal load, unknown_fields, renamed_fields, commit_begun
        unknown_fields, renamed_fields = frozenset(), frozenset()
        reasons.clear()
        if conn.dialect.name == "sqlite":
            # The load's transaction begins deferred: it takes SQLite's one write lock
            # only when its merge begins (see load.py), so other writers go on while
            # it reads. (The view lock's connection otherwise begins IMMEDIATE.)
            conn.execution_options(**{WRITER: False})
        transaction = conn.begin_nested() if conn.in_transaction() else conn.begin()
        try:
            # An API source can trickle or back off: it merges only at the end.
            load = start_load(
                conn, view, run_id, merge_as_read=not is_api(plan.source), reconcile=reconcile
            )
            if load.takes_any_order and plan.halves is None and may_split:
                plan = in_halves(plan)
            meter: ReadMeter | BodyMeter | None = None
            if progress is not None and plan.file is not None:
                meter = ReadMeter(plan.file, plan.reader_starts())
            elif progress is not None and is_api(plan.source):
                meter = install_body_meter()  # before the reader forks: it writes there
            chunks = read_chunks(plan)
            # Closed here, not when garbage: a stopped load ends its readers before it
            # records the run (the traceback would keep the generator alive).
            with contextlib.closing(chunks):
                for chunk in chunks:
                    load.take(chunk)
                    if isinstance(chunk, SplitEnd):
                        continue
                    unknown_fields |= chunk.unknown_fields
                    renamed_fields |= chunk.renamed_fields
                    reasons.update((r.field, r.reason) for r in chunk.rejects)
                    _refuse_other_date_order(chunk.rejects, source_text)
                    if progress is not None:
                        bytes_read = meter.bytes_read() if meter is not None else None
                        size = meter.size() if isinstance(meter, BodyMeter) else None
                        progress.rows_read(view.name, load.counts.fetched, bytes_read, size)
                    stopping.pause_point("staged", view.name)
            stopping.pause_point("merge", view.name)
            if progress is not None:
                progress.stage(view.name, "merging into the table")
            load.finish()
            after_load(conn, view, summary, load.counts)
            fill_summary(load)
            if dry_run:
                transaction.rollback()
                return
            # The run's final record belongs to the view's transaction: it commits
            # with the rows or not at all, whenever the process dies.
            _close_run(conn, summary)
            stopping.pause_point("before-commit", view.name)
            guard.hold()  # from here a signal waits: the commit and its report finish
            stopping.pause_point("commit", view.name)
            commit_begun = True
            transaction.commit()
            stopping.pause_point("after-commit", view.name)
        except BaseException:
            if not commit_begun:
                with contextlib.suppress(Exception):  # the first error is the one to report
                    transaction.rollback()
            raise

    may_split = True
    try:
        stopping.check()  # a signal while the run was being opened
        with connection(engine) as conn:
            try:
                load_once(conn, plan)
            except SplitRefuted:
                # The guessed middle of a JSON export was no boundary between records
                # (or the file is broken there): nothing was kept; read it whole.
                may_split = False
                load_once(conn, whole(plan))
    except (Exception, KeyboardInterrupt) as exc:
        signum = stopping.received() or _interrupting_signal(exc)
        if commit_begun and _run_committed(closer, summary):
            # Whatever broke off (a signal, a lost connection), the commit happened:
            # the run row, written in the same transaction, says so.
            return summary
        summary.status = Status.FAILED
        summary.error = stopping.reason(signum) if signum else _error_text(exc, source_text)
        summary.retry_later = isinstance(exc, TemporaryRefusal) and not signum
        summary.warnings.clear()
        summary.latest_source_time = None
        if load is not None:
            _copy_counts(summary, load)
        # Counts of a failed run describe what was read, not what was written.
        summary.inserted = summary.updated = summary.unchanged = summary.stale = 0
        summary.removed = 0
        summary.duration_s = round(time.monotonic() - started, 3)
        with stopping.held():
            _close_failed_run(closer, summary)
        if progress is not None:
            progress.view_finished(summary)
        if signum:
            raise stopping.Stopped(signum, [summary]) from exc
        return summary
    if progress is not None:
        progress.view_finished(summary)
    return summary


def _interrupting_signal(exc: BaseException) -> int | None:
    """SIGINT if a KeyboardInterrupt is this error or what caused it, else None.

    A Ctrl-C inside a database call leaves the connection unusable, so the next
    statement (a RESET, a rollback) fails with an error of its own: the
    interrupt, not that error, is what happened.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, stopping.Stopped):
            return seen.signum
        if isinstance(seen, KeyboardInterrupt):
            return signal.SIGINT
        seen = seen.__cause__ or seen.__context__
    return None


def _run_committed(engine: Engine | Connection, summary: RunSummary) -> bool:
    """Whether the load's commit happened: its run row, closed inside it, is no longer running."""
    if summary.run_id is None:
        return False
    try:
        with stopping.held(), connection(engine) as conn:
            status = conn.execute(
                select(EtlRun.load_status).where(EtlRun.id == summary.run_id)
            ).scalar()
    except Exception:  # noqa: BLE001 - unknown means not shown as committed
        return False
    return status is not None and status != Status.RUNNING


def _refuse_other_date_order(rejects: list[Reject], source_text: str) -> None:
    """Fail the load at a date that reads only in the other order (month-first, say).

    Such a file's dates are all in that order: the ones that also read day-first
    (01/02/26) would be stored as the wrong day, and loading the file again with
    the right order would then add them as new entries.
    """
    for reject in rejects:
        if OTHER_DATE_ORDER in reject.reason:
            raise SourceError(
                f"{source_text}: {reject.field} {reject.value!r} at position {reject.position} "
                f"{reject.reason.removeprefix('value ')}; nothing was loaded, since the dates "
                "that read both ways would be stored as the wrong day"
            )


def _nothing_loaded(summary: RunSummary) -> str:
    """The error of a load whose every record was rejected, with its top reasons."""
    top = "; ".join(
        f"{r['count']:,} × {r['field'] + ': ' if r['field'] else ''}{r['reason']}"
        for r in summary.reject_reasons[:3]
    )
    where = f"; see `otc rejects --run {summary.run_id}`" if summary.run_id is not None else ""
    return (
        f"every one of the {summary.fetched:,} records was rejected, nothing was loaded "
        f"({top}){where}"
    )


def _close_run(engine: Engine | Connection, summary: RunSummary) -> None:
    """Write the run's final record (nothing for a dry run, which has no run)."""
    if summary.run_id is None:
        return
    runs.close_run(
        engine,
        summary.run_id,
        status=summary.status,
        fetched=summary.fetched,
        inserted=summary.inserted,
        updated=summary.updated,
        unchanged=summary.unchanged,
        duplicates=summary.duplicates,
        stale=summary.stale,
        rejected=summary.rejected,
        removed=summary.removed,
        duration_s=summary.duration_s,
        warnings=summary.warnings,
        error=summary.error,
        latest_source_time=summary.latest_source_time,
    )


# How long a failed run's record waits for a database that went away (a restart).
CLOSE_RUN_PATIENCE_S = 30.0


def _close_failed_run(engine: Engine | Connection, summary: RunSummary) -> None:
    """Close a failed run; after a lost connection, once the server answers again.

    A server restart fails the load at once, while the server is still starting:
    its run's record is written when it is back (within CLOSE_RUN_PATIENCE_S),
    else left `running`, for the next load of the view to mark `interrupted`.
    """
    deadline = time.monotonic() + CLOSE_RUN_PATIENCE_S
    while True:
        try:
            _close_run(engine, summary)
            return
        except OperationalError as exc:
            # No SQLSTATE: no connection (refused, closed); 57P03: still starting up.
            unreachable = getattr(exc.orig, "pgcode", None) in (None, "57P03")
            if isinstance(engine, Connection) or not unreachable or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def after_load(conn: Connection, view: View, summary: RunSummary, counts: LoadCounts) -> None:
    """Work that belongs to a view's load transaction once its rows are merged."""
    if view.refreshes_user_lookup and (counts.inserted or counts.updated):
        stopping.pause_point("users-refresh", view.name)
        # Timesheet rows carry both names: the one reliable source for user_lookup.
        # A load that wrote no timesheet row has nothing new to tell it (and the
        # refresh reads the whole table); `otc users refresh` runs it on demand.
        summary.warnings.extend(users.refresh_from_timesheets(conn))


def _copy_counts(summary: RunSummary, load: Load) -> None:
    """The load's counts onto the summary (a RunSummary is LoadCounts and its run)."""
    for count in fields(LoadCounts):
        setattr(summary, count.name, getattr(load.counts, count.name))


def _error_text(exc: BaseException, source_text: str) -> str:
    if isinstance(exc, OtcError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user"
    if isinstance(exc, DBAPIError):
        return str(database_failure(exc))
    orig = getattr(exc, "orig", None)
    detail = str(orig if orig is not None else exc).strip().splitlines()
    first = detail[0] if detail else type(exc).__name__
    return f"{type(exc).__name__} while loading {source_text}: {first}"


def missing_view(name: str, folder: Path) -> RunSummary:
    """What `load all` reports for a view whose export the folder lacks: a warning, no run."""
    return RunSummary(
        view=name,
        run_id=None,
        status=Status.MISSING,
        source=str(folder),
        warnings=[f"{folder} holds no {name} export ({name}.json, .csv or .xlsx); not loaded"],
    )


def load_all(
    engine: Engine | Connection,
    source: Path | str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dry_run: bool = False,
    progress: Progress | None = None,
    between_views: Callable[[], None] | None = None,
    options: ReadOptions | None = None,
    wait_s: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> list[RunSummary]:
    """Load every view from a folder of exports or the API; a failed view does not stop the rest.

    A stop signal does: the view it interrupts rolls back, no later view starts,
    and :class:`~otc_pipeline.stopping.Stopped` carries the summaries so far. A
    view held by another load is refused (exit code 75 in its summary) or waited
    for up to ``wait_s`` seconds; the other views still load.
    """
    if is_api(source):
        plan: list[tuple[str, Source]] = [(name, source) for name in VIEW_ORDER]
    else:
        found = find_view_files(Path(source))
        plan = list(found.items())
    summaries: list[RunSummary] = []
    if not is_api(source):
        summaries = [missing_view(n, Path(source)) for n in VIEW_ORDER if n not in found]
    with stopping.Guard():
        for index, (name, view_source) in enumerate(plan):
            not_loaded = [later for later, _ in plan[index:]]
            signum = stopping.received()
            if signum:
                # A signal during the last view's commit: that view is done, no other starts.
                raise stopping.Stopped(signum, summaries, not_loaded)
            try:
                if index and between_views is not None:
                    between_views()
            except stopping.Stopped as stop:
                raise stopping.Stopped(stop.signum, summaries, not_loaded) from None
            try:
                summaries.append(
                    load_view(
                        engine,
                        name,
                        view_source,
                        chunk_size=chunk_size,
                        dry_run=dry_run,
                        progress=progress,
                        options=options,
                        wait_s=wait_s,
                        on_wait=on_wait,
                    )
                )
            except stopping.Stopped as stop:
                raise stopping.Stopped(
                    stop.signum, summaries + stop.summaries, not_loaded[1:]
                ) from None
            except OtcError as exc:
                summaries.append(
                    RunSummary(
                        view=name,
                        run_id=None,
                        status=Status.FAILED,
                        source=describe_source(view_source),
                        error=str(exc),
                        retry_later=isinstance(exc, TemporaryRefusal),
                    )
                )
                if progress is not None:
                    progress.view_finished(summaries[-1])
    summaries.sort(key=lambda summary: VIEW_ORDER.index(summary.view))
    return summaries
