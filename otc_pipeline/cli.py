"""The `otc` command line: parse options, call a command, print, map errors to exit codes.

No load logic lives here; see commands.py and pipeline.py.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from . import heartbeat
from .errors import OtcError
from .stopping import Stopped

app = typer.Typer(
    name="otc",
    help="Keep the servicedesk database full, fresh and trustworthy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Create, upgrade and adopt the database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

_state: dict[str, bool] = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL; default OTC_DATABASE_URL, the OTC_PG_* variables, "
        "or sqlite:///otc.db.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def fail(message: str, code: int) -> None:
    """Print one ``Error:`` line (a JSON event with --log-format json) and exit with ``code``."""
    from . import logs

    if logs.is_json():
        logs.event("error", message, level=logging.ERROR, exit_code=code)
    else:
        typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn OtcError (and unexpected errors) into one Error: line and an exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except OtcError as exc:
            if _state["debug"]:
                traceback.print_exc()
            fail(str(exc), exc.exit_code)
        except Stopped as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted by the user", 130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for a 3 a.m. run
            if _state["debug"]:
                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            fail(
                f"unexpected {type(exc).__name__}: {first} (run again with --debug for details)",
                1,
            )
        return None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str))


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="OTC_LOG_FORMAT",
            help="stderr as text, or json: one JSON object per event (run started, warnings, "
            "each view's result, errors) for journald and Loki.",
        ),
    ] = "text",
) -> None:
    """Load OTC tickets, timesheets and comments into the servicedesk database."""
    from . import logs

    _state["debug"] = debug
    if log_format not in logs.FORMATS:
        fail(f"--log-format must be text or json, not {log_format!r}", 2)
    logs.configure(log_format)


# --- otc db ---------------------------------------------------------------------------


@db_app.command("upgrade")
@handle_errors
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    database_url: DatabaseUrlOption = None,
) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    from . import commands

    typer.echo(commands.db_upgrade(database_url, revision))


@db_app.command("downgrade")
@handle_errors
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 or base.")],
    database_url: DatabaseUrlOption = None,
) -> None:
    """Downgrade the schema to REVISION."""
    from . import commands

    typer.echo(commands.db_downgrade(database_url, revision))


@db_app.command("current")
@handle_errors
def db_current(database_url: DatabaseUrlOption = None) -> None:
    """Show the database's schema revision and whether it is at head."""
    from . import commands

    typer.echo(commands.db_current(database_url))


@db_app.command("adopt")
@handle_errors
def db_adopt(
    database_url: DatabaseUrlOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what adopt would change; change nothing.")
    ] = False,
) -> None:
    """Take over a legacy servicedesk database: recognise its state, stamp it, upgrade to head."""
    from . import commands

    typer.echo(commands.db_adopt(database_url, dry_run=dry_run))


# --- otc load / status / runs / rejects (pipeline) -------------------------------------


def _progress_printer() -> tuple[Any, Callable[[str, int], None]]:
    """A live "view: N records read" line on stderr (used only on a terminal)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,} records read"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(view: str, read: int) -> None:
        if view not in tasks:
            tasks[view] = progress.add_task(view, total=None)
        progress.update(tasks[view], completed=read)

    return progress, update


def _summary_line(summary: Any) -> str:
    if summary.status == "failed":
        return f"{summary.view}: failed — {summary.error}"
    verb = "would load" if summary.status == "dry-run" else summary.status
    line = (
        f"{summary.view}: {verb} — {summary.fetched:,} fetched: {summary.inserted:,} inserted, "
        f"{summary.updated:,} updated, {summary.unchanged:,} unchanged, "
        f"{summary.duplicates:,} duplicates, {summary.rejected:,} rejected "
        f"in {summary.duration_s:.1f} s"
    )
    if summary.run_id is not None:
        line += f" (run {summary.run_id})"
    return line


def _print_reasons(summary: Any) -> None:
    """The most frequent reject reasons, with their counts."""
    for r in summary.reject_reasons:
        where = f"{r['field']!r}: " if r["field"] else ""
        typer.echo(f"  {r['count']:>7,} rejected: {where}{r['reason']}")


@app.command("load")
@heartbeat.around
@handle_errors
def load(
    view: Annotated[str, typer.Argument(help="tickets, timesheets, comments or all.")],
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="'api', an export file (.json, .csv, .xlsx) or, for all, a folder "
            "holding tickets.*, timesheets.*, comments.*.",
        ),
    ] = "api",
    database_url: DatabaseUrlOption = None,
    chunk_size: Annotated[
        int,
        typer.Option(
            "--chunk-size",
            min=1,
            help="Rows per chunk: parsed, staged and merged (or compared) together.",
        ),
    ] = 10000,  # pipeline.DEFAULT_CHUNK_SIZE (not imported here: `otc --help` stays fast)
    as_json: JsonOption = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Parse and validate, report what would change, write nothing."
        ),
    ] = False,
    date_order: Annotated[
        str | None,
        typer.Option(
            "--date-order",
            help="How slashed dates read: dmy (day-first, the default) or mdy (month-first). "
            "Default: OTC_DATE_ORDER.",
            show_default=False,
        ),
    ] = None,
    sheet: Annotated[
        str | None,
        typer.Option(
            "--sheet",
            help="XLSX: the sheet to read, by name or number (default: the first sheet "
            "whose header holds the view's key fields).",
            show_default=False,
        ),
    ] = None,
    delimiter: Annotated[
        str | None,
        typer.Option(
            "--delimiter",
            help="CSV: the delimiter, e.g. ';' or tab (default: detected among , ; tab |).",
            show_default=False,
        ),
    ] = None,
    encoding: Annotated[
        str | None,
        typer.Option(
            "--encoding",
            help="CSV: the text encoding, e.g. cp1252 or latin-1 (default: UTF-8, or "
            "UTF-16 by its byte-order mark).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Load a view (or all) into the database: exit 0 loaded, 3 loaded with rejects, 1 failed.

    Exit codes: 0 every view loaded; 3 loaded, but some rows were rejected; 1 a view
    failed (nothing of it was committed); 2 usage or configuration error; 75 refused
    for now, a later run clears it (another load holds the view, the API breaker is
    open, the hourly request cap is reached); 128+N stopped by signal N (130 Ctrl-C,
    143 SIGTERM). With all, the worst code wins: 1, then 75, then 3.
    """
    from . import commands, logs

    show_progress = not as_json and sys.stderr.isatty() and not logs.is_json()
    bar, update = _progress_printer() if show_progress else (None, None)
    if bar is not None:
        bar.start()
    stopped: Stopped | None = None
    try:
        summaries = commands.load(
            database_url,
            view,
            source,
            chunk_size=chunk_size,
            dry_run=dry_run,
            progress=update,
            date_order=date_order,
            sheet=sheet,
            delimiter=delimiter,
            encoding=encoding,
        )
    except Stopped as exc:
        # What ran before the signal is still reported: committed views stay committed.
        stopped, summaries = exc, exc.summaries
    finally:
        if bar is not None:
            bar.stop()
    for summary in summaries:
        if as_json:
            print_json(summary.as_dict())
        elif summary.status == "missing":
            pass  # its warning follows
        elif summary.status == "failed":
            if not logs.is_json():  # else the view_result event on stderr says it
                typer.echo(f"Error: {summary.view}: {summary.error}", err=True)
            _print_reasons(summary)
        else:
            typer.echo(_summary_line(summary))
            _print_reasons(summary)
            if summary.rejected and summary.run_id is not None:
                typer.echo(f"  see the rejected rows with `otc rejects --run {summary.run_id}`")
        if not as_json and not logs.is_json():  # else view_warning events say them
            for warning in summary.warnings:
                typer.echo(f"warning: {summary.view}: {warning}", err=True)
    if stopped is not None:
        if stopped.not_loaded:
            typer.echo(f"Error: {stopped}; not loaded: {', '.join(stopped.not_loaded)}", err=True)
        elif not summaries:  # stopped before its run was opened
            typer.echo(f"Error: {stopped}", err=True)
        raise typer.Exit(stopped.exit_code)
    from .pipeline import worst_exit_code

    raise typer.Exit(worst_exit_code(summaries))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M"))
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@app.command("status")
@handle_errors
def status(
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Exit 1 when a view is past its error threshold or its last run failed; "
            "print one line per view that is not fresh.",
        ),
    ] = False,
    warn_after: Annotated[
        str | None,
        typer.Option(
            "--warn-after",
            help="Warn when the last successful load is older (26h, 90m, 2d; default "
            "OTC_<VIEW>_STALE_WARN_HOURS, OTC_STALE_WARN_HOURS or 26 h).",
            show_default=False,
        ),
    ] = None,
    error_after: Annotated[
        str | None,
        typer.Option(
            "--error-after",
            help="Fail the check when the last successful load is older (default "
            "OTC_<VIEW>_STALE_ERROR_HOURS, OTC_STALE_ERROR_HOURS or 50 h).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Per view: last run, last successful load and its age, rows, orphans, freshness."""
    from . import commands
    from .settings import parse_hours

    warn_hours = parse_hours(warn_after, "--warn-after") if warn_after else None
    error_hours = parse_hours(error_after, "--error-after") if error_after else None
    if check:
        judged = commands.status_check(database_url, warn_after=warn_hours, error_after=error_hours)
        if as_json:
            print_json([view.as_dict() for view in judged])
        else:
            for view in judged:
                if view.state != "fresh":
                    typer.echo(view.line())
            if all(view.state == "fresh" for view in judged):
                typer.echo(f"all {len(judged)} views are fresh")
        from .freshness import exit_code

        raise typer.Exit(exit_code(judged))
    views = commands.status(database_url, warn_after=warn_hours, error_after=error_hours)
    if as_json:
        print_json(views)
        return
    for v in views:
        age = "never loaded" if v["age_hours"] is None else f"{v['age_hours']} h ago"
        flag = "  STALE" if v["stale"] else ""
        typer.echo(
            f"{v['view']:<11} {_fmt(v['rows']):>10} rows  last success {_fmt(v['last_success'])} "
            f"({age}){flag}"
        )
        typer.echo(
            f"{'':<11} last run {_fmt(v['last_run_id'])}: {_fmt(v['last_status'])}, "
            f"{_fmt(v['last_run_rejected'])} rejected; orphans {_fmt(v['orphans'])}; "
            f"newest source time {_fmt(v['latest_source_time'])}"
        )
        if v["last_status"] == "failed" and v["last_error"]:
            typer.echo(f"{'':<11} last error: {v['last_error']}")


@app.command("runs")
@handle_errors
def runs(
    view: Annotated[str | None, typer.Option("--view", help="Only this view.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many runs.")] = 20,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """The history of loads, newest first."""
    from . import commands

    history = commands.runs_history(database_url, view, limit)
    if as_json:
        print_json(history)
        return
    for r in history:
        typer.echo(
            f"run {r['run_id']:>5}  {r['view']:<10} {r['status']:<11} {_fmt(r['started'])}  "
            f"fetched {_fmt(r['fetched'])}  ins {_fmt(r['inserted'])}  upd {_fmt(r['updated'])}  "
            f"same {_fmt(r['unchanged'])}  dup {_fmt(r['duplicates'])}  rej {_fmt(r['rejected'])}  "
            f"{r['source'] or ''}"
        )
        if r["error"]:
            typer.echo(f"           error: {r['error']}")


@app.command("rejects")
@handle_errors
def rejects(
    run: Annotated[
        int | None, typer.Option("--run", help="Run id (default: the latest run with rejects).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many rows.")] = 100,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
    summary: Annotated[
        bool,
        typer.Option(
            "--summary",
            help="Count the rejects by view, field and reason (without --run: each "
            "view's latest run with rejects).",
        ),
    ] = False,
) -> None:
    """Rejected rows of a run: source position, field, value and reason."""
    from . import commands

    if summary:
        groups = commands.rejects_summary(database_url, run)
        if as_json:
            print_json(groups)
            return
        if not groups:
            typer.echo("no rejected rows")
        for g in groups:
            where = repr(g["field"]) if g["field"] else "record"
            example = f" (first at {g['first_position']}"
            example += f", e.g. {g['example_value']!r})" if g["example_value"] is not None else ")"
            typer.echo(
                f"{g['view']} run {g['run_id']}: {g['count']:>7,} × {where}: {g['reason']}{example}"
            )
        return
    rows = commands.rejects(database_url, run, limit)
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no rejected rows")
    for r in rows:
        where = f"{r['field']}={r['value']!r}" if r["field"] else "record"
        typer.echo(
            f"run {r['run_id']} {r['view']} position {r['position']}: {where}: {r['reason']}"
        )


@app.command("prune")
@handle_errors
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="Remove runs (and their rejected rows) older than this: 90d, 12w, 36h; "
            "a bare number is days.",
            show_default=False,
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be removed; remove nothing.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Runs removed per transaction.")
    ] = 500,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove old runs from etl_metadata and their rejects; never the latest run of a view."""
    from . import commands
    from .settings import parse_hours

    hours = parse_hours(older_than, "--older-than", default_unit="d")
    result = commands.prune(database_url, hours, dry_run=dry_run, batch_size=batch_size)
    if as_json:
        print_json(result.as_dict())
        return
    verb = "would remove" if result.dry_run else "removed"
    typer.echo(
        f"{verb} {result.runs:,} runs and {result.rejects:,} rejected rows older than "
        f"{hours / 24:g} days (before {result.cutoff:%Y-%m-%d %H:%M} UTC); "
        "the latest run of each view is kept"
    )


# --- otc sample -------------------------------------------------------------------------


@app.command("sample")
@handle_errors
def sample(
    directory: Annotated[Path, typer.Argument(help="Folder to write the files into.")],
    tickets: Annotated[int, typer.Option("--tickets", min=0, help="Ticket rows.")] = 2000,
    timesheets: Annotated[int, typer.Option("--timesheets", min=0, help="Timesheet rows.")] = 10000,
    comments: Annotated[int, typer.Option("--comments", min=0, help="Comment rows.")] = 5000,
    fmt: Annotated[
        str,
        typer.Option("--format", help="File format: json, csv or xlsx.", case_sensitive=False),
    ] = "json",
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same files.")] = 1,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite exports already in DIRECTORY.")
    ] = False,
) -> None:
    """Write realistic synthetic OTC exports (tickets, timesheets, comments) into DIRECTORY."""
    from .errors import ConfigError
    from .sample import FORMATS, write_sample

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    counts = {"tickets": tickets, "timesheets": timesheets, "comments": comments}
    written = write_sample(
        directory,
        tickets=tickets,
        timesheets=timesheets,
        comments=comments,
        fmt=fmt,  # narrowed to SampleFormat by the check above
        seed=seed,
        force=force,
    )
    for view, path in written.items():
        typer.echo(f"{path}: {counts[view]:,} {view}")


# --- otc api ----------------------------------------------------------------------------

api_app = typer.Typer(help="Check the OTC API settings and connection.", no_args_is_help=True)
app.add_typer(api_app, name="api")


@api_app.command("check")
@handle_errors
def api_check(
    ping: Annotated[
        bool,
        typer.Option(
            "--ping",
            help="Also make one paced request (the comments view), counting records "
            "without loading them.",
        ),
    ] = False,
) -> None:
    """Show the OTC API settings, limits and circuit breaker; --ping calls the API once."""
    from .sources import api

    for line in api.api_check(api.ApiSettings.from_env(), ping=ping):
        typer.echo(line)


@api_app.command("reset")
@handle_errors
def api_reset() -> None:
    """Close the circuit breaker now (after fixing the cause), printing what it cleared."""
    from .sources import api

    for line in api.api_reset(api.ApiSettings.from_env()):
        typer.echo(line)


# --- otc users --------------------------------------------------------------------------

users_app = typer.Typer(
    help="user_lookup: short username <-> full name, filled from timesheets.",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")


@users_app.command("list")
@handle_errors
def users_list(database_url: DatabaseUrlOption = None, as_json: JsonOption = False) -> None:
    """Every user_lookup row: short username, full name, team, source."""
    from . import commands

    rows = commands.users_list(database_url)
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("user_lookup is empty; load timesheets or run `otc users refresh`")
    for r in rows:
        typer.echo(
            f"{r['short_username']:<16} {r['full_name']:<32} {r['team'] or '-':<24} "
            f"{r['source'] or '-'}"
        )


@users_app.command("conflicts")
@handle_errors
def users_conflicts(database_url: DatabaseUrlOption = None, as_json: JsonOption = False) -> None:
    """Names seen with more than one partner; user_lookup leaves them as they were."""
    from . import commands
    from .users import describe_conflict

    found = commands.users_conflicts(database_url)
    if as_json:
        print_json(found)
        return
    if not found:
        typer.echo("no conflicts")
    for conflict in found:
        typer.echo(describe_conflict(conflict))


@users_app.command("refresh")
@handle_errors
def users_refresh(database_url: DatabaseUrlOption = None) -> None:
    """Fill user_lookup from timesheet name pairs (manual rows are never changed)."""
    from . import commands

    result = commands.users_refresh(database_url)
    typer.echo(
        f"user_lookup: {result['added']:,} added, {result['adopted']:,} adopted from other "
        f"automatic sources, {result['conflicts']:,} conflicts left as they were"
    )
    for warning in result["warnings"]:
        typer.echo(f"  warning: {warning}")


if __name__ == "__main__":  # pragma: no cover - `python -m otc_pipeline.cli`
    app()
