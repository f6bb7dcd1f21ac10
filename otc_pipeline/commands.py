"""One typed function per command; no Typer, no printing. Each returns what the CLI shows."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, func, inspect, select
from sqlalchemy.orm import Session

from . import freshness, migrate, pipeline, removal, retention, runs
from .db import connect_engine, make_engine, schema_lock, schema_name
from .errors import (
    ConfigError,
    DatabaseNotFound,
    ExportNotFound,
    NotFound,
    OtcError,
    SchemaNotReady,
)
from .models import COMMITTED, EtlReject, EtlRun, Ticket
from .reading import is_api
from .reconcile import Reconcile, parse_range
from .settings import DatabaseSetting, database_setting, date_order_setting, mask_url
from .sources.files import ReadOptions
from .views import VIEW_ORDER, VIEWS, known_view


def missing_sqlite_file(setting: DatabaseSetting) -> Path | None:
    """The absolute path of an SQLite database file that does not exist yet, else None."""
    if setting.url.get_backend_name() != "sqlite":
        return None
    database = setting.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database).absolute()
    return None if path.exists() else path


def database_name(database_url: str | None) -> str:
    """The configured database as shown to users: password masked, an SQLite file absolute."""
    setting = database_setting(database_url)
    url = setting.url
    database = url.database
    if url.get_backend_name() == "sqlite" and database and database != ":memory:":
        if not database.startswith("file:"):
            url = url.set(database=str(Path(database).absolute()))
    return mask_url(url)


@contextmanager
def _database(
    database_url: str | None, *, at_head: bool = False, read_only: bool = False
) -> Iterator[Engine]:
    """An engine on the configured database, disposed of afterwards.

    With ``at_head``, a database that is empty, behind or not adopted is refused
    with the command that fixes it (for commands that only read the records).
    With ``read_only``, an SQLite file that does not exist is refused instead of
    created (a mistyped URL must not leave a new empty database behind).
    """
    setting = database_setting(database_url)
    if read_only:
        missing = missing_sqlite_file(setting)
        if missing is not None:
            raise DatabaseNotFound(
                f"there is no database at {missing} (nothing was created); check --database-url "
                "or OTC_DATABASE_URL, or load something first (`otc load all --from DIR`)"
            )
    engine = connect_engine(setting)
    try:
        state = migrate.state(engine) if at_head else "head"
        if state == "empty":
            raise SchemaNotReady(
                f"the database {setting.masked} is empty; load something first "
                "(`otc load all --from DIR`)"
            )
        if state != "head":
            raise SchemaNotReady(
                f"the database schema of {setting.masked} is not at head ({state}); "
                "run `otc db upgrade` or `otc db adopt`"
            )
        yield engine
    finally:
        engine.dispose()


def check_view(view: str | None, *, allow_all: bool = False) -> None:
    """Refuse a view name that is not one of ours (a usage error, before any database work)."""
    if view is not None and not (allow_all and view == "all"):
        known_view(view, or_all=allow_all)


def _check_revision(revision: str) -> None:
    """Refuse a revision Alembic does not know (relative ones like -1 are Alembic's to judge)."""
    if revision in ("head", "heads", "base") or revision[:1] in "+-" or "@" in revision:
        return
    from alembic.util import CommandError

    try:
        found = migrate.script_directory().get_revisions(revision)
    except CommandError:
        found = ()
    if not found:
        raise NotFound(f"unknown revision {revision!r}; see `otc db history` for the revisions")


def db_upgrade(database_url: str | None, revision: str = "head") -> str:
    _check_revision(revision)
    # Schema changes wait for each other (and for a first load creating the schema).
    with _database(database_url) as engine, schema_lock(engine):
        return migrate.upgrade(engine, revision)


def _table_rows(conn: Connection) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Every table's row count and every (table, column), as the database has them now."""
    schema = schema_name(conn)
    inspector = inspect(conn)
    rows: dict[str, int] = {}
    columns: set[tuple[str, str]] = set()
    for name in inspector.get_table_names(schema=schema):
        # A column-less Table is enough to count its rows; names come from the database.
        table = Table(name, MetaData(), schema=schema)
        rows[name] = int(conn.execute(select(func.count()).select_from(table)).scalar_one())
        columns |= {(name, column["name"]) for column in inspector.get_columns(name, schema=schema)}
    return rows, columns


def downgrade_preview(database_url: str | None, revision: str) -> list[str]:
    """What downgrading to ``revision`` would remove: one line per table, rows or column.

    The downgrade is run for real inside a transaction that is then rolled back
    (PostgreSQL and SQLite both roll back DDL), so the answer is exact.
    """
    from alembic import command
    from alembic.util import CommandError

    _check_revision(revision)
    with _database(database_url) as engine, engine.connect() as conn:
        transaction = conn.begin()
        try:
            rows_before, columns_before = _table_rows(conn)
            command.downgrade(migrate.alembic_config(conn), revision)
            rows_after, columns_after = _table_rows(conn)
        except CommandError as exc:
            raise OtcError(
                f"cannot downgrade to {revision!r}: {exc}; see `otc db current` for where "
                "the database stands"
            ) from None
        finally:
            transaction.rollback()
    removed = []
    for table, count in sorted(rows_before.items()):
        if table == "alembic_version":
            continue
        if table not in rows_after:
            removed.append(f"table {table} ({count:,} rows)")
        elif rows_after[table] < count:
            removed.append(f"{count - rows_after[table]:,} rows of {table}")
    for table, column in sorted(columns_before - columns_after):
        if table in rows_after:
            removed.append(f"column {table}.{column} ({rows_before[table]:,} rows)")
    return removed


def db_stamp(database_url: str | None, revision: str) -> str:
    """Record ``revision`` as the database's without running any migration (Alembic's stamp)."""
    from alembic import command
    from alembic.util import CommandError

    _check_revision(revision)
    migrate.forget_states()
    with _database(database_url) as engine, engine.begin() as conn:
        before = ", ".join(migrate.current_revisions(conn)) or "none"
        try:
            command.stamp(migrate.alembic_config(conn), revision)
        except CommandError as exc:
            raise OtcError(f"cannot stamp {revision!r}: {exc}") from None
        after = ", ".join(migrate.current_revisions(conn)) or "none"
    return f"stamped revision {after} (was {before}); no migration ran"


def db_history() -> list[dict[str, Any]]:
    """Every revision this otc-pipeline knows, newest first (Alembic's history)."""
    scripts = migrate.script_directory()
    heads = set(scripts.get_heads())
    return [
        {
            "revision": script.revision,
            "down_revision": script.down_revision,
            "head": script.revision in heads,
            "message": (script.doc or "").strip(),
        }
        for script in scripts.walk_revisions()
    ]


def db_revisions(database_url: str | None) -> dict[str, Any]:
    """The database's revisions, the code's head and where the database stands."""
    with _database(database_url, read_only=True) as engine:
        with engine.connect() as conn:
            revisions = list(migrate.current_revisions(conn))
        return {
            "database": database_name(database_url),
            "revisions": revisions,
            "head": migrate.head_revision(),
            "state": migrate.state(engine),
            "message": migrate.describe_current(engine),
        }


def db_downgrade(database_url: str | None, revision: str) -> str:
    _check_revision(revision)
    with _database(database_url) as engine, schema_lock(engine):
        return migrate.downgrade(engine, revision)


def db_current(database_url: str | None) -> str:
    with _database(database_url, read_only=True) as engine:
        return f"{mask_url(engine.url)}: {migrate.describe_current(engine)}"


def db_adopt(database_url: str | None, *, dry_run: bool = False) -> str:
    with _database(database_url) as engine, schema_lock(engine):
        return migrate.adopt(engine, dry_run=dry_run)


# --- load and its records ----------------------------------------------------------------


def _reconcile_request(
    view: str, reconcile: bool, reconcile_range: str | None, max_removed: int | None
) -> Reconcile | None:
    """What --reconcile, --range and --max-removed ask for (None: no reconcile)."""
    if not reconcile:
        if reconcile_range is not None or max_removed is not None:
            raise ConfigError("--range and --max-removed go with --reconcile; add --reconcile")
        return None
    if view == "all":
        raise ConfigError(
            "--reconcile takes one view: each source is complete for its own range "
            "(e.g. `otc load timesheets --from api --reconcile`)"
        )
    if max_removed is not None and max_removed < 0:
        raise ConfigError("--max-removed must be 0 or more")
    chosen = parse_range(reconcile_range) if reconcile_range is not None else None
    return Reconcile(range=chosen, max_removed=max_removed)


def load(
    database_url: str | None,
    view: str,
    source: str,
    *,
    chunk_size: int,
    dry_run: bool,
    progress: pipeline.Progress | None = None,
    date_order: str | None = None,
    sheet: str | None = None,
    delimiter: str | None = None,
    encoding: str | None = None,
    wait_s: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
    reconcile: bool = False,
    reconcile_range: str | None = None,
    max_removed: int | None = None,
) -> list[pipeline.RunSummary]:
    """Load one view, or all, from a file, a folder of exports, or the OTC API."""
    options = ReadOptions(
        sheet=sheet, delimiter=delimiter, encoding=encoding, date_order=_date_order(date_order)
    ).checked()
    check_view(view, allow_all=True)
    request = _reconcile_request(view, reconcile, reconcile_range, max_removed)
    if not is_api(source):
        path = Path(source)
        if not path.exists():
            raise ExportNotFound(
                f"{path} does not exist; give a file (.json, .csv, .xlsx) or a folder to --from"
            )
        if view != "all" and path.is_dir():
            raise ConfigError(
                f"{path} is a folder; give the {view} export file, or use `otc load all --from {path}`"
            )
        if view == "all" and not path.is_dir():
            raise ConfigError(
                f"{path} is a file; `otc load all --from` takes a folder of exports, "
                "or load the file as its view (`otc load tickets --from FILE`)"
            )
    from . import monitoring

    monitoring.check_settings()
    between: Callable[[], None] | None = None
    if is_api(source):
        from .sources import api

        settings = api.ApiSettings.from_env()
        # Missing credentials are a configuration error (exit 2), found before any run opens.
        settings.require_credentials()

        def between() -> None:
            if progress is not None:
                progress.waiting("the API's pause between views", api.view_gap(settings))
            api.wait_between_views(settings)

    def run(bind: Engine | Connection) -> list[pipeline.RunSummary]:
        if view == "all":
            return pipeline.load_all(
                bind,
                source if is_api(source) else Path(source),
                chunk_size=chunk_size,
                dry_run=dry_run,
                progress=progress,
                between_views=between,
                options=options,
                wait_s=wait_s,
                on_wait=on_wait,
            )
        return [
            pipeline.load_view(
                bind,
                view,
                source if is_api(source) else Path(source),
                chunk_size=chunk_size,
                dry_run=dry_run,
                progress=progress,
                options=options,
                wait_s=wait_s,
                on_wait=on_wait,
                reconcile=request,
            )
        ]

    setting = database_setting(database_url)
    if dry_run and missing_sqlite_file(setting) is not None:
        # Previewing a first load must not create the file: the preview runs on an
        # in-memory database of the same dialect, at head and empty.
        if progress is not None:
            progress.note(f"{database_name(database_url)} does not exist: previewing a first load")
        scratch = make_engine("sqlite://")
        try:
            migrate.upgrade(scratch, "head")
            return run(scratch)
        finally:
            scratch.dispose()
    started = time.monotonic()
    with _database(database_url) as engine:
        if progress is not None:
            progress.note(
                f"connected to {database_name(database_url)} ({setting.origin}) "
                f"in {time.monotonic() - started:.2f} s"
            )
        if dry_run and migrate.state(engine) == "empty":
            # The schema is created inside a transaction rolled back with the preview
            # (PostgreSQL and SQLite both roll DDL back): nothing is left behind.
            from alembic import command

            if progress is not None:
                progress.note("the database is empty: previewing a first load")
            with engine.connect() as conn:
                transaction = conn.begin()
                try:
                    command.upgrade(migrate.alembic_config(conn), "head")
                    return run(conn)
                finally:
                    transaction.rollback()
        monitoring.load_started(view, source, engine.url)
        summaries = run(engine)
        # Once every view's transaction is over: log events, alerts, the metrics file.
        monitoring.after_load(engine, summaries)
        return summaries


def _date_order(given: str | None) -> str:
    """--date-order, else OTC_DATE_ORDER (dmy by default)."""
    if given is None:
        return date_order_setting()
    order = given.strip().lower()
    if order not in ("dmy", "mdy"):
        raise ConfigError(f"--date-order must be dmy or mdy, not {given!r}")
    return order


def _run_dict(run: EtlRun) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "view": run.view_name,
        "status": run.load_status,
        "source": run.source,
        "started": run.load_start,
        "ended": run.load_end,
        "duration_s": float(run.load_duration_seconds)
        if run.load_duration_seconds is not None
        else None,
        "fetched": run.records_fetched,
        "inserted": run.records_inserted,
        "updated": run.records_updated,
        "unchanged": run.records_unchanged,
        "duplicates": run.records_duplicates,
        "rejected": run.records_rejected,
        "stale": run.stale,
        "removed": run.removed,
        "latest_source_time": run.latest_source_time,
        "warnings": run.warnings.splitlines() if run.warnings else [],
        "error": run.error_message,
    }


def runs_history(database_url: str | None, view: str | None, limit: int) -> list[dict[str, Any]]:
    """The latest runs, newest first."""
    check_view(view)
    with _database(database_url, at_head=True, read_only=True) as engine:
        with Session(engine) as session:
            query = select(EtlRun).order_by(EtlRun.id.desc()).limit(limit)
            if view:
                query = query.where(EtlRun.view_name == view)
            return [_run_dict(r) for r in session.scalars(query)]


def rejects(database_url: str | None, run_id: int | None, limit: int) -> list[dict[str, Any]]:
    """Rejected rows of one run (default: the latest run that rejected any)."""
    with _database(database_url, at_head=True, read_only=True) as engine:
        with Session(engine) as session:
            if run_id is not None and session.get(EtlRun, run_id) is None:
                raise NotFound(f"there is no run {run_id}; see `otc runs` for the run ids")
            if run_id is None:
                run_id = session.scalar(select(func.max(EtlReject.run_id)))
                if run_id is None:
                    return []
            query = (
                select(EtlReject)
                .where(EtlReject.run_id == run_id)
                .order_by(EtlReject.source_position, EtlReject.id)
                .limit(limit)
            )
            return [
                {
                    "run_id": r.run_id,
                    "view": r.view_name,
                    "position": r.source_position,
                    "field": r.field,
                    "value": r.value,
                    "reason": r.reason,
                    "record": r.raw_record,
                }
                for r in session.scalars(query)
            ]


def status_check(
    database_url: str | None,
    *,
    warn_after: float | None = None,
    error_after: float | None = None,
) -> list[freshness.ViewFreshness]:
    """Every view's freshness against its thresholds (for `otc status --check`)."""
    with _database(database_url, at_head=True, read_only=True) as engine:
        with Session(engine) as session:
            return freshness.check(
                session, runs.utcnow(), warn_after=warn_after, error_after=error_after
            )


def rejects_summary(database_url: str | None, run_id: int | None) -> list[dict[str, Any]]:
    """Rejects grouped by view, field and reason, most frequent first.

    Of one run with ``run_id``; else of each view's latest run that rejected any.
    """
    with _database(database_url, at_head=True, read_only=True) as engine:
        with Session(engine) as session:
            if run_id is not None:
                run_ids = [run_id]
            else:
                latest = select(func.max(EtlReject.run_id)).group_by(EtlReject.view_name)
                run_ids = list(session.scalars(latest))
            if not run_ids:
                return []
            query = (
                select(
                    EtlReject.view_name,
                    EtlReject.run_id,
                    EtlReject.field,
                    EtlReject.reason,
                    func.count().label("count"),
                    func.min(EtlReject.source_position).label("first_position"),
                    func.min(EtlReject.value).label("example_value"),
                )
                .where(EtlReject.run_id.in_(run_ids))
                .group_by(EtlReject.view_name, EtlReject.run_id, EtlReject.field, EtlReject.reason)
                .order_by(EtlReject.view_name, func.count().desc(), EtlReject.field)
            )
            return [
                {
                    "view": row.view_name,
                    "run_id": row.run_id,
                    "field": row.field,
                    "reason": row.reason,
                    "count": row.count,
                    "first_position": row.first_position,
                    "example_value": row.example_value,
                }
                for row in session.execute(query)
            ]


def status(
    database_url: str | None,
    *,
    warn_after: float | None = None,
    error_after: float | None = None,
) -> list[dict[str, Any]]:
    """Per view: last run, last successful load and its age, rows, orphans, newest source time."""
    now = runs.utcnow()
    result = []
    with _database(database_url, at_head=True, read_only=True) as engine:
        with Session(engine) as session:
            judged = {
                v.view: v
                for v in freshness.check(
                    session, now, warn_after=warn_after, error_after=error_after
                )
            }
            for name in VIEW_ORDER:
                view = VIEWS[name]
                last = session.scalars(
                    select(EtlRun)
                    .where(EtlRun.view_name == name)
                    .order_by(EtlRun.id.desc())
                    .limit(1)
                ).first()
                good = session.scalars(
                    select(EtlRun)
                    .where(EtlRun.view_name == name, EtlRun.load_status.in_(COMMITTED))
                    .order_by(EtlRun.id.desc())
                    .limit(1)
                ).first()
                newest = session.scalar(
                    select(func.max(EtlRun.latest_source_time)).where(
                        EtlRun.view_name == name, EtlRun.load_status.in_(COMMITTED)
                    )
                )
                rows = session.scalar(select(func.count()).select_from(view.table)) or 0
                removal = _last_removal(session, name)
                last_success = good.load_end if good else None
                age = (now - last_success) if last_success else None
                result.append(
                    {
                        "view": name,
                        "rows": rows,
                        "orphans": _orphans(session, name),
                        "last_run_id": last.id if last else None,
                        "last_status": last.load_status if last else None,
                        "last_run_rejected": last.records_rejected if last else None,
                        "last_error": last.error_message if last else None,
                        "last_success": last_success,
                        "age_hours": round(age.total_seconds() / 3600, 1) if age else None,
                        "stale": age is None
                        or age > timedelta(hours=judged[name].warn_after_hours),
                        "freshness": judged[name].state,
                        "freshness_reason": judged[name].reason,
                        "latest_source_time": newest,
                        "last_removal_run_id": removal.id if removal else None,
                        "last_removal_at": _ended(removal) if removal else None,
                        "last_removal_rows": removal.removed if removal else None,
                    }
                )
    return result


def _last_removal(session: Session, view_name: str) -> EtlRun | None:
    """The view's latest committed run that moved rows out (as v_data_freshness shows it)."""
    return session.scalars(
        select(EtlRun)
        .where(
            EtlRun.view_name == view_name,
            EtlRun.removed > 0,
            EtlRun.load_status.in_(COMMITTED),
        )
        .order_by(EtlRun.id.desc())
        .limit(1)
    ).first()


def _ended(run: EtlRun) -> Any:
    return run.load_end if run.load_end is not None else run.load_start


def _orphans(session: Session, view_name: str) -> int | None:
    """Rows whose ticket is not in tickets (None for a view whose rows name no ticket)."""
    view = VIEWS[view_name]
    if view.ticket_reference is None:
        return None
    ref = view.table.c[view.ticket_reference]
    exists_ticket = select(Ticket.ticket_id).where(Ticket.ticket_id == ref).exists()
    return int(
        session.scalar(
            select(func.count()).select_from(view.table).where(ref.is_not(None), ~exists_ticket)
        )
        or 0
    )


# --- users (user_lookup) -----------------------------------------------------------------


def users_list(database_url: str | None) -> list[dict[str, Any]]:
    """Every user_lookup row, by short username."""
    from . import users

    with _database(database_url, at_head=True, read_only=True) as engine:
        with engine.connect() as conn:
            return users.list_users(conn)


def users_conflicts(database_url: str | None) -> list[dict[str, Any]]:
    """Short names with several full names (and the reverse), left as they were."""
    from . import users

    with _database(database_url, at_head=True, read_only=True) as engine:
        with engine.connect() as conn:
            return users.conflicts(conn)


def users_refresh(database_url: str | None) -> dict[str, Any]:
    """Fill user_lookup from timesheets in one transaction: added, adopted, conflicts, warnings."""
    from . import users

    with _database(database_url, at_head=True) as engine:
        # A timesheets load refreshes user_lookup too: never both at once.
        with runs.view_lock(engine, "timesheets") as conn, conn.begin():
            return users.refresh(conn)


def prune(
    database_url: str | None, older_than_hours: float, *, dry_run: bool, batch_size: int
) -> retention.PruneResult:
    """Remove runs older than the given age and their rejects (see retention.py)."""
    with _database(database_url, at_head=True) as engine:
        return retention.prune(
            engine,
            timedelta(hours=older_than_hours),
            runs.utcnow(),
            dry_run=dry_run,
            batch_size=batch_size,
        )


# --- removed rows (<table>_removed) ------------------------------------------------------


def _check_removal_run(conn: Connection, run_id: int) -> None:
    """Refuse a run id that neither etl_metadata nor any <table>_removed knows (exit 2)."""
    # A pruned run's removed rows stay: their run id still names them.
    if conn.execute(select(EtlRun.id).where(EtlRun.id == run_id)).first() is not None:
        return
    if removal.run_views(conn, run_id):
        return
    raise NotFound(f"there is no run {run_id}; see `otc runs` for the run ids")


def removed_list(
    database_url: str | None, run_id: int | None, view: str | None, limit: int
) -> dict[str, Any]:
    """Rows moved to <table>_removed: of one run (default: the latest run that removed any)."""
    check_view(view)
    with _database(database_url, at_head=True, read_only=True) as engine:
        with engine.connect() as conn:
            if run_id is not None:
                _check_removal_run(conn, run_id)
            rows = removal.removed_rows(conn, run_id, view=view, limit=limit)
    return {"run_id": rows[0]["run_id"] if rows else run_id, "removed": rows}


def removed_restore(
    database_url: str | None, run_id: int, *, dry_run: bool
) -> dict[str, removal.RestoreResult]:
    """Put a run's removed rows back (or, with dry_run, say what would go back), per view.

    One transaction holding the view lock of each view the run removed rows from,
    so no load of those views runs meanwhile; a held view is LoadLocked (exit 75).
    """
    from contextlib import ExitStack

    from .db import WRITER

    with _database(database_url, at_head=True, read_only=True) as engine:
        with engine.connect() as conn:
            _check_removal_run(conn, run_id)
            if dry_run:
                return removal.restore_preview(conn, run_id)
            views = removal.run_views(conn, run_id)
            conn.rollback()
            if not views:
                return {}
        with engine.connect() as conn, ExitStack() as locks:
            # On SQLite the write lock at BEGIN, as a load takes it.
            writer = conn.execution_options(**{WRITER: True})
            with writer.begin():
                # Taken inside the transaction (PostgreSQL: transaction-level advisory
                # locks), given up after the commit (SQLite: the lock files).
                for name in views:
                    locks.enter_context(runs.view_lock(writer, name))
                return removal.restore(writer, run_id)
