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


# --- read-only commands never create a database ------------------------------------------

READ_ONLY = [["status"], ["status", "--check"], ["runs"], ["rejects"], ["users", "list"], ["db", "current"]]


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_read_only_commands_leave_no_file(tmp_path: Path, args: list[str]) -> None:
    typo = tmp_path / "typo.db"
    result = otc(*args, "--database-url", f"sqlite:///{typo}")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: there is no database at {typo} (nothing was created)")
    assert not typo.exists()
    assert list(tmp_path.iterdir()) == []
