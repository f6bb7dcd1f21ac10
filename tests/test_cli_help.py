"""Every command explains itself: `--help` works and says what the command does."""

from __future__ import annotations

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
