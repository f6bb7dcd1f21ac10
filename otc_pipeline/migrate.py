"""Schema migrations through Alembic, from any directory, without printing.

The Alembic scripts live in ``alembic/`` in a checkout and ship as
``otc_pipeline/migrations`` in the wheel. Each command here runs in one
transaction on the engine it is given and returns one line for the user.
"""

from __future__ import annotations

import ast
import io
import re
import weakref
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import column as column_clause
from sqlalchemy import func, inspect, select
from sqlalchemy import table as table_clause
from sqlalchemy.engine import Connection, Engine

from . import models
from .db import connection, schema_name
from .errors import OtcError, SchemaNotReady

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Alembic is imported only by what runs a migration or reads the scripts' documents:
# importing it (with mako and pygments) and unloading it at exit cost a load at head
# 0.2-0.3 s of a 1.2 s `otc load all` of a small folder, measured on this project's
# machine. A load only needs the revisions, read here from the scripts' source.

State = Literal["empty", "legacy", "behind", "head", "ahead/unknown"]

BASELINE = "0001_baseline"
VERSION_TABLE = "alembic_version"  # Alembic's default, which alembic/env.py keeps


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
    from alembic.config import Config

    config = Config(stdout=io.StringIO())
    # Config values go through configparser interpolation: escape '%'.
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


_NAMES = ("revision", "down_revision", "branch_labels", "depends_on")
# A top-level `name = value` or `name: type = value` line of a migration script.
_ASSIGNMENT = re.compile(
    r"^(" + "|".join(_NAMES) + r")\s*(?::[^=\n]*)?=\s*(.*?)\s*(?:#.*)?$", re.MULTILINE
)


def _literal(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return ...  # not a one-line literal: only Alembic can say


def _script_revisions(path: Path) -> tuple[str, tuple[str, ...]] | None:
    """A migration script's (revision, down revisions), read from its source, not run.

    None when the script is not the plain kind (no one-line literal ``revision``, or
    branch labels or ``depends_on``, whose meaning is Alembic's to work out).
    Matching the four assignments (0.1 ms a script) rather than parsing the whole
    script (ast: 14 ms for the five shipped ones) keeps this out of the fixed cost.
    """
    found = {m[1]: _literal(m[2]) for m in _ASSIGNMENT.finditer(path.read_text("utf-8"))}
    revision, down = found.get("revision"), found.get("down_revision", ...)
    if not isinstance(revision, str):
        return None
    if found.get("branch_labels") is not None or found.get("depends_on") is not None:
        return None
    if down is None:
        return revision, ()
    if isinstance(down, str):
        return revision, (down,)
    if isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
        return revision, tuple(down)
    return None


@cache
def known_revisions() -> tuple[frozenset[str], frozenset[str]]:
    """Every revision the scripts define, and the heads among them; read once a process.

    Reading the scripts' source (under 4 ms for all of them) replaces Alembic's
    ScriptDirectory, which imports and runs every script each time it is built:
    ~9 ms a view, and the import of Alembic itself, in a load of three views.
    Anything unusual in a script (branch labels, depends_on, a computed revision)
    leaves the answer to ScriptDirectory; tests/test_migrations.py checks that both
    agree on the shipped scripts.
    """
    versions = script_location() / "versions"
    parents: dict[str, tuple[str, ...]] = {}
    for path in sorted(versions.glob("*.py")):
        if path.name.startswith((".#", "__init__")):  # as Alembic skips them
            continue
        read = _script_revisions(path)
        if read is None or read[0] in parents:
            return _known_by_alembic()
        parents[read[0]] = read[1]
    if not parents or any(d not in parents for downs in parents.values() for d in downs):
        return _known_by_alembic()
    below = {d for downs in parents.values() for d in downs}
    return frozenset(parents), frozenset(parents.keys() - below)


def _known_by_alembic() -> tuple[frozenset[str], frozenset[str]]:
    scripts = script_directory()
    known = frozenset(script.revision for script in scripts.walk_revisions())
    return known, frozenset(scripts.get_heads())


def head_revision() -> str:
    """The revision the code expects (the single head)."""
    heads = known_revisions()[1]
    if len(heads) != 1:  # pragma: no cover - the package always ships one head
        raise OtcError("no single Alembic head revision found; reinstall otc-pipeline")
    return next(iter(heads))


def current_revisions(conn: Connection) -> tuple[str, ...]:
    """The database's revisions, as Alembic's MigrationContext.get_current_heads reads them."""
    schema = schema_name(conn)
    if not inspect(conn).has_table(VERSION_TABLE, schema=schema):
        return ()
    version = table_clause(VERSION_TABLE, column_clause("version_num"), schema=schema)
    return tuple(conn.execute(select(version.c.version_num)).scalars())


def _state(conn: Connection) -> State:
    revisions = current_revisions(conn)
    if not revisions:
        return "legacy" if _otc_tables(conn) else "empty"
    known, heads = known_revisions()
    if any(revision not in known for revision in revisions):
        return "ahead/unknown"
    return "head" if set(revisions) == heads else "behind"


# Engines whose database was seen at head in this process. A load of all views asks
# once per view (pipeline.ensure_schema); at head the answer is kept, so only the
# first view reads the database (two statements). Any schema change made in this
# process (upgrade, downgrade, stamp, adopt) forgets every engine's answer; states
# other than head are never kept (they lead to an upgrade or a refusal).
_at_head: weakref.WeakSet[Engine] = weakref.WeakSet()


def forget_states() -> None:
    """Forget which databases were seen at head: the schema is about to change."""
    _at_head.clear()


def state(engine: Engine | Connection) -> State:
    """Where the database stands: empty, legacy (not adopted), behind, head, ahead/unknown."""
    if isinstance(engine, Engine) and engine in _at_head:
        return "head"
    with connection(engine) as conn:
        found = _state(conn)
    if found == "head" and isinstance(engine, Engine):
        _at_head.add(engine)
    return found


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
    from alembic import command
    from alembic.util import CommandError

    forget_states()
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
    from . import adoption

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
    from alembic import command

    from . import adoption

    forget_states()
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
