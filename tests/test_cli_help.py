"""Every command explains itself: `--help` works and says what the command does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from otc_pipeline.cli import app


def _commands() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found.append(path)
        if hasattr(command, "commands"):  # a group of subcommands
            for name, sub in command.commands.items():
                walk(sub, (*path, name))

    walk(root, ())
    return found


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "otc")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    assert (command.help or "").strip(), f"`otc {' '.join(path)}` has no help text"


def test_the_main_commands_are_there() -> None:
    names = {" ".join(p) for p in _commands()}
    assert {
        "load",
        "status",
        "runs",
        "rejects",
        "sample",
        "db upgrade",
        "db downgrade",
        "db current",
        "db adopt",
        "api check",
        "users list",
        "users conflicts",
        "users refresh",
    } <= names


def test_the_chunk_size_default_is_the_pipelines() -> None:
    import inspect

    from otc_pipeline import cli, pipeline

    default = inspect.signature(cli.load).parameters["chunk_size"].default
    assert default == pipeline.DEFAULT_CHUNK_SIZE


def _help_text(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def _leaf_commands() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    leaves = []
    for path in _commands():
        command: Any = root
        for name in path:
            command = command.commands[name]
        if not hasattr(command, "commands"):
            leaves.append(path)
    return leaves


def _params(path: tuple[str, ...]) -> set[str]:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {opt for p in command.params for opt in p.opts}


@pytest.mark.parametrize("path", _leaf_commands(), ids=" ".join)
def test_every_command_shows_an_example_and_its_environment(path: tuple[str, ...]) -> None:
    text = _help_text(path)
    assert "Examples:" in text and f"otc {' '.join(path)}" in text.split("Examples:")[1]
    if "--database-url" in _params(path):
        for name in ("OTC_DATABASE_URL", "OTC_PG_HOST", "OTC_PG_PASSWORD"):
            assert name in text, f"`otc {' '.join(path)} --help` does not mention {name}"
    if path in (("load",), ("api", "check")):
        for name in ("OTC_API_USER", "OTC_API_PASSWORD", "OTC_API_VIEW_GAP_S", "OTC_STATE_DIR"):
            assert name in text
    if path == ("load",):
        assert "OTC_TIMEZONE" in text


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "otc")
def test_flags_show_no_value_metavar_and_h_is_help(path: tuple[str, ...]) -> None:
    text = _help_text(path)
    assert "<bool>" not in text
    short = CliRunner().invoke(app, [*path, "-h"], terminal_width=200)
    assert short.exit_code == 0 and short.output == text


def test_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"otc {version('otc-pipeline')}\n"


def test_shell_completion_is_offered() -> None:
    text = _help_text(())
    assert "--install-completion" in text and "--show-completion" in text


@pytest.mark.parametrize("path", _leaf_commands(), ids=" ".join)
def test_global_options_are_accepted_after_the_command(path: tuple[str, ...]) -> None:
    assert {"--debug", "--quiet", "-q", "--verbose", "-v"} <= _params(path)


@pytest.mark.parametrize("path", _leaf_commands(), ids=" ".join)
def test_log_format_is_accepted_after_the_command(path: tuple[str, ...]) -> None:
    assert "--log-format" in _params(path)


def test_log_format_after_the_command_writes_json_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    url = f"sqlite:///{tmp_path / 'x.db'}"
    after = CliRunner().invoke(app, ["load", "nope", "--database-url", url, "--log-format", "json"])
    assert after.exit_code == 2
    (event,) = [json.loads(line) for line in after.stderr.splitlines()]
    assert event["event"] == "error" and "unknown view 'nope'" in event["message"]
    # Written after the command it wins over OTC_LOG_FORMAT and `otc`'s own option;
    # absent, it changes nothing they chose.
    monkeypatch.setenv("OTC_LOG_FORMAT", "json")
    text = CliRunner().invoke(app, ["load", "nope", "--database-url", url, "--log-format", "text"])
    assert text.stderr.startswith("Error: unknown view 'nope'")
    kept = CliRunner().invoke(app, ["--log-format", "text", "load", "nope", "--database-url", url])
    assert kept.stderr.startswith("Error: unknown view 'nope'")
    monkeypatch.delenv("OTC_LOG_FORMAT")
    bad = CliRunner().invoke(app, ["status", "--log-format", "xml"])
    assert bad.exit_code == 2 and "--log-format must be text or json, not 'xml'" in bad.stderr


def test_debug_after_the_command_shows_the_traceback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    after = CliRunner().invoke(app, ["runs", "--database-url", url, "--debug"])
    before = CliRunner().invoke(app, ["--debug", "runs", "--database-url", url])
    plain = CliRunner().invoke(app, ["runs", "--database-url", url])
    assert "Traceback" in after.output and "Traceback" in before.output
    assert "Traceback" not in plain.output  # the state of one invocation does not leak


def test_quiet_and_verbose_contradict() -> None:
    result = CliRunner().invoke(app, ["status", "-q", "-v"])
    assert result.exit_code == 2 and "--quiet and --verbose" in result.output


def test_database_url_option_shows_its_variable() -> None:
    assert "env var: OTC_DATABASE_URL" in _help_text(("status",))


def test_a_load_imports_no_optional_heavyweights() -> None:
    """`otc load` at head needs none of Alembic, Rich, httpx or prometheus_client.

    Each is imported where it is used (a migration, a live display, the API or an
    alert, OTC_METRICS_FILE): on this project's machine Alembic alone (with mako
    and pygments, imported and unloaded) cost a small `otc load all` 0.2-0.3 s.
    """
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import otc_pipeline.cli, otc_pipeline.commands, otc_pipeline.display\n"
        "import otc_pipeline.monitoring, otc_pipeline.pipeline, otc_pipeline.migrate\n"
        "otc_pipeline.migrate.head_revision()\n"
        "heavy = {'alembic', 'rich', 'httpx', 'prometheus_client', 'openpyxl', 'python_calamine'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_plain_values_are_coerced_as_typer_would() -> None:
    """The light coercion (no Pydantic) gives Typer's own value, or leaves it to Typer."""
    from typer._coercion import build_runtime_param

    from otc_pipeline import cli

    command: Any = typer.main.get_command(cli.app)
    params = [p for name in ("load", "runs", "sample") for p in command.commands[name].params]
    values = ["10000", "0", "-3", "+4", "1.5", ".5", "2.", "abc", "", " 7", "1e3", "nan", "inf"]
    values += ["1_000", "٣", 7, 0, 2.5, True, False]
    checked = 0
    for param in params:
        descriptor = param.type_descriptor
        if descriptor.annotation not in (str, int, float, bool):
            continue
        full = build_runtime_param(descriptor)
        for value in values:
            plain = cli._plain_value(value, descriptor)
            if plain is cli._UNSET:
                continue
            assert full._coerce_value(value, param, None) == plain
            assert type(full._coerce_value(value, param, None)) is type(plain)
            checked += 1
    assert checked > 20


def test_a_load_command_line_needs_no_pydantic() -> None:
    """Typer 0.29 would import Pydantic (~0.1 s) to check `otc load`'s plain options."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from otc_pipeline import cli\n"
        "try:\n"
        "    cli.app(['load', 'all', '--from', '/nonexistent', '--chunk-size', '500',\n"
        "             '--wait', '1.5', '--json', '-q'], standalone_mode=False)\n"
        "except Exception:\n"
        "    pass\n"
        "print('pydantic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
