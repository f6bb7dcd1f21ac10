"""The `otc` command line: parse options, call a command, print, map errors to exit codes.

No load logic lives here; see commands.py and pipeline.py.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

from .proctitle import hide_password

hide_password()  # first of all: the command line is readable by anyone while otc runs

import typer  # noqa: E402 - after hide_password, which must come first

# Typer bundles its own click since 0.29 (pyproject pins it): the command classes below extend it.
from typer._click import Context, Parameter  # noqa: E402
from typer._click.core import ParameterSource  # noqa: E402
from typer._click.exceptions import ClickException, UsageError  # noqa: E402
from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param  # noqa: E402
from typer.core import TyperCommand, TyperGroup, TyperOption, _TyperParameter  # noqa: E402

from . import heartbeat  # noqa: E402
from .errors import ConfigError, OtcError  # noqa: E402
from .stopping import Stopped  # noqa: E402

# --- the shape every command shares ---------------------------------------------------
#
# Options that every command accepts, before or after its name (`otc --debug load …` and
# `otc load … --debug`), live in GLOBAL_OPTIONS below; a new one goes there. A command's own
# options are parameters of its function. Every command's help ends with examples and the
# environment variables it reads: pass `epilog=about([...], ENV_...)` to `@app.command`.

_state: dict[str, bool] = {"debug": False, "quiet": False, "verbose": False}

F = TypeVar("F", bound=Callable[..., Any])

DATABASE_ENV = (
    "OTC_DATABASE_URL",
    "OTC_PG_HOST",
    "OTC_PG_PORT",
    "OTC_PG_DATABASE",
    "OTC_PG_USER",
    "OTC_PG_PASSWORD",
)
API_ENV = (
    "OTC_API_BASE_URL",
    "OTC_API_USER",
    "OTC_API_PASSWORD",
    "OTC_API_MIN_INTERVAL_S",
    "OTC_API_MAX_PER_HOUR",
    "OTC_API_VIEW_GAP_S",
    "OTC_API_TIMEOUT_S",
    "OTC_API_RETRIES",
    "OTC_API_BACKOFF_S",
    "OTC_API_BACKOFF_MAX_S",
    "OTC_API_BREAKER_FAILURES",
    "OTC_API_BREAKER_COOLDOWN_S",
    "OTC_STATE_DIR",
)
STATUS_ENV = (
    *DATABASE_ENV,
    "OTC_STALE_WARN_HOURS",
    "OTC_STALE_ERROR_HOURS",
    "OTC_<VIEW>_STALE_WARN_HOURS",
    "OTC_<VIEW>_STALE_ERROR_HOURS",
)
MONITORING_ENV = (
    "OTC_LOG_FORMAT",
    "OTC_ALERT_WEBHOOK_URL",
    "OTC_ALERT_REPEAT",
    "OTC_HEARTBEAT_URL",
    "OTC_METRICS_FILE",
    "OTC_NOTIFY_TIMEOUT_S",
)
LOAD_ENV = (*DATABASE_ENV, "OTC_TIMEZONE", "OTC_DATE_ORDER", *API_ENV, *MONITORING_ENV)


def about(examples: Sequence[str], env: Sequence[str] = ()) -> str:
    """A command's epilog: its examples, then the environment variables it reads."""
    # "\b" keeps click and Typer from joining the lines of a paragraph.
    text = "\b\nExamples:\n" + "\n".join(f"  {example}" for example in examples)
    if env:
        text += "\n\nEnvironment: " + ", ".join(env) + "."
    return text


def _set_state(key: str) -> Callable[[typer.Context, typer.CallbackParam, bool], None]:
    def callback(ctx: typer.Context, param: typer.CallbackParam, value: bool) -> None:
        if value:
            _state[key] = True
        if _state["quiet"] and _state["verbose"]:
            raise UsageError("--quiet and --verbose contradict each other; give one")

    return callback


def _set_log_format(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> None:
    """`otc load … --log-format json`: after the command, it overrides `otc`'s own option.

    Only a value written on the command line counts here; OTC_LOG_FORMAT is read once,
    by `otc` itself, so an explicit `otc --log-format text load …` is not undone.
    """
    from . import logs

    if value is None or not param.name:
        return
    if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
        return
    if value not in logs.FORMATS:
        raise UsageError(f"--log-format must be text or json, not {value!r}", ctx)
    logs.configure(value)


def _global_options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show tracebacks on errors.",
            callback=_set_state("debug"),
            expose_value=False,
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print errors and warnings only (for cron).",
            callback=_set_state("quiet"),
            expose_value=False,
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Say what each stage is doing, with timings (on stderr).",
            callback=_set_state("verbose"),
            expose_value=False,
        ),
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            metavar="text|json",
            help="stderr as text, or json: one JSON object per event (default: OTC_LOG_FORMAT).",
            callback=_set_log_format,
            expose_value=False,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Only here so that Typer builds the global options' click parameters."""


def _build_global_options() -> list[Parameter]:
    holder = typer.Typer(add_completion=False)
    holder.command()(_global_options)
    command = typer.main.get_command(holder)
    return [p for p in command.params if p.name != "help"]


GLOBAL_OPTIONS = _build_global_options()


def _no_flag_metavars(params: list[Parameter]) -> None:
    """Flags take no value: show `--json`, not `--json <bool>`."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""


_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_UNSET = object()


def _plain_value(value: Any, descriptor: TypeDescriptor) -> Any:
    """Typer's coercion of a plain str, int, float or bool value, else _UNSET.

    Typer 0.29 checks every parameter's value with a Pydantic TypeAdapter: importing
    Pydantic and building the adapters cost each `otc load` ~0.1 s of CPU, measured
    on this project's machine. A value that plainly is what its parameter wants (the
    string of a str, the digits of an int within its bounds, a default) gives the
    very value Pydantic would; anything else, and so every error message, stays
    Typer's.
    """
    annotation, info = descriptor.annotation, descriptor.parameter_info
    if annotation is str:
        return value if type(value) is str else _UNSET
    if annotation is bool:
        return value if type(value) is bool else _UNSET
    if annotation is int:
        if type(value) is str and _INTEGER.fullmatch(value):
            value = int(value)
        number: int | float = value if type(value) is int else _UNSET  # type: ignore[assignment]
    elif annotation is float:
        if type(value) is str and _DECIMAL.fullmatch(value):
            value = float(value)
        number = float(value) if type(value) in (int, float) else _UNSET  # type: ignore[assignment]
    else:
        return _UNSET
    if number is _UNSET or number != number:  # not a number, or NaN: Typer judges
        return _UNSET
    if (info.min is not None and number < info.min) or (info.max is not None and number > info.max):
        return _UNSET  # out of bounds: Typer clamps it or explains the bounds
    return number


@dataclass(frozen=True)
class _PlainRuntimeParam(RuntimeParam):
    """Coerces plain values itself, and hands anything else to Typer's own coercion."""

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        plain = _plain_value(value, param.type_descriptor)
        if plain is not _UNSET:
            return plain
        return build_runtime_param(param.type_descriptor)._coerce_value(value, param, ctx)


def _coerce_plainly(params: list[Parameter]) -> None:
    """Give the plain str, int, float and bool parameters the light coercion above."""
    for param in params:
        if not isinstance(param, _TyperParameter) or param._runtime_param is not None:
            continue
        descriptor = param.type_descriptor
        info = descriptor.parameter_info
        plain = descriptor.annotation in (str, int, float, bool) and not (
            info.parser is not None
            or info.clamp
            or descriptor.is_choice
            or descriptor.is_path
            or descriptor.file_annotation is not None
            or param.nargs != 1
            or getattr(param, "multiple", False)
        )
        if plain:
            param._runtime_param = _PlainRuntimeParam(
                parameter_info=info, annotation=descriptor.annotation
            )


class OtcCommand(TyperCommand):
    """Every `otc` command: the global options appended to its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        own = {name for p in self.params for name in p.opts}
        self.params.extend(p for p in GLOBAL_OPTIONS if not own & set(p.opts))

    def get_params(self, ctx: Context) -> list[Parameter]:
        params = super().get_params(ctx)
        _no_flag_metavars(params)
        _coerce_plainly(params)
        return params


_ARGV_KEY = "otc.argv"  # the whole command line, in the root context's meta


def wants_json(ctx: Context | None) -> bool:
    """Whether `--json` is anywhere on the command line (also where it is a mistake)."""
    if ctx is None:
        return False
    return "--json" in ctx.find_root().meta.get(_ARGV_KEY, ())


def _show_click_error_as_json(error: ClickException, argv: Sequence[str]) -> None:
    """Click's own errors (unknown option, missing argument, bad value) under --json.

    Click prints them on stderr itself; a script reading stdout gets the same error
    object as every other error. `--` ends the options: a `--json` after it is text.
    """
    options = argv[: list(argv).index("--")] if "--" in argv else argv
    if "--json" not in options or getattr(error, "_otc_shown", False):
        return
    message = error.format_message()
    context = getattr(error, "ctx", None)
    if isinstance(error, UsageError) and context is not None:
        message = f"{message.rstrip('.')}; see `{context.command_path} --help`"
    print_json({"error": message, "exit_code": error.exit_code})
    error._otc_shown = True  # type: ignore[attr-defined]


class OtcGroup(TyperGroup):
    """`otc` and its command groups: flags shown without metavars; click's errors as JSON."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        params = super().get_params(ctx)
        _no_flag_metavars(params)
        _coerce_plainly(params)
        return params

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Context | None = None,
        **extra: Any,
    ) -> Context:
        argv = list(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except ClickException as error:
            if parent is None:  # `otc --bogus`: the command line's own options
                _show_click_error_as_json(error, argv)
            raise
        if parent is None:
            ctx.meta[_ARGV_KEY] = argv
        return ctx

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClickException as error:
            # Subcommands' parsing and callbacks run inside the root's invoke.
            if ctx.parent is None:
                _show_click_error_as_json(error, ctx.meta.get(_ARGV_KEY, ()))
            raise


class OtcTyper(typer.Typer):
    """A Typer whose commands are OtcCommands (so nobody has to remember `cls=`)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", OtcGroup)
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", OtcCommand)
        return super().command(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit:
            # The process ends here. What it built (SQLAlchemy, the models, Typer's
            # adapters: ~100k objects) needs no last collection: the interpreter's
            # collections at exit then skip it. Measured on a small `otc load all`:
            # 0.2 s less process time (~15%); objects are still released and atexit
            # handlers (logging, multiprocessing) still run.
            gc.freeze()
            raise


app = OtcTyper(
    name="otc",
    help="Keep the servicedesk database full, fresh and trustworthy.",
    add_completion=True,
    pretty_exceptions_enable=False,
)
db_app = OtcTyper(help="Create, upgrade and adopt the database schema.")
app.add_typer(db_app, name="db")


def _database_url_from_option_only(
    ctx: typer.Context, param: typer.CallbackParam, value: str | None
) -> str | None:
    # OTC_DATABASE_URL is shown in --help through envvar=, but settings.py resolves it, so
    # messages name the variable the URL really came from.
    if param.name and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT:
        return None
    return value


DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="The database (an SQLAlchemy URL); else OTC_PG_*, else sqlite:///otc.db.",
        envvar="OTC_DATABASE_URL",
        show_envvar=True,
        callback=_database_url_from_option_only,
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON (shapes in the README) instead of text.")
]


@contextmanager
def _importing() -> Iterator[None]:
    """Import the load's modules (SQLAlchemy, the models, the pipeline) without collections.

    Importing them makes ~100k long-lived objects, and the collector would walk them
    again and again while they are made; afterwards they are frozen, so the load's own
    collections skip them too. Measured: the imports take 0.08 s less CPU (~17%).
    Only a process that imports them here freezes (in a test session, the first call):
    whatever garbage exists at that moment is then never collected.
    """
    if "otc_pipeline.commands" in sys.modules:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()


def fail(message: str, code: int, *, as_json: bool = False) -> None:
    """Print one ``Error:`` line (a JSON event with --log-format json) and exit with ``code``.

    Under --json the error object goes to stdout as well.
    """
    from . import logs

    if as_json:
        print_json({"error": message, "exit_code": code})
    if logs.is_json():
        logs.event("error", message, level=logging.ERROR, exit_code=code)
    else:
        typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def output_closed() -> None:
    """The reader of our output went away (``otc runs | head -1``): stop quietly.

    Like a Unix tool killed by SIGPIPE: no message, exit 141 (128 + SIGPIPE).
    Later writes, and Python's flush at exit, go to /dev/null instead of
    failing again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass
    os.close(devnull)
    raise typer.Exit(128 + signal.SIGPIPE)


def handle_errors(func: F) -> F:
    """Turn OtcError (and unexpected errors) into one Error: line and an exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, UsageError):
            raise
        except BrokenPipeError:
            output_closed()
        except OtcError as exc:
            if _state["debug"]:
                traceback.print_exc()
            fail(str(exc), exc.exit_code, as_json=as_json)
        except Stopped as exc:
            fail(str(exc), exc.exit_code, as_json=as_json)
        except KeyboardInterrupt:
            fail("interrupted by the user", 130, as_json=as_json)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for a 3 a.m. run
            if _state["debug"]:
                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            fail(
                f"unexpected {type(exc).__name__}: {first} (run again with --debug for details)",
                1,
                as_json=as_json,
            )
        return None

    return wrapper  # type: ignore[return-value]


def _json_value(value: Any) -> Any:
    """JSON for what json cannot encode itself: times as ISO 8601 UTC with ``Z``."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(timespec="seconds") + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def print_json(obj: Any) -> None:
    """One JSON document (or one JSON Lines line) on stdout."""
    typer.echo(json.dumps(obj, default=_json_value, ensure_ascii=False))


def say(text: str) -> None:
    """Print a line of normal output (nothing under --quiet)."""
    if not _state["quiet"]:
        typer.echo(text)


def warn(text: str) -> None:
    """Print a warning on stderr (also under --quiet)."""
    typer.echo(f"Warning: {text}", err=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"otc {version('otc-pipeline')}")
        raise typer.Exit()


@app.callback(epilog=about(["otc load all --from exports/", "otc status", "otc load -h"]))
def main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print errors and warnings only (for cron).")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Say what each stage is doing, with timings."),
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="OTC_LOG_FORMAT",
            show_envvar=True,
            help="stderr as text, or json: one JSON object per event (run started, warnings, "
            "each view's result, errors) for journald and Loki.",
        ),
    ] = "text",
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Load OTC tickets, timesheets and comments into the servicedesk database."""
    from . import logs

    # One process may run several commands (tests do): start every one from the defaults.
    _state.update(debug=debug, quiet=quiet, verbose=verbose)
    if quiet and verbose:
        raise UsageError("--quiet and --verbose contradict each other; give one")
    if log_format not in logs.FORMATS:
        fail(f"--log-format must be text or json, not {log_format!r}", 2, as_json=wants_json(ctx))
    logs.configure(log_format)


# --- otc db ---------------------------------------------------------------------------


@db_app.command(
    "upgrade",
    epilog=about(
        ["otc db upgrade", "otc db upgrade 0003 --database-url sqlite:///otc.db"], DATABASE_ENV
    ),
)
@handle_errors
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upgrade the schema to REVISION (default: head); an empty database gets the whole schema."""
    from . import commands

    message = commands.db_upgrade(database_url, revision)
    _print_db_result(database_url, message, as_json)


@db_app.command(
    "downgrade",
    epilog=about(["otc db downgrade -1", "otc db downgrade 0003_etl_rejects"], DATABASE_ENV),
)
@handle_errors
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 or base.")],
    database_url: DatabaseUrlOption = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Remove tables and data without asking (for scripts)."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Downgrade the schema to REVISION; first shows what it removes and asks.

    A downgrade that drops tables, columns or rows lists them with their row counts
    and asks for confirmation on a terminal; without a terminal it refuses unless
    --yes is given.
    """
    from . import commands

    removed = commands.downgrade_preview(database_url, revision)
    if removed and not yes:
        database = commands.database_name(database_url)
        listing = "; ".join(removed)
        if not sys.stdin.isatty():
            raise ConfigError(
                f"downgrading {database} to {revision} would remove {listing}; "
                "not on a terminal, so nothing was changed: add --yes to go ahead"
            )
        typer.echo(f"Downgrading {database} to {revision} removes:", err=True)
        for line in removed:
            typer.echo(f"  {line}", err=True)
        if not typer.confirm("Remove them?", default=False, err=True):
            raise ConfigError("downgrade cancelled; nothing was changed")
    message = commands.db_downgrade(database_url, revision)
    _print_db_result(database_url, message, as_json)


@db_app.command("current", epilog=about(["otc db current", "otc db current --json"], DATABASE_ENV))
@handle_errors
def db_current(database_url: DatabaseUrlOption = None, as_json: JsonOption = False) -> None:
    """Show the database's schema revision and whether it is at head (never creates a database)."""
    from . import commands

    current = commands.db_revisions(database_url)
    if as_json:
        print_json(current)
        return
    say(f"{current['database']}: {current['message']}")


@db_app.command("history", epilog=about(["otc db history", "otc db history --json"]))
@handle_errors
def db_history(as_json: JsonOption = False) -> None:
    """Every schema revision this otc-pipeline knows, newest first (like `alembic history`)."""
    from . import commands

    revisions = commands.db_history()
    if as_json:
        print_json({"revisions": revisions})
        return
    for r in revisions:
        head = " (head)" if r["head"] else ""
        say(f"{r['down_revision'] or '<base>'} -> {r['revision']}{head}, {r['message']}")


@db_app.command(
    "stamp",
    epilog=about(["otc db stamp head", "otc db stamp 0003_etl_rejects"], DATABASE_ENV),
)
@handle_errors
def db_stamp(
    revision: Annotated[str, typer.Argument(help="The revision to record, e.g. head.")],
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Record REVISION as the database's without running migrations (like `alembic stamp`)."""
    from . import commands

    message = commands.db_stamp(database_url, revision)
    _print_db_result(database_url, message, as_json)


@db_app.command("adopt", epilog=about(["otc db adopt --dry-run", "otc db adopt"], DATABASE_ENV))
@handle_errors
def db_adopt(
    database_url: DatabaseUrlOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what adopt would change; change nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Take over a legacy servicedesk database: recognise its state, stamp it, upgrade to head."""
    from . import commands

    message = commands.db_adopt(database_url, dry_run=dry_run)
    _print_db_result(database_url, message, as_json)


def _print_db_result(database_url: str | None, message: str, as_json: bool) -> None:
    from . import commands

    if as_json:
        print_json({"database": commands.database_name(database_url), "message": message})
    else:
        say(message)


# --- otc load ---------------------------------------------------------------------------


def _summary_line(summary: Any, database: str | None = None) -> str:
    if summary.status == "failed":
        return f"{summary.view}: failed — {summary.error}"
    verb = "would load" if summary.status == "dry-run" else summary.status
    line = (
        f"{summary.view}: {verb} — {summary.fetched:,} fetched: {summary.inserted:,} inserted, "
        f"{summary.updated:,} updated, {summary.unchanged:,} unchanged, "
        f"{summary.duplicates:,} duplicates, "
        + (f"{summary.stale:,} stale (older than the rows held), " if summary.stale else "")
        + f"{summary.rejected:,} rejected"
        + (f"; {summary.removed:,} removed (`otc removed`)" if summary.removed else "")
        + f" in {summary.duration_s:.1f} s"
    )
    where = [f"run {summary.run_id}"] if summary.run_id is not None else []
    if database:
        where.append(f"in {database}")
    if where:
        line += f" ({' '.join(where)})"
    return line


def _warn_of_implicit_default(database_url: str | None) -> None:
    """Say so when a load goes to the SQLite default nobody asked for (cron, a typo)."""
    from . import commands
    from .settings import database_setting

    if database_setting(database_url).origin != "default" or sys.stdout.isatty():
        return
    path = commands.database_name(database_url).removeprefix("sqlite:///")
    warn(
        f"no database configured (--database-url, OTC_DATABASE_URL or OTC_PG_*): loading into "
        f"the default SQLite file {path}; pass --database-url sqlite:///otc.db to mean it"
    )


def _missing_views(view: str, source: str) -> dict[str, Any]:
    """`otc load all --from DIR`: the result of each view DIR holds no export of.

    Found before the load so that those lines can take their place among the others;
    a folder that cannot be read is left for the load itself to report.
    """
    from pathlib import Path

    from .errors import OtcError
    from .pipeline import find_view_files, missing_view
    from .views import VIEW_ORDER

    folder = Path(source)
    if view != "all" or source == "api" or not folder.is_dir():
        return {}
    try:
        found = find_view_files(folder)
    except (OtcError, OSError):
        return {}
    return {name: missing_view(name, folder) for name in VIEW_ORDER if name not in found}


def _reason_lines(summary: Any) -> list[str]:
    """The most frequent reject reasons, with their counts."""
    lines = []
    for r in summary.reject_reasons:
        where = f"{r['field']!r}: " if r["field"] else ""
        lines.append(f"  {r['count']:>7,} rejected: {where}{r['reason']}")
    return lines


@app.command(
    "load",
    epilog=about(
        [
            "otc load all                                  # every view from the API",
            "otc load all --from exports/                  # a folder of exports",
            "otc load timesheets --from history-2024.xlsx --sheet 2",
            "otc load timesheets --from us.csv --delimiter ';' --date-order mdy",
            "otc load tickets --from tickets.csv --dry-run # write nothing",
            "otc load all -q --database-url postgresql://etl@db/servicedesk",
        ],
        LOAD_ENV,
    ),
)
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
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            metavar="SECONDS",
            help="If another load of the view is running, wait up to SECONDS for it to "
            "end instead of exiting 75 at once.",
        ),
    ] = 0,
    reconcile: Annotated[
        bool,
        typer.Option(
            "--reconcile",
            help="The source is complete for its range (timesheets by TS-Date, comments by "
            "created time, tickets by TKT-Created Time): rows held in that range that it "
            "lacks were deleted or re-keyed in OTC, and move to <table>_removed "
            "(`otc removed`). Nothing moves if any record was rejected.",
        ),
    ] = False,
    reconcile_range: Annotated[
        str | None,
        typer.Option(
            "--range",
            metavar="FROM..TO",
            help="With --reconcile: the dates the source is complete for, both included "
            "(default: from its earliest to its latest).",
            show_default=False,
        ),
    ] = None,
    max_removed: Annotated[
        int | None,
        typer.Option(
            "--max-removed",
            metavar="ROWS",
            help="With --reconcile: fail the view, changing nothing, if more rows would "
            "leave (default: 5% of the rows in range).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Load a view (or all) into the database: exit 0 loaded, 3 loaded with rejects, 1 failed.

    Exit codes: 0 every view loaded; 3 loaded, but some rows were rejected; 1 a view
    failed (nothing of it was committed); 2 usage or configuration error; 75 refused
    for now, a later run clears it (another load holds the view — or give --wait —,
    the API breaker is open, the hourly request cap is reached); 128+N stopped by
    signal N (130 Ctrl-C, 143 SIGTERM; 141 the output was closed, as in `| head`).
    With all, the worst code wins: 1, then 75, then 3.
    """
    with _importing():
        from . import commands, logs
        from .display import LoadDisplay

    _warn_of_implicit_default(database_url)
    database = commands.database_name(database_url)
    shown: set[str] = set()  # views whose result is out
    # Results stream as each view ends, in the README's order (tickets, timesheets,
    # comments), because the views load in that order; a view missing from the folder
    # never ends, so its line goes out when the view after it does, not last.
    missing = _missing_views(view, source)

    def show_in_order(display: LoadDisplay, summary: Any) -> None:
        from .views import VIEW_ORDER

        if summary.view in VIEW_ORDER:
            for earlier in VIEW_ORDER[: VIEW_ORDER.index(summary.view)]:
                if earlier in missing and earlier not in shown:
                    show_result(display, missing[earlier])
        show_result(display, summary)

    def show_result(display: LoadDisplay, summary: Any) -> None:
        """A view's result, the moment it ends: a JSON line, or its lines of text."""
        shown.add(summary.view)
        if as_json:
            print_json({**summary.as_dict(), "database": database})
            return
        if summary.status == "failed":
            if not logs.is_json():  # else the view_result event on stderr says it
                display.result(f"Error: {summary.view}: {summary.error}", mark="✗", err=True)
        elif summary.status != "missing" and not _state["quiet"]:
            display.result(_summary_line(summary, database), mark="✓")
        if summary.status != "missing" and not _state["quiet"]:
            for line in _reason_lines(summary):
                display.result(line)
            if summary.rejected and summary.run_id is not None and summary.status != "failed":
                display.result(f"  see the rejected rows with `otc rejects --run {summary.run_id}`")
        if not logs.is_json():  # else view_warning events say them
            for warning in summary.warnings:
                display.result(f"warning: {summary.view}: {warning}", mark="!", err=True)

    live = not as_json and not _state["quiet"] and sys.stderr.isatty() and not logs.is_json()
    with LoadDisplay(live=live, verbose=_state["verbose"], show_result=show_in_order) as display:

        def waiting(message: str) -> None:
            """A wait for another load of the view: on stderr, and on the live display."""
            if not logs.is_json():  # else the view_waiting event on stderr says it
                display.result(message, mark="!", err=True)

        stopped: Stopped | None = None
        try:
            summaries = commands.load(
                database_url,
                view,
                source,
                chunk_size=chunk_size,
                dry_run=dry_run,
                progress=display,
                date_order=date_order,
                sheet=sheet,
                delimiter=delimiter,
                encoding=encoding,
                wait_s=wait,
                on_wait=waiting,
                reconcile=reconcile,
                reconcile_range=reconcile_range,
                max_removed=max_removed,
            )
        except Stopped as exc:
            # What ran before the signal is still reported: committed views stay committed.
            stopped, summaries = exc, exc.summaries
        for summary in summaries:  # views that never started: missing from the folder
            if summary.view not in shown:
                show_in_order(display, summary)
    if stopped is not None:
        if stopped.not_loaded:
            fail(f"{stopped}; not loaded: {', '.join(stopped.not_loaded)}", stopped.exit_code)
        elif not summaries:  # stopped before its run was opened
            fail(str(stopped), stopped.exit_code)
        raise typer.Exit(stopped.exit_code)
    from .pipeline import worst_exit_code

    raise typer.Exit(worst_exit_code(summaries))


# --- otc status / runs / rejects ---------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M"))
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@app.command(
    "status",
    epilog=about(
        [
            "otc status",
            "otc status --check --warn-after 26h --error-after 2d   # for monitoring",
            "otc status --json | jq '.views[] | select(.stale)'",
        ],
        STATUS_ENV,
    ),
)
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
            print_json(
                {
                    "database": commands.database_name(database_url),
                    "views": [view.as_dict() for view in judged],
                }
            )
        else:
            for view in judged:
                if view.state != "fresh":
                    say(view.line())
            if all(view.state == "fresh" for view in judged):
                say(f"all {len(judged)} views are fresh")
        from .freshness import exit_code

        raise typer.Exit(exit_code(judged))
    views = commands.status(database_url, warn_after=warn_hours, error_after=error_hours)
    if as_json:
        print_json({"database": commands.database_name(database_url), "views": views})
        return
    _print_status_table(commands.database_name(database_url), views)


def _age(hours: float | None) -> str:
    if hours is None:
        return "-"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def _print_status_table(database: str, views: list[dict[str, Any]]) -> None:
    """`otc status` as a table that fits 80 columns, times in UTC, trouble highlighted."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if _state["quiet"]:
        return
    console = Console(width=None if sys.stdout.isatty() else 80, highlight=False)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("view")
    table.add_column("rows", justify="right")
    table.add_column("orphans*", justify="right")
    table.add_column("last success (UTC)")
    table.add_column("age", justify="right")
    table.add_column("last run")
    table.add_column("state")
    for v in views:
        last_run = "-"
        if v["last_run_id"] is not None:
            last_run = f"{v['last_run_id']} {v['last_status']}"
            if v["last_run_rejected"]:
                last_run += f", {v['last_run_rejected']:,} rej"
        run_style = "bold red" if v["last_status"] == "failed" else ""
        if v["last_success"] is None:
            state = Text("NEVER LOADED", style="bold red")
        elif v["stale"]:
            state = Text("STALE", style="bold red")
        else:
            state = Text("fresh", style="green")
        table.add_row(
            v["view"],
            _fmt(v["rows"]),
            _fmt(v["orphans"]),
            _fmt(v["last_success"]),
            _age(v["age_hours"]),
            Text(last_run, style=run_style),
            state,
        )
    say(f"database: {database}")  # whole, never wrapped: it is what people copy
    console.print(table)
    for v in views:
        if v["last_removal_run_id"] is not None:
            run_id = v["last_removal_run_id"]
            console.print(
                f"{v['view']}: last removal {v['last_removal_rows']:,} rows at "
                f"{_fmt(v['last_removal_at'])} UTC (`otc removed --run {run_id}`)"
            )
    for v in views:
        if v["last_status"] == "failed" and v["last_error"]:
            console.print(Text(f"{v['view']} last run failed: {v['last_error']}", style="red"))
    if any(v["orphans"] for v in views):
        console.print(
            "* orphans: timesheets and comments whose ticket is not in tickets. The API's "
            "tickets view is a rolling 10-day window, so work logged on older tickets has "
            "no ticket row until a tickets history export is loaded; no row was lost."
        )


@app.command(
    "runs",
    epilog=about(
        ["otc runs", "otc runs --view timesheets --limit 5", "otc runs --json"], DATABASE_ENV
    ),
)
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
        print_json({"database": commands.database_name(database_url), "runs": history})
        return
    for r in history:
        say(
            f"run {r['run_id']:>5}  {r['view']:<10} {r['status']:<11} {_fmt(r['started'])}  "
            f"fetched {_fmt(r['fetched'])}  ins {_fmt(r['inserted'])}  upd {_fmt(r['updated'])}  "
            f"same {_fmt(r['unchanged'])}  dup {_fmt(r['duplicates'])}  rej {_fmt(r['rejected'])}  "
            f"stale {_fmt(r['stale'])}  rem {_fmt(r['removed'])}  {r['source'] or ''}"
        )
        if r["error"]:
            say(f"           error: {r['error']}")


def _record_object(text: str | None) -> Any:
    """A reject's raw record as the object it was (stored as JSON text)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


@app.command(
    "rejects",
    epilog=about(
        [
            "otc rejects",
            "otc rejects --run 42 --limit 10",
            "otc rejects --summary",
            "otc rejects --json",
        ],
        DATABASE_ENV,
    ),
)
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
            print_json({"database": commands.database_name(database_url), "groups": groups})
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
        print_json(
            {
                "database": commands.database_name(database_url),
                "run_id": rows[0]["run_id"] if rows else run,
                "rejects": [{**r, "record": _record_object(r["record"])} for r in rows],
            }
        )
        return
    if not rows:
        say(f"run {run} rejected no rows" if run is not None else "no rejected rows")
    for r in rows:
        where = f"{r['field']}={r['value']!r}" if r["field"] else "record"
        say(f"run {r['run_id']} {r['view']} position {r['position']}: {where}: {r['reason']}")


@app.command(
    "prune",
    epilog=about(
        [
            "otc prune --older-than 90d --dry-run   # count what would go",
            "otc prune --older-than 90d",
            "otc prune --older-than 12w --json",
        ],
        DATABASE_ENV,
    ),
)
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
    say(
        f"{verb} {result.runs:,} runs and {result.rejects:,} rejected rows older than "
        f"{hours / 24:g} days (before {result.cutoff:%Y-%m-%d %H:%M} UTC); "
        "the latest run of each view is kept"
    )


# --- otc removed ------------------------------------------------------------------------


class OtcListingGroup(OtcGroup):
    """A group that is a command too (`otc removed` lists, `otc removed restore` acts):
    it takes the global options, like every command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        own = {name for p in self.params for name in p.opts}
        self.params.extend(p for p in GLOBAL_OPTIONS if not own & set(p.opts))


removed_app = OtcTyper(cls=OtcListingGroup, invoke_without_command=True, no_args_is_help=False)
app.add_typer(removed_app, name="removed")


def _key_text(key: dict[str, Any]) -> str:
    return ", ".join(
        f"{column}={value!r}" if isinstance(value, str) else f"{column}={_fmt(value)}"
        for column, value in key.items()
    )


@removed_app.callback(
    epilog=about(
        [
            "otc removed                                 # the latest run that removed rows",
            "otc removed --run 42 --view timesheets --limit 20",
            "otc removed --run 42 --json",
            "otc removed restore --run 42 --dry-run",
        ],
        DATABASE_ENV,
    ),
)
@handle_errors
def removed(
    ctx: typer.Context,
    run: Annotated[
        int | None,
        typer.Option("--run", help="Run id (default: the latest run that removed rows)."),
    ] = None,
    view: Annotated[str | None, typer.Option("--view", help="Only this view.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many rows.")] = 100,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rows a reconcile moved out of the live tables into <table>_removed, with when and why.

    `otc load VIEW --reconcile` moves the rows of a range that the source no longer
    carries (deleted or re-keyed in OTC) to tickets_removed, timesheets_removed or
    comments_removed; nothing is deleted for good. This lists them: view, run, when,
    reason, key and the whole row. `otc removed restore --run N` puts them back.
    Never creates or changes a database.
    """
    if ctx.invoked_subcommand is not None:
        return
    from . import commands

    listed = commands.removed_list(database_url, run, view, limit)
    rows = listed["removed"]
    if as_json:
        print_json({"database": commands.database_name(database_url), **listed})
        return
    if not rows:
        say(f"run {run} removed no rows" if run is not None else "no removed rows")
        return
    for r in rows:
        say(
            f"run {r['run_id']} {r['view']} removed {_fmt(r['removed_at'])} UTC: "
            f"{_key_text(r['key'])}: {r['reason']}"
        )
    say(f"put them back with `otc removed restore --run {listed['run_id']}`")


@removed_app.command(
    "restore",
    epilog=about(
        [
            "otc removed restore --run 42 --dry-run   # say what would go back",
            "otc removed restore --run 42",
            "otc removed restore --run 42 --json",
        ],
        DATABASE_ENV,
    ),
)
@handle_errors
def removed_restore(
    run: Annotated[int, typer.Option("--run", help="The run whose removals go back.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be restored; change nothing.")
    ] = False,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Put the rows run RUN moved to <table>_removed back into the live tables.

    A row whose key the live table holds again (loaded since) is never overwritten:
    it stays in <table>_removed, counted as kept. One transaction holding each view's
    load lock: exit 75 while a load of the view runs. Restored rows leave
    <table>_removed; timesheets come back under their own ids.
    """
    from . import commands

    results = commands.removed_restore(database_url, run, dry_run=dry_run)
    if as_json:
        print_json(
            {
                "database": commands.database_name(database_url),
                "run_id": run,
                "dry_run": dry_run,
                "views": [result.as_dict() for result in results.values()],
            }
        )
        return
    if not results:
        say(f"run {run} has no removed rows left (it removed none, or they were restored)")
        return
    for result in results.values():
        table = f"{result.view}_removed"
        if dry_run:
            say(f"{result.view}: would restore {result.restored:,}, would keep {result.kept:,}")
        else:
            say(f"{result.view}: {result.restored:,} restored, {result.kept:,} kept in {table}")
        if result.kept:
            say(
                "  kept: the live table holds their key again (loaded since); "
                f"see `otc removed --run {run}`"
            )
    if dry_run:
        say("dry run: nothing was changed")


# --- otc sample -------------------------------------------------------------------------


@app.command(
    "sample",
    epilog=about(
        [
            "otc sample samples && otc load all --from samples",
            "otc sample big --timesheets 1000000 --format csv --seed 7",
            "otc sample samples --force                    # overwrite",
        ]
    ),
)
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
    as_json: JsonOption = False,
) -> None:
    """Write realistic synthetic OTC exports (tickets, timesheets, comments) into DIRECTORY."""
    from .errors import ConfigError
    from .sample import FORMATS, write_sample

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    counts = {"tickets": tickets, "timesheets": timesheets, "comments": comments}
    try:
        written = write_sample(
            directory,
            tickets=tickets,
            timesheets=timesheets,
            comments=comments,
            fmt=fmt,  # narrowed to SampleFormat by the check above
            seed=seed,
            force=force,
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot write the sample into {directory}: {exc.strerror or exc}; "
            "give a folder you can write to"
        ) from None
    if as_json:
        print_json(
            {
                "directory": str(directory.absolute()),
                "files": [
                    {"view": view, "path": str(path), "rows": counts[view]}
                    for view, path in written.items()
                ],
            }
        )
        return
    for view, path in written.items():
        say(f"{path}: {counts[view]:,} {view}")


# --- otc api ----------------------------------------------------------------------------

api_app = OtcTyper(help="Check the OTC API settings and connection.")
app.add_typer(api_app, name="api")


@api_app.command("check", epilog=about(["otc api check", "otc api check --ping"], API_ENV))
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
    as_json: JsonOption = False,
) -> None:
    """Show the OTC API settings, limits and circuit breaker; --ping calls the API once."""
    from .sources import api

    settings = api.ApiSettings.from_env()
    if as_json:
        print_json(_api_check_object(settings, ping))
        return
    for line in api.api_check(settings, ping=ping):
        say(line)


def _api_check_object(settings: Any, ping: bool) -> dict[str, Any]:
    """`otc api check --json`: the settings (password: set or not), the breaker, the ping."""
    import dataclasses
    import time

    from .sources import api

    def when(timestamp: float | None) -> datetime | None:
        return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)

    shown = {
        name: getattr(settings, name)
        for name in settings.__dataclass_fields__
        if name not in ("base_url", "password")
    }
    state = api.breaker_state(settings)
    breaker = dataclasses.asdict(state)
    breaker["open_until"] = when(state.open_until)
    breaker["last_request_at"] = when(state.last_request_at)
    result: dict[str, Any] = {
        "base_url": settings.masked_base_url,
        "password_set": settings.password is not None,
        **shown,
        "breaker": breaker,
        "state_file": settings.state_dir / api.STATE_FILE_NAME,
        "ping": None,
    }
    if ping:
        stats = api.FetchStats()
        started = time.monotonic()
        for _ in api.fetch_view(api.PING_VIEW, settings, stats):
            pass
        result["ping"] = {
            "view": api.PING_VIEW,
            "status_code": stats.status_code,
            "latency_s": stats.latency_s,
            "records": stats.records,
            "duration_s": round(time.monotonic() - started, 3),
        }
    return result


@api_app.command("reset", epilog=about(["otc api reset"], ("OTC_STATE_DIR",)))
@handle_errors
def api_reset() -> None:
    """Close the circuit breaker now (after fixing the cause), printing what it cleared."""
    from .sources import api

    for line in api.api_reset(api.ApiSettings.from_env()):
        say(line)


# --- otc users --------------------------------------------------------------------------

users_app = OtcTyper(help="user_lookup: short username <-> full name, filled from timesheets.")
app.add_typer(users_app, name="users")


@users_app.command("list", epilog=about(["otc users list", "otc users list --json"], DATABASE_ENV))
@handle_errors
def users_list(database_url: DatabaseUrlOption = None, as_json: JsonOption = False) -> None:
    """Every user_lookup row: short username, full name, team, source."""
    from . import commands

    rows = commands.users_list(database_url)
    if as_json:
        print_json({"database": commands.database_name(database_url), "users": rows})
        return
    if not rows:
        say("user_lookup is empty; load timesheets or run `otc users refresh`")
    for r in rows:
        say(
            f"{r['short_username']:<16} {r['full_name']:<32} {r['team'] or '-':<24} "
            f"{r['source'] or '-'}"
        )


@users_app.command(
    "conflicts", epilog=about(["otc users conflicts", "otc users conflicts --json"], DATABASE_ENV)
)
@handle_errors
def users_conflicts(database_url: DatabaseUrlOption = None, as_json: JsonOption = False) -> None:
    """Names seen with more than one partner; user_lookup leaves them as they were."""
    from . import commands
    from .users import describe_conflict

    found = commands.users_conflicts(database_url)
    if as_json:
        print_json({"database": commands.database_name(database_url), "conflicts": found})
        return
    if not found:
        say("no conflicts")
    for conflict in found:
        say(describe_conflict(conflict))


@users_app.command("refresh", epilog=about(["otc users refresh"], DATABASE_ENV))
@handle_errors
def users_refresh(database_url: DatabaseUrlOption = None, as_json: JsonOption = False) -> None:
    """Fill user_lookup from timesheet name pairs (manual rows are never changed)."""
    from . import commands

    result = commands.users_refresh(database_url)
    if as_json:
        print_json({"database": commands.database_name(database_url), **result})
        return
    say(
        f"user_lookup: {result['added']:,} added, {result['adopted']:,} adopted from other "
        f"automatic sources, {result['conflicts']:,} conflicts left as they were"
    )
    for warning in result["warnings"]:
        warn(warning) if _state["quiet"] else say(f"  warning: {warning}")


if __name__ == "__main__":  # pragma: no cover - `python -m otc_pipeline.cli`
    app()
