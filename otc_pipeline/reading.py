"""Reading a source: records from a file, the API or an iterable, parsed into chunks.

Files and the API are read in child processes beside the loading one (see
:func:`read_chunks`); a reload of a large JSON export is read in two halves side
by side (:func:`plan_read`). What the loader gets is a stream of
:class:`~otc_pipeline.chunks.ParsedChunk` and, after two halves, a
:class:`~otc_pipeline.chunks.SplitEnd`.
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
from array import array
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import tzinfo
from multiprocessing.connection import Connection as Connection_
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, cast

import setproctitle

from . import stopping
from .chunks import SECOND_HALF, ChunkEncoder, ParsedChunk, SecondHalf, SplitEnd, seen_before
from .copy_text import COPY_TEXT
from .errors import SourceError
from .parse import Parser, Reject, match_fields
from .sources.files import (
    SUPPORTED_SUFFIXES,
    JsonPart,
    ReadOptions,
    csv_dialect,
    describe_dialect,
    read_file,
    read_header,
    read_json_part,
    split_json,
)
from .sources.records import API
from .views import VIEW_ORDER, VIEWS, View

# A reload reads a JSON export at least this large in two halves side by side: a
# reload must read every record to compare it, and one reader is then the slower
# side (measured on 100k timesheets: reading takes 0.85-0.9 s, the database's
# staging and comparing about 0.55 s).
SPLIT_MIN_BYTES = 8 * 1024 * 1024

Source = Path | str | Iterable[Any]


def is_api(source: object) -> bool:
    """Whether ``source`` is the OTC API (the word "api" where a file could stand)."""
    return isinstance(source, str) and source == API


def describe_source(source: Source) -> str:
    if isinstance(source, Path):
        return str(source)
    if isinstance(source, str):
        return source
    return "records"


@dataclass(frozen=True)
class ReadPlan:
    """How one view's source is read: in this process, by one reader, or in two halves."""

    view: View
    source: Source
    source_text: str
    chunk_size: int
    timezone: tzinfo
    for_copy: bool  # rows as COPY text (PostgreSQL), else Python values
    options: ReadOptions
    halves: tuple[JsonPart, JsonPart] | None = None

    @property
    def file(self) -> Path | None:
        """The export file read, if the source is one."""
        if is_api(self.source) or not isinstance(self.source, str | Path):
            return None
        return Path(self.source)

    def reader_starts(self) -> tuple[int, ...]:
        """The offsets in the file where its readers begin."""
        return (0, self.halves[1].start) if self.halves else (0,)


def plan_read(
    view: View,
    source: Source,
    *,
    chunk_size: int,
    timezone: tzinfo,
    for_copy: bool,
    options: ReadOptions,
) -> ReadPlan:
    """The read of the whole ``source`` by one reader (or in this process, for records)."""
    return ReadPlan(view, source, describe_source(source), chunk_size, timezone, for_copy, options)


def in_halves(plan: ReadPlan) -> ReadPlan:
    """The read in two halves side by side, if the source is a JSON export large enough.

    Only a load that takes chunks in any order may read in halves (a first load
    merges chunks in the order they come).
    """
    if plan.file is None:
        return plan
    return replace(plan, halves=split_json(plan.file, SPLIT_MIN_BYTES))


def whole(plan: ReadPlan) -> ReadPlan:
    """The same read, of the whole source at once (after a refuted split)."""
    return replace(plan, halves=None)


def read_chunks(plan: ReadPlan) -> Generator[ParsedChunk | SplitEnd, None, None]:
    """The parsed chunks of a source: files and the API from reading processes.

    Raises :class:`SplitRefuted` if the first of two halves does not parse to its
    end: read the source whole (see :func:`whole`).
    """
    if plan.file is None and not is_api(plan.source):
        return (yield from parsed_chunks(plan))
    return (yield from _from_readers(plan))


class SplitRefuted(Exception):
    """The first half of a split JSON export did not parse to its end: read the file whole."""


def _records(
    view: View, source: Source | JsonPart, first_position: int, options: ReadOptions
) -> Iterator[tuple[int, Any]]:
    if isinstance(source, JsonPart):
        yield from read_json_part(source, first_position)
    elif is_api(source):
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
    plan: ReadPlan, half: str | None = None, *, encoder: ChunkEncoder | None = None
) -> Generator[ParsedChunk, None, None]:
    """Read and parse a source (or its "first" or "second" half) chunk by chunk.

    Records of a second half are numbered from SECOND_HALF + 1 (see chunks.SecondHalf).
    """
    view, options = plan.view, plan.options
    second = half == "second"
    first_position = SECOND_HALF + 1 if second else 1
    # For COPY the parser hands out text: formatted once per distinct value, not per row.
    parser = Parser(
        view,
        plan.timezone,
        text_format=COPY_TEXT if plan.for_copy else None,
        date_order=options.date_order or "dmy",
    )
    if encoder is None:
        encoder = ChunkEncoder(view, plan.for_copy)
    source: Source | JsonPart = plan.source
    if half is not None:
        assert plan.halves is not None
        source = plan.halves[0 if half == "first" else 1]
    rejects: list[Reject] = []
    records = 0
    # Each record is parsed as it arrives and then let go: a chunk holds parsed rows only.
    first = not second  # a second half's first record is no sample of the file
    for position, record in _records(view, source, first_position, options):
        if first:
            _check_first_record(
                view, parser, record, plan.source_text, lambda: _read_as(plan.source, options)
            )
            first = False
        parsed = parser.parse(position, record)
        if isinstance(parsed, Reject):
            rejects.append(parsed)
        else:
            encoder.add(position, *parsed)
        records += 1
        if records == plan.chunk_size:
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


# prctl(2) option: the signal the kernel sends this process when its parent dies.
PR_SET_PDEATHSIG = 1


def _become_reader(sender: Connection_, parent_pid: int, title: str) -> None:
    """First steps of a reading process: hold nothing of the parent's, end with it.

    A reader is forked (0.06 s to start; a spawned one takes 4-5 s), so it inherits
    the parent's descriptors: each is pointed at /dev/null (not closed: an inherited
    object closing its descriptor later then closes nothing of the reader's), so
    that a kill -9 of the parent ends its sessions and locks, and a send after the
    parent's death fails instead of blocking. docs/design.md says more.
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


def _produce(sender: Connection_, parent_pid: int, plan: ReadPlan, half: str | None) -> None:
    """Child process: read and parse the source (or a half), send each chunk to the parent.

    The reader of a half ends by sending what the other half needs to be placed:
    the first half its count of records and the key hashes it met, the second
    its rows' key hashes.
    """
    view = plan.view
    _become_reader(sender, parent_pid, f"otc-read-{view.name}" + (f"-{half}" if half else ""))
    collect_rarely()
    try:
        encoder = ChunkEncoder(view, plan.for_copy, keep_key_hashes=half == "second")
        records = 0
        for chunk in parsed_chunks(plan, half, encoder=encoder):
            records += chunk.records
            sender.send(("chunk", chunk))
            stopping.pause_point("reading", view.name)
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
            sender.send(("error", SourceError(f"{plan.source_text}: {type(exc).__name__}: {exc}")))
    finally:
        sender.close()


def _from_readers(plan: ReadPlan) -> Generator[ParsedChunk | SplitEnd, None, None]:
    """Parsed chunks from child processes, so reading and parsing run beside the database.

    One process reads the whole source, or two the halves of a JSON export; on two
    cores a load takes about as long as the slower side (a 100k-row SQLite reload:
    2.8 s in one process, 2.1 s with a reader). Each pipe holds one chunk, so memory
    stays flat whichever side is slower. Chunks of the halves come in any order; a
    :class:`SplitEnd` ends them. A failure of the first half means the split was
    wrong (or the file is): :class:`SplitRefuted` says to read it whole. A failure of
    the second half counts only once the first has proved the split.
    """
    view, source_text = plan.view, plan.source_text
    context = multiprocessing.get_context("fork")
    started: list[tuple[Connection_, Any]] = []
    pending: dict[Connection_, tuple[str | None, Any]] = {}
    halves: tuple[str | None, ...] = (None,) if plan.halves is None else ("first", "second")
    try:
        for half in halves:
            receiver, sender = context.Pipe(duplex=False)
            producer = context.Process(
                target=_produce,
                args=(sender, os.getpid(), plan, half),
                # readmeter.py finds the readers by this name.
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
            yield SplitEnd(
                SecondHalf(ends["first"]["records"]),
                seen_before(ends["first"]["seen"], key_hashes),
            )
    finally:
        for receiver, producer in started:
            receiver.close()
            if producer.is_alive():
                producer.kill()  # readers ignore SIGTERM (see _become_reader); hold nothing
            producer.join(10)


def find_view_files(folder: Path) -> dict[str, Path]:
    """The export file of each view in ``folder``: tickets.*, timesheets.*, comments.*.

    Names match whatever their case (`Tickets.CSV`, as Windows tools save them).
    """
    if not folder.is_dir():
        raise SourceError(
            f"{folder} is not a folder; `otc load all --from` takes a folder of exports"
        )
    wanted = {f"{name}{suffix}": name for name in VIEW_ORDER for suffix in SUPPORTED_SUFFIXES}
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
