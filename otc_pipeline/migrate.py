"""Schema migrations through Alembic, from any directory, without printing.

The Alembic scripts live in ``alembic/`` in a checkout and ship as
``otc_pipeline/migrations`` in the wheel. Each command here runs in one
transaction on the engine it is given and returns one line for the user.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import func, inspect, select
from sqlalchemy import table as table_clause
from sqlalchemy.engine import Connection, Engine

from . import adoption, models
from .db import connection, schema_name
from .errors import OtcError, SchemaNotReady

State = Literal["empty", "legacy", "behind", "head", "ahead/unknown"]

BASELINE = "0001_baseline"


def script_location() -> Path:
    """Where the Alembic scripts are: inside the installed package, or the checkout."""
    package = Path(models.__file__).resolve().parent
    for candidate in (package / "migrations", package.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise OtcError(
        f"the Alembic scripts are missing (looked in {package / 'migrations'} and "
        f"{package.parent / 'alembic'}); reinstall otc-pipeline"
    )


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config that needs no alembic.ini and prints nothing."""
    config = Config(stdout=io.StringIO())
    # Config values go through configparser interpolation: escape '%'.
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision the code expects (the single head)."""
    head = script_directory().get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise OtcError("no Alembic revisions found; reinstall otc-pipeline")
    return head


def current_revisions(conn: Connection) -> tuple[str, ...]:
    context = MigrationContext.configure(conn, opts={"version_table_schema": schema_name(conn)})
    return tuple(context.get_current_heads())


def _state(conn: Connection) -> State:
    revisions = current_revisions(conn)
    if not revisions:
        return "legacy" if _otc_tables(conn) else "empty"
    scripts = script_directory()
    known = {script.revision for script in scripts.walk_revisions()}
    if any(revision not in known for revision in revisions):
        return "ahead/unknown"
    return "head" if set(revisions) == set(scripts.get_heads()) else "behind"


def state(engine: Engine | Connection) -> State:
    """Where the database stands: empty, legacy (not adopted), behind, head, ahead/unknown."""
    with connection(engine) as conn:
        return _state(conn)


def _revision_text(conn: Connection) -> str:
    return ", ".join(current_revisions(conn)) or "none"


def describe_current(engine: Engine) -> str:
    """One line: the database's revision and what to do about it."""
    with engine.connect() as conn:
        current = _state(conn)
        revision = _revision_text(conn)
    head = head_revision()
    if current == "empty":
        return "empty database: run `otc db upgrade` to create the schema"
    if current == "legacy":
        return "legacy database without Alembic version: run `otc db adopt`"
    if current == "head":
        return f"revision {revision} (head)"
    if current == "behind":
        return f"revision {revision}, behind head {head}: run `otc db upgrade`"
    return (
        f"revision {revision} is unknown to this otc-pipeline (head is {head}): "
        "upgrade otc-pipeline"
    )


def _run(engine: Engine, action: str, revision: str) -> tuple[str, str]:
    """Run one Alembic command in one transaction; (revision before, revision after)."""
    with engine.begin() as conn:
        before = _revision_text(conn)
        config = alembic_config(conn)
        try:
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
        except CommandError as exc:
            raise OtcError(
                f"cannot {action} to {revision!r}: {exc}; see `otc db current` for where "
                "the database stands"
            ) from None
        after = _revision_text(conn)
    return before, after


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Upgrade the schema to ``revision``; an empty database gets the whole schema."""
    current = state(engine)
    if current == "legacy":
        raise SchemaNotReady(
            "this is a legacy servicedesk database without an Alembic version: "
            "run `otc db adopt` to take it over"
        )
    before, after = _run(engine, "upgrade", revision)
    where = f"{after} (head)" if after == head_revision() else after
    if before == after:
        return f"already at revision {where}"
    return f"upgraded from revision {before} to {where}"


def downgrade(engine: Engine, revision: str) -> str:
    """Downgrade the schema to ``revision`` (``base`` removes every otc table)."""
    before, after = _run(engine, "downgrade", revision)
    if before == after:
        return f"already at revision {after}"
    if after == "none":
        return f"downgraded from revision {before} to base: no otc tables left"
    return f"downgraded from revision {before} to {after}"


# --- adopt ------------------------------------------------------------------------------


def _otc_tables(conn: Connection) -> set[str]:
    names = set(inspect(conn).get_table_names(schema=schema_name(conn)))
    return names & {*adoption.LEGACY_TABLES, *adoption.MIGRATION_TABLES}


def _upgrades_after_baseline() -> list[str]:
    """The revisions from the baseline to head, oldest first."""
    scripts = script_directory()
    walked = [s.revision for s in scripts.iterate_revisions(head_revision(), BASELINE)]
    return [revision for revision in reversed(walked) if revision != BASELINE]


def adopt(engine: Engine, *, dry_run: bool = False) -> str:
    """Take over a legacy servicedesk database: recognise its state, stamp it, upgrade to head.

    State (a), before the clean-up: duplicates, no unique entry. State (b), after
    it: a plain UNIQUE entry (NULL tickets distinct) and perhaps hand-added
    etl_metadata columns. Either may hold only the columns the old loaders wrote,
    legacy types (converted when no value changes) and other tools' objects (left
    alone). Both reach head with every timesheet row kept: duplicates move to
    timesheets_dedup_archive. All in one transaction; anything adopt cannot convert
    stops it before it changes anything. With ``dry_run``, only the plan is returned.
    """
    current = state(engine)
    if current == "head":
        with engine.connect() as conn:
            return f"already at head (revision {_revision_text(conn)}): nothing to adopt"
    if current == "behind":
        with engine.connect() as conn:
            revision = _revision_text(conn)
        return (
            f"already managed by Alembic (revision {revision}, behind head): run `otc db upgrade`"
        )
    if current == "ahead/unknown":
        raise SchemaNotReady(
            f"the database is managed by Alembic at a revision this otc-pipeline does not "
            f"know ({describe_current(engine)})"
        )
    if current == "empty":
        raise SchemaNotReady(
            "no legacy servicedesk tables found, nothing to adopt: run `otc db upgrade` "
            "to create the schema"
        )

    upgrades = ", ".join(_upgrades_after_baseline())
    with engine.begin() as conn:
        adopting = adoption.plan(conn)
        if adopting.problems:
            raise SchemaNotReady(
                "cannot adopt this database, nothing was changed:\n  "
                + "\n  ".join(adopting.problems)
                + "\nthen run `otc db adopt` again"
            )
        if dry_run:
            conn.rollback()
            lines = adoption.describe(adopting, conn, done=False)
            return "\n".join(
                [
                    f"legacy database ({adopting.kind}); adopt would:",
                    *(f"  {line}" for line in lines),
                    f"  stamp revision {BASELINE}, then upgrade to head: {upgrades}",
                    "dry run: nothing was changed",
                ]
            )
        adoption.set_timesheet_indexes_aside(conn)
        adoption.apply(conn, adopting)
        config = alembic_config(conn)
        command.stamp(config, BASELINE)
        command.upgrade(config, "head")
        adoption.create_missing_indexes(conn)
        archived = _count(conn, "timesheets_dedup_archive")
        kept = _count(conn, "timesheets")
        if archived + kept != adopting.timesheets:  # pragma: no cover - the migrations' job
            raise OtcError(
                f"adopt would keep {kept} and archive {archived} of {adopting.timesheets} "
                "timesheets, which loses some; nothing was changed"
            )
        revision = _revision_text(conn)
        lines = adoption.describe(adopting, conn, done=True)
        if archived > adopting.duplicates:
            lines.append(
                f"{archived - adopting.duplicates:,} more timesheets archived by the later "
                "revisions (entries that became duplicates once their times were made "
                f"canonical), {kept:,} kept in all"
            )
    return "\n".join(
        [
            f"adopted legacy database ({adopting.kind}); now at revision {revision} (head):",
            *(f"  {line}" for line in lines),
            f"  stamped {BASELINE}, then upgraded: {upgrades}",
        ]
    )


def _count(conn: Connection, name: str) -> int:
    rows = select(func.count()).select_from(table_clause(name, schema=schema_name(conn)))
    return int(conn.execute(rows).scalar() or 0)
