"""Database settings: precedence, defaults, masking, and the unreachable-database message."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from otc_pipeline.cli import app
from otc_pipeline.db import connect_engine
from otc_pipeline.errors import ConfigError, DatabaseUnreachable
from otc_pipeline.settings import database_setting, mask_url

PASSWORD = "s3cret-Pw"
LEGACY = {"OTC_PG_HOST": "db.example", "OTC_PG_PASSWORD": PASSWORD}
# Port 1 on loopback: refused at once, so the error path is fast.
UNREACHABLE = f"postgresql://otc:{PASSWORD}@127.0.0.1:1/servicedesk"


def test_option_beats_everything() -> None:
    env = {"OTC_DATABASE_URL": "sqlite:///env.db", **LEGACY}
    setting = database_setting("sqlite:///option.db", env)
    assert (setting.url.database, setting.origin) == ("option.db", "--database-url")


def test_environment_url_beats_legacy_variables() -> None:
    setting = database_setting(None, {"OTC_DATABASE_URL": "sqlite:///env.db", **LEGACY})
    assert (setting.url.database, setting.origin) == ("env.db", "OTC_DATABASE_URL")


def test_legacy_variables_with_their_defaults() -> None:
    setting = database_setting(None, {"OTC_PG_HOST": "db.example"})
    url = setting.url
    assert setting.origin == "OTC_PG_*"
    assert url.drivername == "postgresql+psycopg2"
    assert (url.host, url.port, url.database, url.username, url.password) == (
        "db.example",
        5432,
        "servicedesk",
        "servicedesk_user",
        None,
    )


def test_any_legacy_variable_switches_to_postgresql() -> None:
    setting = database_setting(None, {"OTC_PG_PORT": "5433", "OTC_PG_USER": "etl"})
    assert (setting.url.port, setting.url.username, setting.url.host) == (5433, "etl", "localhost")


def test_sqlite_default_in_the_current_directory() -> None:
    setting = database_setting(None, {})
    assert (str(setting.url), setting.origin) == ("sqlite:///otc.db", "default")


def test_bare_postgresql_url_uses_psycopg2() -> None:
    for given in ("postgresql://u@h/d", "postgres://u@h/d"):
        assert database_setting(given, {}).url.drivername == "postgresql+psycopg2"
    assert database_setting("postgresql+psycopg2://u@h/d", {}).url.drivername == (
        "postgresql+psycopg2"
    )


@pytest.mark.parametrize(
    ("option", "env", "fragment"),
    [
        ("mysql://u@h/d", {}, "PostgreSQL"),
        ("not a url", {}, "--database-url is not a database URL"),
        (None, {"OTC_PG_PORT": "fivefour"}, "OTC_PG_PORT must be a number"),
    ],
)
def test_bad_settings_are_config_errors(
    option: str | None, env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        database_setting(option, env)


def test_passwords_are_masked() -> None:
    assert PASSWORD not in mask_url(UNREACHABLE)
    assert "***" in mask_url(UNREACHABLE)
    setting = database_setting(None, LEGACY)
    assert PASSWORD not in setting.masked
    assert PASSWORD not in repr(setting.url)
    assert PASSWORD not in mask_url("::garbage::")


def test_unreachable_database_is_one_masked_line() -> None:
    setting = database_setting(UNREACHABLE, {})
    with pytest.raises(DatabaseUnreachable) as caught:
        connect_engine(setting)
    message = str(caught.value)
    assert PASSWORD not in message
    assert "\n" not in message
    assert message.startswith("cannot open database postgresql+psycopg2://otc:***@127.0.0.1:1/")
    assert "--database-url" in message


@pytest.mark.parametrize(
    ("args", "env", "variable"),
    [
        (["--database-url", UNREACHABLE], {}, "--database-url"),
        ([], {"OTC_DATABASE_URL": UNREACHABLE}, "OTC_DATABASE_URL"),
        (
            [],
            {"OTC_PG_HOST": "127.0.0.1", "OTC_PG_PORT": "1", "OTC_PG_PASSWORD": PASSWORD},
            "OTC_PG_HOST",
        ),
    ],
)
def test_otc_db_current_on_an_unreachable_database(
    args: list[str], env: dict[str, str], variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "OTC_DATABASE_URL",
        "OTC_PG_HOST",
        "OTC_PG_PORT",
        "OTC_PG_DATABASE",
        "OTC_PG_USER",
        "OTC_PG_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["db", "current", *args], env=env)
    assert result.exit_code == 1  # a database that refuses connections is a failure
    assert PASSWORD not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: cannot open database postgresql+psycopg2://")
    assert "***" in lines[0]
    assert variable in lines[0]
