"""One typed function per command; no Typer, no printing. Each returns what the CLI shows."""

from __future__ import annotations

from . import migrate
from .db import connect_engine
from .settings import database_setting


def db_upgrade(database_url: str | None, revision: str = "head") -> str:
    setting = database_setting(database_url)
    engine = connect_engine(setting)
    try:
        return migrate.upgrade(engine, revision)
    finally:
        engine.dispose()


def db_downgrade(database_url: str | None, revision: str) -> str:
    setting = database_setting(database_url)
    engine = connect_engine(setting)
    try:
        return migrate.downgrade(engine, revision)
    finally:
        engine.dispose()


def db_current(database_url: str | None) -> str:
    setting = database_setting(database_url)
    engine = connect_engine(setting)
    try:
        return f"{setting.masked}: {migrate.describe_current(engine)}"
    finally:
        engine.dispose()


def db_adopt(database_url: str | None) -> str:
    setting = database_setting(database_url)
    engine = connect_engine(setting)
    try:
        return migrate.adopt(engine)
    finally:
        engine.dispose()
