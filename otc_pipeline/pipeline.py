"""Source → parse → load → run record, for one view or all of them.

One transaction per view. A failure of any stage rolls the view back and
closes its run as ``failed`` with the reason; `load all` goes on with the next
view. Nothing here prints: callers get a :class:`RunSummary` per view.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import resource
import signal
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, tzinfo
from multiprocessing.connection import Connection as Connection_
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, cast

import setproctitle
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError, OperationalError

from . import migrate, runs, stopping, users
from .db import connection
from .errors import ConfigError, OtcError, SchemaNotReady, SourceError, TemporaryRefusal
from .load import (
    SECOND_HALF,
    ChunkEncoder,
    LoadCounts,
    ParsedChunk,
    ViewLoader,
    database_failure,
    seen_before,
)
from .models import EtlRun
from .parse import OTHER_DATE_ORDER, Parser, Reject, load_timezone, match_fields
from .settings import date_order_setting, timezone_name
from .sources.files import (
    JsonPart,
    ReadOptions,
    csv_dialect,
    describe_dialect,
    read_file,
    read_header,
    read_json_part,
    split_json,
)
from .views import VIEW_ORDER, VIEWS, View

# Measured on 100k timesheets (first load / reload): 5k 1.86 / 1.50 s, 10k 1.89 / 1.42 s,
# 20k 1.94 / 1.54 s. First loads were within noise; 10k gave the fastest reload.
DEFAULT_CHUNK_SIZE = 10000
# A reload reads a JSON export at least this large in two halves side by side (see _chunks).
SPLIT_MIN_BYTES = 8 * 1024 * 1024
SUFFIXES = (".json", ".csv", ".xlsx")
TOP_REASONS = 5  # reject reasons a load reports, most frequent first

Source = Path | str | Iterable[Any]
Progress = Callable[[str, int], None]


@dataclass(kw_only=True)
class RunSummary(LoadCounts):
    """What one load of one view did: its counts, and the run around them."""

    view: str
    run_id: int | None
    status: str  # success, partial, failed (or "dry-run")
    source: str
    duration_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    latest_source_time: datetime | None = None
    # The failure was a temporary refusal (breaker open, hourly cap, view held): exit 75.
    retry_later: bool = False
    # The most frequent reasons records were rejected: {"field", "reason", "count"}.
    reject_reasons: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 committed without rejects, 3 committed with rejects, 1 failed, 75 refused for now."""
        if self.status == "failed":
            return 75 if self.retry_later else 1
        return 3 if self.rejected else 0

    def as_dict(self) -> dict[str, Any]:
        """The `otc load --json` object."""
        data: dict[str, Any] = {
            "view": self.view,
            "run_id": self.run_id,
            "status": self.status,
            "source": self.source,
            **{count.name: getattr(self, count.name) for count in fields(LoadCounts)},
            "duration_s": self.duration_s,
        }
        if self.error:
            data["error"] = self.error
        if self.warnings:
            data["warnings"] = self.warnings
        if self.reject_reasons:
            data["reject_reasons"] = self.reject_reasons
        return data


def worst_exit_code(summaries: Iterable[RunSummary]) -> int:
    """The exit code of a load of several views: 1 over 75 over 3 over 0.

    A real failure outranks a refusal that a later run clears, which outranks rejects.
    """
    codes = {summary.exit_code for summary in summaries}
    return next((code for code in (1, 75, 3) if code in codes), 0)


def ensure_schema(engine: Engine | Connection) -> None:
    """Create the schema on an empty database; refuse one that is behind or not adopted."""
    state = migrate.state(engine)
    if state == "empty":
        if isinstance(engine, Connection):
            # A caller's transaction is no place for a whole schema migration.
            raise SchemaNotReady("the database is empty; run `otc db upgrade` first")
        migrate.upgrade(engine, "head")
    elif state == "legacy":
        raise SchemaNotReady(
            "this is a legacy servicedesk database that otc-pipeline has not adopted yet; "
            "run `otc db adopt` first"
        )
    elif state == "behind":
        raise SchemaNotReady(
            "the database schema is behind this otc-pipeline; run `otc db upgrade`"
        )
    elif state != "head":
        raise SchemaNotReady(
            "the database schema is newer than this otc-pipeline or unknown; upgrade otc-pipeline"
        )


def describe_source(source: Source) -> str:
    if isinstance(source, Path):
        return str(source)
    if isinstance(source, str):
        return source
    return "records"


def _records(
    view: View, source: Source | JsonPart, first_position: int, options: ReadOptions
) -> Iterator[tuple[int, Any]]:
    if isinstance(source, JsonPart):
        yield from read_json_part(source, first_position)
    elif isinstance(source, str) and source == "api":
        from .sources.api import ApiSettings, fetch_view

        yield from fetch_view(view.name, ApiSettings.from_env())
    elif isinstance(source, str | Path):
        yield from read_file(Path(source), options)
    else:
        yield from enumerate(source, start=1)


def _check_first_record(
    view: View, parser: Parser, record: Any, source: str, hint: Callable[[], str] = str
) -> None:
    """Refuse a source whose records cannot be this view's: a missing key column or another view.

    ``hint()`` says how the file was read (a CSV's delimiter and encoding), for the error.
    """
    if not isinstance(record, dict):
        return
    plan = parser.plan_for(tuple(record))
    if plan.missing_required is None:
        return
    fields = set(record)
    for other in VIEWS.values():
        if other is not view and set(other.required) <= set(match_fields(other, fields)[0]):
            raise SourceError(
                f"{source} looks like a {other.name} export, not {view.name}; "
                f"load it with `otc load {other.name}`"
            )
    raise SourceError(
        f"{source} has no {plan.missing_required!r} field, which every {view.name} record needs; "
        f"is it a {view.name} export?{hint()}"
    )


def _read_as(source: Source | JsonPart, options: ReadOptions) -> str:
    """How a CSV source was read, for an error about its header ("" for other sources)."""
    if not isinstance(source, str | Path) or Path(source).suffix.lower() != ".csv":
        return ""
    dialect = csv_dialect(Path(source), options)
    shown = ", ".join(repr(name) for name in read_header(Path(source), options) or [])
    if len(shown) > 120:
        shown = shown[:120] + "…"
    return (
        f" Its header read as {describe_dialect(dialect)} holds {shown}: if the file uses "
        "another delimiter or encoding, give --delimiter or --encoding"
    )


def parsed_chunks(
    view: View,
    source: Source | JsonPart,
    source_text: str,
    chunk_size: int,
    timezone: tzinfo,
    for_copy: bool,
    *,
    first_position: int = 1,
    encoder: ChunkEncoder | None = None,
    options: ReadOptions | None = None,
) -> Generator[ParsedChunk, None, None]:
    """Read and parse a source chunk by chunk: the source and parse stages of a load.

    Records are numbered from ``first_position`` (a second half's from SECOND_HALF + 1).
    """
    # For COPY the parser hands out text: formatted once per distinct value, not per row.
    options = options or ReadOptions()
    parser = Parser(view, timezone, as_text=for_copy, date_order=options.date_order or "dmy")
    if encoder is None:
        encoder = ChunkEncoder(view, for_copy)
    rejects: list[Reject] = []
    records = 0
    # Each record is parsed as it arrives and then let go: a chunk holds parsed rows only.
    first = first_position == 1  # a second half's first record is no sample of the file
    for position, record in _records(view, source, first_position, options):
        if first:
            _check_first_record(
                view, parser, record, source_text, lambda: _read_as(source, options)
            )
            first = False
        parsed = parser.parse(position, record)
        if isinstance(parsed, Reject):
            rejects.append(parsed)
        else:
            encoder.add(position, *parsed)
        records += 1
        if records == chunk_size:
            yield _flush(encoder, parser, rejects, records)
            rejects, records = [], 0
    if records:
        yield _flush(encoder, parser, rejects, records)


def _flush(
    encoder: ChunkEncoder, parser: Parser, rejects: list[Reject], records: int
) -> ParsedChunk:
    chunk = encoder.flush(rejects, records, frozenset(parser.unknown_fields))
    chunk.renamed_fields = frozenset(parser.renamed_fields.items())
    return chunk


def collect_rarely() -> None:
    """Set the garbage collector up for a process that only reads and parses.

    Reading makes millions of short-lived containers and no cycles worth chasing:
    what the process holds already is left out of collections, and collections
    come rarely (measured: reading 100k timesheets takes ~13% less time).
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


class SplitRefuted(Exception):
    """The first half of a split JSON export did not parse to its end: read the file whole."""


# prctl(2) option: the signal the kernel sends this process when its parent dies.
PR_SET_PDEATHSIG = 1


def _become_reader(sender: Connection_, parent_pid: int, title: str) -> None:
    """First steps of a reading process: hold nothing of the parent's, end with it.

    Readers are forked: measured here, a forked reader starts in 0.06 s, one from
    a forkserver in 0.06 s after 3.2 s for the server's own start, a spawned one
    in 4-5 s (each imports SQLAlchemy again). So a reader lets go here of every
    descriptor it inherited: the parent's database sockets (after a kill -9 of
    the parent the server must see its sessions end, and their locks with them),
    the SQLite lock file, and the reading ends of the parent's pipes — its own
    included, so that a send after the parent's death fails (EPIPE) instead of
    blocking for ever. Each is pointed at /dev/null rather than closed: an
    inherited object that closes its descriptor later then closes nothing a
    reader opened since. On Linux the kernel also kills the reader the moment
    its parent dies, whatever the reader is doing.
    """
    for signum in stopping.STOP_SIGNALS:
        # Ctrl-C and `timeout` signal the whole process group: the parent decides.
        signal.signal(signum, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(0)  # the parent died before the line above took effect
    # What the parent's objects own is never finalized here: frozen, no collection
    # reaches them, nor any cycle that was already garbage when the reader forked.
    gc.freeze()
    keep = {2, sender.fileno()}  # stderr, and the pipe to the parent
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        keep.add(parent.sentinel)  # multiprocessing's own: readable once the parent is gone
    null = os.open(os.devnull, os.O_RDWR)
    for fd in _open_descriptors():
        if fd not in keep and fd != null:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    os.close(null)
    # `ps` shows what the process is, never the parent's arguments (a --database-url).
    setproctitle.setproctitle(title)


def _open_descriptors() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: every number up to the process's limit
        return list(range(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))


def _produce(
    sender: Connection_,
    parent_pid: int,
    view_name: str,
    source: Path | str | JsonPart,
    source_text: str,
    chunk_size: int,
    timezone: tzinfo,
    for_copy: bool,
    half: str | None,
    options: ReadOptions,
) -> None:
    """Child process: read and parse the source, send each chunk to the loading parent.

    The reader of a half ends by sending what the other half needs to be placed:
    the first half its count of records and the key hashes it met, the second
    its rows' key hashes.
    """
    _become_reader(sender, parent_pid, f"otc-read-{view_name}" + (f"-{half}" if half else ""))
    collect_rarely()
    try:
        encoder = ChunkEncoder(VIEWS[view_name], for_copy, keep_key_hashes=half == "second")
        records = 0
        for chunk in parsed_chunks(
            VIEWS[view_name],
            source,
            source_text,
            chunk_size,
            timezone,
            for_copy,
            first_position=SECOND_HALF + 1 if half == "second" else 1,
            encoder=encoder,
            options=options,
        ):
            records += chunk.records
            sender.send(("chunk", chunk))
            stopping.pause_point("reading", view_name)
        end: dict[str, Any] | None = None
        if half == "first":
            end = {"records": records, "seen": encoder.seen_keys()}
        elif half == "second":
            assert encoder.key_hashes is not None
            end = {"key_hashes": encoder.key_hashes.tobytes()}
        sender.send(("done", end))
    except OSError:
        os._exit(0)  # the parent is gone (EPIPE): nobody is left to tell
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        try:
            sender.send(("error", exc))
        except OSError:
            os._exit(0)
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            sender.send(("error", SourceError(f"{source_text}: {type(exc).__name__}: {exc}")))
    finally:
        sender.close()


def _chunks_from_readers(
    view: View,
    sources: list[tuple[Path | str | JsonPart, str | None]],
    source_text: str,
    chunk_size: int,
    timezone: tzinfo,
    for_copy: bool,
    options: ReadOptions,
) -> Generator[ParsedChunk, None, None]:
    """Parsed chunks from child processes, so reading and parsing run beside the database.

    ``sources`` is the whole source (half None), or the first and second halves of
    a JSON export. The parent spends its time staging and merging (COPY on
    PostgreSQL, executemany on SQLite), the children in ijson, csv and the
    coercions: on two cores the load takes about as long as the slower side
    (measured on SQLite too: a 100k-row reload 2.8 s in one process, 2.1 s with
    the reader). Each pipe holds one chunk, so memory stays flat whichever side
    is slower. (Two readers that each parse every other chunk measured no faster:
    each still streams the whole file. Halves split the file itself.)

    Halves come in any order: the loader places them by position. Once both are
    read, a last chunk without rows gives the first half's count of records (which
    places the second half's positions) and the second half's keys that may
    repeat the first half's. A failure of the first half means the split was
    wrong, or the file is; either way :class:`SplitRefuted` says to read it whole.
    A failure of the second half counts only once the first has proved the split.
    """
    context = multiprocessing.get_context("fork")
    started: list[tuple[Connection_, Any]] = []
    pending: dict[Connection_, tuple[str | None, Any]] = {}
    try:
        for source, half in sources:
            receiver, sender = context.Pipe(duplex=False)
            producer = context.Process(
                target=_produce,
                args=(
                    sender,
                    os.getpid(),
                    view.name,
                    source,
                    source_text,
                    chunk_size,
                    timezone,
                    for_copy,
                    half,
                    options,
                ),
                name=f"otc-read-{view.name}" + (f"-{half}" if half else ""),
                daemon=True,
            )
            producer.start()
            sender.close()
            started.append((receiver, producer))
            pending[receiver] = (half, producer)
        ends: dict[str | None, Any] = {}
        second_failure: BaseException | None = None
        while pending:
            for ready in wait(list(pending)):
                receiver = cast(Connection_, ready)
                half, producer = pending[receiver]
                try:
                    kind, payload = receiver.recv()
                except EOFError:
                    producer.join(1)
                    raise SourceError(
                        f"{source_text}: the reading process stopped unexpectedly "
                        f"(exit code {producer.exitcode}); run again"
                    ) from None
                if kind == "chunk":
                    yield payload
                    continue
                del pending[receiver]
                if kind == "done":
                    ends[half] = payload
                elif half == "first":
                    raise SplitRefuted(str(payload))
                elif half == "second":
                    second_failure = payload
                else:
                    raise payload
        if second_failure is not None:
            raise second_failure
        if "first" in ends:
            key_hashes = array("q")
            key_hashes.frombytes(ends["second"]["key_hashes"])
            yield ParsedChunk(
                groups=[],
                rejects=[],
                records=0,
                first_half_records=ends["first"]["records"],
                maybe_repeats=seen_before(ends["first"]["seen"], key_hashes),
            )
    finally:
        for receiver, producer in started:
            receiver.close()
            if producer.is_alive():
                producer.kill()  # readers ignore SIGTERM (see _become_reader); hold nothing
            producer.join(10)


def _chunks(
    view: View,
    source: Source,
    source_text: str,
    chunk_size: int,
    timezone: tzinfo,
    for_copy: bool,
    halves: tuple[JsonPart, JsonPart] | None,
    options: ReadOptions,
) -> Generator[ParsedChunk, None, None]:
    """The parsed chunks of a source: files and the API from reading processes.

    Given ``halves``, a JSON export is read in two halves side by side: a reload
    must read every record to compare it, and one reader is then the slower side
    (measured on 100k timesheets: reading takes 0.85–0.9 s, the database's staging
    and comparing about 0.55 s).
    """
    if not isinstance(source, str | Path):
        return parsed_chunks(
            view, source, source_text, chunk_size, timezone, for_copy, options=options
        )
    readers: list[tuple[Path | str | JsonPart, str | None]] = (
        [(source, None)] if halves is None else [(halves[0], "first"), (halves[1], "second")]
    )
    return _chunks_from_readers(view, readers, source_text, chunk_size, timezone, for_copy, options)


def load_view(
    engine: Engine | Connection,
    view_name: str,
    source: Source,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dry_run: bool = False,
    progress: Progress | None = None,
    options: ReadOptions | None = None,
) -> RunSummary:
    """Load one view from ``source`` (a file, "api", or an iterable of records).

    ``options`` says how to read an unusual export (sheet, delimiter, encoding,
    date order); the date order defaults to OTC_DATE_ORDER.

    Given a Connection inside a transaction (the ``otc_load`` test fixture does
    this), everything runs in SAVEPOINTs on it and nothing is committed.
    Ctrl-C, SIGTERM or SIGHUP before the commit rolls the view back, closes its
    run ``failed`` and raises :class:`~otc_pipeline.stopping.Stopped`; one that
    arrives once the commit has begun waits until the summary is returned.
    """
    if view_name not in VIEWS:
        raise ConfigError(f"unknown view {view_name!r}; use one of {', '.join(VIEW_ORDER)} or all")
    if chunk_size < 1:
        raise ConfigError("--chunk-size must be at least 1")
    view = VIEWS[view_name]
    source_text = describe_source(source)
    timezone = load_timezone(timezone_name())
    options = replace(
        options or ReadOptions(),
        header_fields=tuple(view.columns[k] for k in view.key if view.columns[k] in view.required),
    )
    if options.date_order is None:
        options = replace(options, date_order=date_order_setting())
    with stopping.Guard() as guard:
        if dry_run:
            if migrate.state(engine) != "head":
                raise SchemaNotReady(
                    "--dry-run needs a database at head; run `otc db upgrade` (or adopt) first"
                )
            return _run(
                engine,
                view,
                source,
                source_text,
                None,
                chunk_size,
                True,
                progress,
                timezone,
                options,
                guard,
            )
        ensure_schema(engine)
        with runs.view_lock(engine, view.name):
            # A signal during these few statements waits: the run it opens is then closed.
            with stopping.held():
                run_id = runs.open_run(engine, view.name, source_text)
            return _run(
                engine,
                view,
                source,
                source_text,
                run_id,
                chunk_size,
                False,
                progress,
                timezone,
                options,
                guard,
            )


def _run(
    engine: Engine | Connection,
    view: View,
    source: Source,
    source_text: str,
    run_id: int | None,
    chunk_size: int,
    dry_run: bool,
    progress: Progress | None,
    timezone: Any,
    options: ReadOptions,
    guard: stopping.Guard,
) -> RunSummary:
    started = time.monotonic()
    summary = RunSummary(view=view.name, run_id=run_id, status="running", source=source_text)
    loader: ViewLoader | None = None
    unknown_fields: frozenset[str] = frozenset()
    renamed_fields: frozenset[tuple[str, str]] = frozenset()
    reasons: Counter[tuple[str | None, str]] = Counter()
    commit_begun = False

    def fill_summary(loader: ViewLoader) -> None:
        """The summary of a load about to commit (or a dry run about to roll back)."""
        _copy_counts(summary, loader)
        summary.latest_source_time = loader.latest_source_time
        if unknown_fields:
            names = ", ".join(repr(name) for name in sorted(unknown_fields))
            summary.warnings.insert(0, f"unknown fields ignored: {names}")
        if renamed_fields:
            names = ", ".join(f"{name!r} as {field!r}" for name, field in sorted(renamed_fields))
            summary.warnings.insert(0, f"fields read under their OTC names: {names}")
        refused = summary.rejected - sum(reasons.values())
        if refused > 0:
            reasons[(None, "refused by the database")] += refused
        summary.reject_reasons = [
            {"field": name, "reason": reason, "count": count}
            for (name, reason), count in reasons.most_common(TOP_REASONS)
        ]
        summary.status = "dry-run" if dry_run else ("partial" if summary.rejected else "success")
        if summary.fetched and summary.rejected == summary.fetched:
            # Nothing of the view was written; the rejects stay for `otc rejects`.
            summary.status = "failed"
            summary.error = _nothing_loaded(summary)
        summary.duration_s = round(time.monotonic() - started, 3)

    def load_once(conn: Connection, may_split: bool) -> None:
        """One attempt in one transaction (a savepoint inside a caller's)."""
        nonlocal loader, unknown_fields, renamed_fields, commit_begun
        unknown_fields, renamed_fields = frozenset(), frozenset()
        reasons.clear()
        transaction = conn.begin_nested() if conn.in_transaction() else conn.begin()
        try:
            is_api = isinstance(source, str) and source == "api"
            loader = ViewLoader(conn, view, run_id, merge_while_reading=not is_api)
            # Only a reload reads a file in halves: a first load merges chunks in order.
            halves = None
            if may_split and not loader.merges_as_it_reads and isinstance(source, str | Path):
                if source != "api":
                    halves = split_json(Path(source), SPLIT_MIN_BYTES)
            chunks = _chunks(
                view,
                source,
                source_text,
                chunk_size,
                timezone,
                for_copy=conn.dialect.name == "postgresql",
                halves=halves,
                options=options,
            )
            # Closed here, not when garbage: a stopped load ends its readers before it
            # records the run (the traceback would keep the generator alive).
            with contextlib.closing(chunks):
                for chunk in chunks:
                    loader.stage(chunk)
                    unknown_fields |= chunk.unknown_fields
                    renamed_fields |= chunk.renamed_fields
                    reasons.update((r.field, r.reason) for r in chunk.rejects)
                    _refuse_other_date_order(chunk.rejects, source_text)
                    if progress is not None:
                        progress(view.name, loader.counts.fetched)
                    stopping.pause_point("staged", view.name)
            stopping.pause_point("merge", view.name)
            loader.finish()
            after_load(conn, view, summary, loader.counts)
            if dry_run:
                transaction.rollback()
                fill_summary(loader)
                return
            fill_summary(loader)
            # The run's final record belongs to the view's transaction: it commits
            # with the rows or not at all, whenever the process dies.
            _close_run(conn, summary)
            stopping.pause_point("before-commit", view.name)
            guard.hold()  # from here a signal waits: the commit and its report finish
            stopping.pause_point("commit", view.name)
            commit_begun = True
            transaction.commit()
            stopping.pause_point("after-commit", view.name)
        except BaseException:
            if not commit_begun:
                with contextlib.suppress(Exception):  # the first error is the one to report
                    transaction.rollback()
            raise

    try:
        stopping.check()  # a signal while the run was being opened
        with connection(engine) as conn:
            try:
                load_once(conn, may_split=True)
            except SplitRefuted:
                # The guessed middle of a JSON export was no boundary between records
                # (or the file is broken there): nothing was kept; read it whole.
                load_once(conn, may_split=False)
    except (Exception, KeyboardInterrupt) as exc:
        signum = stopping.received() or _interrupting_signal(exc)
        if commit_begun and _run_committed(engine, summary):
            # Whatever broke off (a signal, a lost connection), the commit happened:
            # the run row, written in the same transaction, says so.
            return summary
        summary.status = "failed"
        summary.error = stopping.reason(signum) if signum else _error_text(exc, source_text)
        summary.retry_later = isinstance(exc, TemporaryRefusal) and not signum
        summary.warnings.clear()
        summary.latest_source_time = None
        if loader is not None:
            _copy_counts(summary, loader)
        # Counts of a failed run describe what was read, not what was written.
        summary.inserted = summary.updated = summary.unchanged = 0
        summary.duration_s = round(time.monotonic() - started, 3)
        with stopping.held():
            _close_failed_run(engine, summary)
        if signum:
            raise stopping.Stopped(signum, [summary]) from exc
        return summary
    return summary


def _interrupting_signal(exc: BaseException) -> int | None:
    """SIGINT if a KeyboardInterrupt is this error or what caused it, else None.

    A Ctrl-C inside a database call leaves the connection unusable, so the next
    statement (a RESET, a rollback) fails with an error of its own: the
    interrupt, not that error, is what happened.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, stopping.Stopped):
            return seen.signum
        if isinstance(seen, KeyboardInterrupt):
            return signal.SIGINT
        seen = seen.__cause__ or seen.__context__
    return None


def _run_committed(engine: Engine | Connection, summary: RunSummary) -> bool:
    """Whether the load's commit happened: its run row, closed inside it, is no longer running."""
    if summary.run_id is None:
        return False
    try:
        with stopping.held(), connection(engine) as conn:
            status = conn.execute(
                select(EtlRun.load_status).where(EtlRun.id == summary.run_id)
            ).scalar()
    except Exception:  # noqa: BLE001 - unknown means not shown as committed
        return False
    return status is not None and status != "running"


def _refuse_other_date_order(rejects: list[Reject], source_text: str) -> None:
    """Fail the load at a date that reads only in the other order (month-first, say).

    Such a file's dates are all in that order: the ones that also read day-first
    (01/02/26) would be stored as the wrong day, and loading the file again with
    the right order would then add them as new entries.
    """
    for reject in rejects:
        if OTHER_DATE_ORDER in reject.reason:
            raise SourceError(
                f"{source_text}: {reject.field} {reject.value!r} at position {reject.position} "
                f"{reject.reason.removeprefix('value ')}; nothing was loaded, since the dates "
                "that read both ways would be stored as the wrong day"
            )


def _nothing_loaded(summary: RunSummary) -> str:
    """The error of a load whose every record was rejected, with its top reasons."""
    top = "; ".join(
        f"{r['count']:,} × {r['field'] + ': ' if r['field'] else ''}{r['reason']}"
        for r in summary.reject_reasons[:3]
    )
    where = f"; see `otc rejects --run {summary.run_id}`" if summary.run_id is not None else ""
    return (
        f"every one of the {summary.fetched:,} records was rejected, nothing was loaded "
        f"({top}){where}"
    )


def _close_run(engine: Engine | Connection, summary: RunSummary) -> None:
    """Write the run's final record (nothing for a dry run, which has no run)."""
    if summary.run_id is None:
        return
    runs.close_run(
        engine,
        summary.run_id,
        status=summary.status,
        fetched=summary.fetched,
        inserted=summary.inserted,
        updated=summary.updated,
        unchanged=summary.unchanged,
        duplicates=summary.duplicates,
        rejected=summary.rejected,
        duration_s=summary.duration_s,
        warnings=summary.warnings,
        error=summary.error,
        latest_source_time=summary.latest_source_time,
    )


# How long a failed run's record waits for a database that went away (a restart).
CLOSE_RUN_PATIENCE_S = 30.0


def _close_failed_run(engine: Engine | Connection, summary: RunSummary) -> None:
    """Close a failed run; after a lost connection, once the server answers again.

    A server restart fails the load at once, while the server is still starting:
    its run's record is written when it is back (within CLOSE_RUN_PATIENCE_S),
    else left `running`, for the next load of the view to mark `interrupted`.
    """
    deadline = time.monotonic() + CLOSE_RUN_PATIENCE_S
    while True:
        try:
            _close_run(engine, summary)
            return
        except OperationalError as exc:
            # No SQLSTATE: no connection (refused, closed); 57P03: still starting up.
            unreachable = getattr(exc.orig, "pgcode", None) in (None, "57P03")
            if isinstance(engine, Connection) or not unreachable or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def after_load(conn: Connection, view: View, summary: RunSummary, counts: LoadCounts) -> None:
    """Work that belongs to a view's load transaction once its rows are merged."""
    if view.name == "timesheets" and (counts.inserted or counts.updated):
        stopping.pause_point("users-refresh", view.name)
        # Timesheet rows carry both names: the one reliable source for user_lookup.
        # A load that wrote no timesheet row has nothing new to tell it (and the
        # refresh reads the whole table); `otc users refresh` runs it on demand.
        summary.warnings.extend(users.refresh_from_timesheets(conn))


def _copy_counts(summary: RunSummary, loader: ViewLoader) -> None:
    """The loader's counts onto the summary (a RunSummary is LoadCounts and its run)."""
    for count in fields(LoadCounts):
        setattr(summary, count.name, getattr(loader.counts, count.name))


def _error_text(exc: BaseException, source_text: str) -> str:
    if isinstance(exc, OtcError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user"
    if isinstance(exc, DBAPIError):
        return str(database_failure(exc))
    orig = getattr(exc, "orig", None)
    detail = str(orig if orig is not None else exc).strip().splitlines()
    first = detail[0] if detail else type(exc).__name__
    return f"{type(exc).__name__} while loading {source_text}: {first}"


def find_view_files(folder: Path) -> dict[str, Path]:
    """The export file of each view in ``folder``: tickets.*, timesheets.*, comments.*.

    Names match whatever their case (`Tickets.CSV`, as Windows tools save them).
    """
    if not folder.is_dir():
        raise SourceError(
            f"{folder} is not a folder; `otc load all --from` takes a folder of exports"
        )
    wanted = {f"{name}{suffix}": name for name in VIEW_ORDER for suffix in SUFFIXES}
    by_view: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        name = wanted.get(entry.name.lower())
        if name is not None and entry.is_file():
            by_view.setdefault(name, []).append(entry)
    found: dict[str, Path] = {}
    for name in VIEW_ORDER:
        candidates = by_view.get(name, [])
        if len(candidates) > 1:
            raise SourceError(
                f"{folder} holds {' and '.join(c.name for c in candidates)}; keep one export per view"
            )
        if candidates:
            found[name] = candidates[0]
    if not found:
        raise SourceError(
            f"{folder} holds no tickets.*, timesheets.* or comments.* export (.json, .csv, .xlsx)"
        )
    return found


def missing_view(name: str, folder: Path) -> RunSummary:
    """What `load all` reports for a view whose export the folder lacks: a warning, no run."""
    return RunSummary(
        view=name,
        run_id=None,
        status="missing",
        source=str(folder),
        warnings=[f"{folder} holds no {name} export ({name}.json, .csv or .xlsx); not loaded"],
    )


def load_all(
    engine: Engine | Connection,
    source: Path | str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dry_run: bool = False,
    progress: Progress | None = None,
    between_views: Callable[[], None] | None = None,
    options: ReadOptions | None = None,
) -> list[RunSummary]:
    """Load every view from a folder of exports or the API; a failed view does not stop the rest.

    A stop signal does: the view it interrupts rolls back, no later view starts,
    and :class:`~otc_pipeline.stopping.Stopped` carries the summaries so far.
    """
    if isinstance(source, str) and source == "api":
        plan: list[tuple[str, Source]] = [(name, "api") for name in VIEW_ORDER]
    else:
        found = find_view_files(Path(source))
        plan = list(found.items())
    summaries: list[RunSummary] = []
    if not (isinstance(source, str) and source == "api"):
        summaries = [missing_view(n, Path(source)) for n in VIEW_ORDER if n not in found]
    with stopping.Guard():
        for index, (name, view_source) in enumerate(plan):
            not_loaded = [later for later, _ in plan[index:]]
            signum = stopping.received()
            if signum:
                # A signal during the last view's commit: that view is done, no other starts.
                raise stopping.Stopped(signum, summaries, not_loaded)
            try:
                if index and between_views is not None:
                    between_views()
            except stopping.Stopped as stop:
                raise stopping.Stopped(stop.signum, summaries, not_loaded) from None
            try:
                summaries.append(
                    load_view(
                        engine,
                        name,
                        view_source,
                        chunk_size=chunk_size,
                        dry_run=dry_run,
                        progress=progress,
                        options=options,
                    )
                )
            except stopping.Stopped as stop:
                raise stopping.Stopped(
                    stop.signum, summaries + stop.summaries, not_loaded[1:]
                ) from None
            except OtcError as exc:
                summaries.append(
                    RunSummary(
                        view=name,
                        run_id=None,
                        status="failed",
                        source=describe_source(view_source),
                        error=str(exc),
                        retry_later=isinstance(exc, TemporaryRefusal),
                    )
                )
    summaries.sort(key=lambda summary: VIEW_ORDER.index(summary.view))
    return summaries
