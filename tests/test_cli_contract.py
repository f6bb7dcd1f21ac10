"""The command line's promises: one exit code per kind of outcome, errors under --json,
read-only commands that never create a database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from otc_pipeline.cli import app
from otc_pipeline.sample import write_sample

runner = CliRunner()


def otc(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def loaded(db_url: str, tmp_path: Path) -> str:
    folder = tmp_path / "exports"
    write_sample(folder, tickets=20, timesheets=30, comments=10, fmt="json", seed=3)
    assert otc("load", "all", "--from", str(folder), "--database-url", db_url).exit_code == 0
    return db_url


# --- exit codes: 2 for usage and configuration mistakes ---------------------------------

USAGE_MISTAKES: dict[str, tuple[list[str], str]] = {
    "unknown option": (["status", "--bogus"], "No such option"),
    "unknown view to load": (["load", "widgets", "--from", "."], "unknown view 'widgets'"),
    "unknown view in runs": (["runs", "--view", "bogus"], "unknown view 'bogus'"),
    "unknown run in rejects": (["rejects", "--run", "999"], "there is no run 999"),
    "unknown run in removed": (["removed", "--run", "999"], "there is no run 999"),
    "unknown run to restore": (["removed", "restore", "--run", "999"], "there is no run 999"),
    "unknown revision": (["db", "downgrade", "bogus_rev"], "unknown revision 'bogus_rev'"),
    "unknown upgrade revision": (["db", "upgrade", "bogus_rev"], "unknown revision 'bogus_rev'"),
    "missing export": (["load", "tickets", "--from", "nope.json"], "nope.json does not exist"),
    "a file for all": (["load", "all", "--from", "FILE"], "`otc load all --from` takes a folder"),
}


@pytest.mark.parametrize("case", sorted(USAGE_MISTAKES))
def test_usage_mistakes_exit_2(loaded: str, tmp_path: Path, case: str) -> None:
    args, message = USAGE_MISTAKES[case]
    export = tmp_path / "tickets.json"
    export.write_text("[]")
    args = [str(export) if a == "FILE" else a for a in args]
    if case != "unknown option":
        args = [*args, "--database-url", loaded]
    result = otc(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and "unexpected" not in result.output


def test_sample_into_an_impossible_folder_is_a_usage_error() -> None:
    result = otc("sample", "/proc/otc-sample-here")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: cannot write the sample into /proc/otc-sample-here")
    assert "unexpected" not in result.output


# --- exit codes: 1 for failures -----------------------------------------------------------


def test_a_database_refusing_connections_is_a_failure(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://otc@127.0.0.1:1/servicedesk"
    for args in (["status"], ["db", "current"], ["runs"]):
        result = otc(*args, "--database-url", url)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("Error: cannot open database")


def test_a_broken_export_is_a_failure(db_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "tickets.json"
    bad.write_text('[{"TKT-Ticket ID": 1}, {"TKT-Ticket')
    assert otc("load", "tickets", "--from", str(bad), "--database-url", db_url).exit_code == 1


# --- errors under --json ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "--view", "bogus", "--json"],
        ["rejects", "--run", "999", "--json"],
        ["load", "tickets", "--from", "nope.json", "--json"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_errors_under_json_are_an_object_on_stdout(loaded: str, args: list[str]) -> None:
    result = otc(*args, "--database-url", loaded)
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert set(error) == {"error", "exit_code"} and error["exit_code"] == 2
    assert result.stderr == f"Error: {error['error']}\n"


CLICK_MISTAKES = {
    "unknown option": (["status", "--bogus", "--json"], "No such option: --bogus"),
    "missing argument": (["load", "--json"], "Missing argument 'view'"),
    "bad value": (["load", "tickets", "--chunk-size", "x", "--json"], "'--chunk-size'"),
    "below the minimum": (["runs", "--limit", "0", "--json"], "'--limit'"),
    "--json before the command": (["--json", "status"], "No such option: --json"),
    "bad log format after the command": (
        ["status", "--log-format", "xml", "--json"],
        "--log-format must be text or json",
    ),
    "bad log format before the command": (
        ["--log-format", "xml", "status", "--json"],
        "--log-format must be text or json",
    ),
}


@pytest.mark.parametrize("case", sorted(CLICK_MISTAKES))
def test_click_usage_errors_under_json_are_the_error_object(case: str) -> None:
    args, message = CLICK_MISTAKES[case]
    result = otc(*args)
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)
    assert set(error) == {"error", "exit_code"} and error["exit_code"] == 2
    assert message in error["error"]
    assert message in " ".join(result.stderr.split())  # click's own message stays on stderr


def test_click_usage_errors_without_json_leave_stdout_empty() -> None:
    for args in (["status", "--bogus"], ["load"], ["status", "--", "--json"]):
        result = otc(*args)
        assert result.exit_code == 2 and result.stdout == "", (args, result.output)


# --- read-only commands never create a database ------------------------------------------

READ_ONLY = [
    ["status"],
    ["status", "--check"],
    ["runs"],
    ["rejects"],
    ["removed"],
    ["users", "list"],
    ["db", "current"],
]


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_read_only_commands_leave_no_file(tmp_path: Path, args: list[str]) -> None:
    typo = tmp_path / "typo.db"
    result = otc(*args, "--database-url", f"sqlite:///{typo}")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: there is no database at {typo} (nothing was created)")
    assert not typo.exists()
    assert list(tmp_path.iterdir()) == []


# --- --quiet, --verbose, the database named, the implicit default ------------------------


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    # 300 timesheets: enough for some to carry the sample's unknown field (2% of rows).
    write_sample(folder, tickets=20, timesheets=300, comments=10, fmt="json", seed=3)
    return folder


def test_quiet_prints_nothing_but_warnings(db_url: str, exports: Path) -> None:
    result = otc("load", "all", "--from", str(exports), "--database-url", db_url, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    # The sample carries a field the loader does not know: a warning, on stderr.
    assert "warning: timesheets: unknown fields ignored: 'TS-Legacy Flag'" in result.stderr
    assert otc("status", "--database-url", db_url, "--quiet").stdout == ""


def test_verbose_says_what_each_stage_does_with_timings(db_url: str, exports: Path) -> None:
    result = otc(
        "load", "tickets", "--from", str(exports / "tickets.json"), "--database-url", db_url, "-v"
    )
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert any(" s] connected to " in line for line in lines)
    assert any(" s] tickets: reading " in line for line in lines)
    assert any(" s] tickets: merging into the table" in line for line in lines)
    assert any(" s] tickets: success in " in line for line in lines)
    assert "tickets: success — 20 fetched" in result.stdout


def test_load_summaries_name_the_database(db_url: str, exports: Path) -> None:
    from otc_pipeline.commands import database_name

    result = otc("load", "all", "--from", str(exports), "--database-url", db_url)
    lines = [line for line in result.stdout.splitlines() if " — " in line]
    assert len(lines) == 3 and all(line.endswith(f" in {database_name(db_url)})") for line in lines)
    status = otc("status", "--database-url", db_url)
    assert status.stdout.startswith(f"database: {database_name(db_url)}\n")


def _no_database_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTC_DATABASE_URL",
        "OTC_PG_HOST",
        "OTC_PG_PORT",
        "OTC_PG_DATABASE",
        "OTC_PG_USER",
        "OTC_PG_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)


def test_the_implicit_sqlite_default_is_named_on_stderr(
    tmp_path: Path, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_database_settings(monkeypatch)
    monkeypatch.chdir(tmp_path)
    tickets = str(exports / "tickets.json")
    implicit = otc("load", "tickets", "--from", tickets)
    assert implicit.exit_code == 0, implicit.output
    assert implicit.stderr == (
        "Warning: no database configured (--database-url, OTC_DATABASE_URL or OTC_PG_*): "
        f"loading into the default SQLite file {tmp_path / 'otc.db'}; pass --database-url "
        "sqlite:///otc.db to mean it\n"
    )
    asked = otc("load", "tickets", "--from", tickets, "--database-url", "sqlite:///otc.db")
    assert asked.exit_code == 0 and asked.stderr == ""
    monkeypatch.setenv("OTC_DATABASE_URL", "sqlite:///otc.db")
    assert otc("load", "tickets", "--from", tickets).stderr == ""


# --- destructive and read-only commands are safe ----------------------------------------


def _tables(url: str) -> set[str]:
    from sqlalchemy import inspect

    from otc_pipeline.db import make_engine, schema_name

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names(schema=schema_name(conn)))
    finally:
        engine.dispose()


def test_downgrade_without_a_terminal_refuses_without_yes(loaded: str) -> None:
    before = _tables(loaded)
    result = otc("db", "downgrade", "base", "--database-url", loaded)
    assert result.exit_code == 2, result.output
    assert "would remove " in result.stderr and "table etl_metadata (3 rows)" in result.stderr
    assert "table tickets (20 rows)" in result.stderr
    assert "add --yes to go ahead" in result.stderr
    assert _tables(loaded) == before
    done = otc("db", "downgrade", "base", "--database-url", loaded, "--yes")
    assert done.exit_code == 0, done.output
    assert "tickets" not in _tables(loaded)


def test_a_downgrade_that_removes_nothing_needs_no_confirmation(loaded: str) -> None:
    to_0004 = otc("db", "downgrade", "0004_analyst_views", "--database-url", loaded, "-y")
    assert to_0004.exit_code == 0, to_0004.output
    # 0004 adds the analysts' SQL views only: no table, column or row goes.
    result = otc("db", "downgrade", "0003_etl_extension", "--database-url", loaded)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_dry_run_on_an_empty_or_missing_database_previews_a_first_load(
    empty_db_url: str, exports: Path, tmp_path: Path, fmt: str
) -> None:
    from otc_pipeline import migrate
    from otc_pipeline.db import make_engine

    folder = tmp_path / fmt
    write_sample(folder, tickets=20, timesheets=30, comments=10, fmt=fmt, seed=3)
    result = otc(
        "load", "all", "--from", str(folder), "--dry-run", "--database-url", empty_db_url, "--json"
    )
    assert result.exit_code == 0, result.output
    previews = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["status"] for p in previews] == ["dry-run"] * 3
    for p in previews:
        assert p["inserted"] + p["duplicates"] == p["fetched"] and p["updated"] == 0
    if empty_db_url.startswith("sqlite"):
        assert not Path(empty_db_url.removeprefix("sqlite:///")).exists()
    else:
        engine = make_engine(empty_db_url)
        assert migrate.state(engine) == "empty"
        engine.dispose()


# --- db history, stamp, current ---------------------------------------------------------


def test_db_history_stamp_and_current(loaded: str) -> None:
    from otc_pipeline.migrate import head_revision

    history = otc("db", "history")
    assert history.exit_code == 0
    assert history.stdout.splitlines()[0].endswith(
        f"-> {head_revision()} (head), " + history.stdout.splitlines()[0].split(", ", 1)[1]
    )
    assert "<base> -> 0001_baseline" in history.stdout
    stamped = otc("db", "stamp", "0003_etl_extension", "--database-url", loaded)
    assert stamped.exit_code == 0, stamped.output
    current = json.loads(otc("db", "current", "--database-url", loaded, "--json").stdout)
    assert current["revisions"] == ["0003_etl_extension"] and current["state"] == "behind"
    assert current["head"] == head_revision()
    assert otc("db", "stamp", "head", "--database-url", loaded).exit_code == 0
    text = otc("db", "current", "--database-url", loaded).stdout
    assert text.strip().endswith(f"revision {head_revision()} (head)")


# --- otc status -------------------------------------------------------------------------


def test_status_fits_80_columns_marks_utc_and_explains_orphans(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    write_sample(folder, tickets=20, timesheets=300, comments=100, fmt="json", seed=3)
    otc("load", "timesheets", "--from", str(folder / "timesheets.json"), "--database-url", db_url)
    result = otc("status", "--database-url", db_url)
    assert result.exit_code == 0, result.output
    first, *lines = result.stdout.splitlines()
    assert first.startswith("database: ")  # whole, however long the path
    assert max(len(line) for line in lines) <= 80
    assert "last success (UTC)" in result.stdout
    assert "NEVER LOADED" in result.stdout  # tickets and comments
    assert "* orphans: timesheets and comments whose ticket is not in tickets" in result.stdout


# --- one JSON shape per command, validated ------------------------------------------------
# The README's "JSON output" section documents these shapes; keep the two in step.

TIME = {"type": ["string", "null"], "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"}
COUNT = {"type": "integer", "minimum": 0}
MAYBE_COUNT = {"type": ["integer", "null"], "minimum": 0}
TEXT = {"type": "string"}
MAYBE_TEXT = {"type": ["string", "null"]}


def _object(properties: dict[str, Any], *, closed: bool = True) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": not closed,
    }


def _listing(key: str, item: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return _object({"database": TEXT, key: {"type": "array", "items": item}, **extra})


LOAD_LINE = _object(
    {
        "view": TEXT,
        "run_id": MAYBE_COUNT,
        "status": {"enum": ["success", "partial", "failed", "dry-run"]},
        "source": TEXT,
        "fetched": COUNT,
        "inserted": COUNT,
        "updated": COUNT,
        "unchanged": COUNT,
        "duplicates": COUNT,
        "stale": COUNT,
        "rejected": COUNT,
        "removed": COUNT,
        "duration_s": {"type": "number"},
        "database": TEXT,
    },
    closed=False,  # "error" and "warnings" when there are any
)
RUN = _object(
    {
        "run_id": COUNT,
        "view": TEXT,
        "status": TEXT,
        "source": MAYBE_TEXT,
        "started": TIME,
        "ended": TIME,
        "duration_s": {"type": ["number", "null"]},
        "fetched": MAYBE_COUNT,
        "inserted": MAYBE_COUNT,
        "updated": MAYBE_COUNT,
        "unchanged": MAYBE_COUNT,
        "duplicates": MAYBE_COUNT,
        "rejected": MAYBE_COUNT,
        "stale": COUNT,
        "removed": COUNT,
        "latest_source_time": TIME,
        "warnings": {"type": "array", "items": TEXT},
        "error": MAYBE_TEXT,
    }
)
STATUS_VIEW = _object(
    {
        "view": TEXT,
        "rows": COUNT,
        "orphans": MAYBE_COUNT,
        "last_run_id": MAYBE_COUNT,
        "last_status": MAYBE_TEXT,
        "last_run_rejected": MAYBE_COUNT,
        "last_error": MAYBE_TEXT,
        "last_success": TIME,
        "age_hours": {"type": ["number", "null"]},
        "stale": {"type": "boolean"},
        "latest_source_time": TIME,
        "last_removal_run_id": MAYBE_COUNT,
        "last_removal_at": TIME,
        "last_removal_rows": MAYBE_COUNT,
    },
    closed=False,  # the freshness verdict rides along
)
REJECT = _object(
    {
        "run_id": COUNT,
        "view": TEXT,
        "position": COUNT,
        "field": MAYBE_TEXT,
        "value": MAYBE_TEXT,
        "reason": TEXT,
        "record": {"type": ["object", "null"]},
    }
)
REMOVED_ROW = _object(
    {
        "view": TEXT,
        "run_id": COUNT,
        "removed_id": COUNT,
        "removed_at": TIME,
        "reason": TEXT,
        "key": {"type": "object"},
        "row": {"type": "object"},
    }
)
USER = {"type": "object", "required": ["short_username", "full_name"]}
DB_RESULT = _object({"database": TEXT, "message": TEXT})
SCHEMAS: dict[str, dict[str, Any]] = {
    "status": _listing("views", STATUS_VIEW),
    "status --check": _listing("views", {"type": "object", "required": ["view", "state"]}),
    "runs": _listing("runs", RUN),
    "rejects": _listing("rejects", REJECT, run_id=MAYBE_COUNT),
    "removed": _listing("removed", REMOVED_ROW, run_id=MAYBE_COUNT),
    "users list": _listing("users", USER),
    "users conflicts": _listing("conflicts", {"type": "object"}),
    "users refresh": _object(
        {
            "database": TEXT,
            "added": COUNT,
            "adopted": COUNT,
            "conflicts": COUNT,
            "warnings": {"type": "array", "items": TEXT},
        }
    ),
    "db current": _object(
        {
            "database": TEXT,
            "revisions": {"type": "array", "items": TEXT},
            "head": TEXT,
            "state": TEXT,
            "message": TEXT,
        }
    ),
    "db upgrade": DB_RESULT,
    "db stamp head": DB_RESULT,
    "db history": _object(
        {
            "revisions": {
                "type": "array",
                "items": _object(
                    {
                        "revision": TEXT,
                        "down_revision": MAYBE_TEXT,
                        "head": {"type": "boolean"},
                        "message": TEXT,
                    }
                ),
            }
        }
    ),
    "sample": _object(
        {
            "directory": TEXT,
            "files": {
                "type": "array",
                "items": _object({"view": TEXT, "path": TEXT, "rows": COUNT}),
            },
        }
    ),
    "api check": {"type": "object", "required": ["base_url", "password_set", "breaker", "ping"]},
}
ERROR = _object({"error": TEXT, "exit_code": {"type": "integer"}})


@pytest.fixture
def with_rejects(db_url: str, tmp_path: Path) -> str:
    folder = tmp_path / "bad"
    write_sample(folder, tickets=200, timesheets=30, comments=10, fmt="csv", seed=5, bad_share=0.05)
    assert otc("load", "all", "--from", str(folder), "--database-url", db_url).exit_code == 3
    return db_url


@pytest.mark.parametrize("command", sorted(SCHEMAS))
def test_json_shapes(with_rejects: str, tmp_path: Path, command: str) -> None:
    import jsonschema

    args = command.split()
    if command == "sample":
        args += [str(tmp_path / "s"), "--tickets", "3", "--timesheets", "3", "--comments", "3"]
    elif command not in ("db history", "api check"):
        args += ["--database-url", with_rejects]
    result = otc(*args, "--json")
    assert result.exit_code in (0, 1), result.output  # status --check fails: never loaded views
    document = json.loads(result.stdout)
    jsonschema.validate(document, SCHEMAS[command])
    if command == "rejects":
        assert document["rejects"] and isinstance(document["rejects"][0]["record"], dict)


@pytest.mark.parametrize("absent", ["tickets", "timesheets", "comments"])
def test_load_all_json_lines_come_in_the_views_order(
    db_url: str, exports: Path, absent: str
) -> None:
    for export in exports.glob(f"{absent}.*"):
        export.unlink()
    result = otc("load", "all", "--from", str(exports), "--database-url", db_url, "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["view"] for line in lines] == ["tickets", "timesheets", "comments"]
    assert [line["view"] for line in lines if line["status"] == "missing"] == [absent]


def test_json_lines_of_load_and_the_error_object(db_url: str, exports: Path) -> None:
    import jsonschema

    result = otc("load", "all", "--from", str(exports), "--database-url", db_url, "--json")
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        jsonschema.validate(json.loads(line), LOAD_LINE)
    error = otc("runs", "--view", "nope", "--json", "--database-url", db_url)
    jsonschema.validate(json.loads(error.stdout), ERROR)
