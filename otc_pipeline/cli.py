"""The `otc` command line: parse options, call a command, print, map errors to exit codes.

No load logic lives here; see commands.py and pipeline.py.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .errors import OtcError

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
    """Print one ``Error:`` line and exit with ``code``."""
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
        except KeyboardInterrupt:
            fail("interrupted", 130)
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
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks on errors.")
    ] = False,
) -> None:
    """Load OTC tickets, timesheets and comments into the servicedesk database."""
    _state["debug"] = debug


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
def db_adopt(database_url: DatabaseUrlOption = None) -> None:
    """Take over a legacy servicedesk database: recognise its state, stamp it, upgrade to head."""
    from . import commands

    typer.echo(commands.db_adopt(database_url))


# --- otc load / status / runs / rejects (pipeline) -------------------------------------
# (filled in by the load work)

# --- otc sample -------------------------------------------------------------------------
# (filled in by the sources work)

# --- otc api ----------------------------------------------------------------------------
# (filled in by the API work)

# --- otc users --------------------------------------------------------------------------
# (filled in by the analyst-layer work)


def run() -> None:  # pragma: no cover - console entry point helper
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

__all__ = ["app", "Path"]
