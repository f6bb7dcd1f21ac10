"""What the reading and the loading processes share: parsed chunks and the messages of a read.

A reader parses records into :class:`ParsedChunk` objects (through a
:class:`ChunkEncoder`), each row already laid out as the stage table takes it;
the loader stages and merges them. A read in two halves ends with a
:class:`SplitEnd`, which says where the second half's rows stand.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from .copy_text import COPY_NULL
from .parse import Plan, Reject
from .views import View

POSITION = "_otc_position"
COLUMN_SET = "_otc_column_set"
KEY_HASH = "_otc_key_hash"  # Python's hash of the row's key: finds repeats across chunks cheaply
STAGE_PREFIX = (COLUMN_SET, POSITION, KEY_HASH)  # what each staged row starts with
_SEEN_BITS = 1 << 26
# Positions of a split source's second half start here, above any real position,
# until the first half's count of records says what they are (see SecondHalf).
SECOND_HALF = 1 << 40
_MISSING = object()


def stage_columns(view: View) -> tuple[str, ...]:
    """The view's columns as every staged row carries them, in the table's order."""
    return tuple(c.key for c in view.table.columns if c.key in view.columns)


@dataclass(frozen=True)
class StagedGroup:
    """The rows of one chunk, ready for the stage table, with every column of the view.

    Each row starts with its column set (a bit per column of ``columns`` that its
    record carried: an absent one is staged NULL and never written), source
    position and key hash. PostgreSQL gets them as COPY text, SQLite as Python
    values for executemany.
    """

    columns: tuple[str, ...]
    column_sets: frozenset[int]  # the column sets of its rows
    copy_text: bytes | None = None  # lines of COPY's text format, UTF-8
    rows: list[tuple[Any, ...]] | None = None


@dataclass
class ParsedChunk:
    """One chunk of a source, parsed: its rows, its rejects, how many records.

    ``duplicates`` counts records of this chunk whose key a later record of the
    same chunk repeats: they are already dropped (the last occurrence wins).
    """

    groups: list[StagedGroup]  # one, or none when no record of the chunk parsed
    rejects: list[Reject]
    records: int
    first: int = 0  # source positions of the chunk's first and last rows
    last: int = 0
    unknown_fields: frozenset[str] = frozenset()
    # (source field, the view's field it was taken for) for names spelled otherwise
    renamed_fields: frozenset[tuple[str, str]] = frozenset()
    duplicates: int = 0
    # Key hashes of rows whose key may have come in an earlier chunk (a superset).
    maybe_repeats: list[int] = field(default_factory=list)


class ChunkEncoder:
    """Collects one chunk's parsed rows: drops repeated keys, lays rows out alike.

    Within a chunk the occurrence of a key that wins is chosen here, in memory, so
    the database only sorts out repeats across chunks: the newest by the view's
    modified time, else the last (see :func:`newer`). For COPY each row becomes its
    line of COPY's text format as it arrives: the parser already hands out
    escaped fields, so a line is one join (measured: twice as fast as csv.writer),
    and a chunk holds a few MB of lines instead of tuples. Every row carries all
    of the view's columns, with its column set saying which its record had: so a
    chunk is one COPY whatever fields its records carry (APIs that omit null
    fields send a different set nearly every record), and a narrower record never
    blanks a column it does not carry.
    """

    def __init__(self, view: View, as_copy_text: bool, keep_key_hashes: bool = False) -> None:
        self.as_copy_text = as_copy_text
        self.columns = stage_columns(view)
        # Where a staged row holds its modified time (None: the view has none).
        self._modified = (
            None if view.modified_time is None else self.columns.index(view.modified_time)
        )
        # Every row's key hash, for a reader of a second half: the first half's
        # reader saw other keys, which these may repeat (see seen_before).
        self.key_hashes: array[int] | None = array("q") if keep_key_hashes else None
        # Per set of plan columns: its column set, as a number and as COPY text, and
        # where each staged column is among the plan's (None: the same columns).
        self._layouts: dict[
            tuple[tuple[str, ...], tuple[str, ...] | None], tuple[int, str, itemgetter[Any] | None]
        ] = {}
        self._spreads: dict[tuple[str, ...], Any] = {}  # per set of plan columns
        # One bit per key hash seen (8 MB): a key whose bit is already set may repeat
        # an earlier chunk's, and only those are looked for in the stage. A clear bit
        # proves a key is new; a set one is a false alarm for about 1.5% of keys at
        # 1M keys (0.15% at 100k).
        self._seen = bytearray(_SEEN_BITS // 8)
        self._start()

    def _start(self) -> None:
        self._rows: list[Any] = []
        self._column_sets: set[int] = set()
        self._plan: Plan | None = None  # the last row's: usually the next one's too
        self._layout: tuple[int, str, itemgetter[Any] | None] = (0, "0", None)
        self._key_of: Any = None
        # Each key's latest row (the row object itself): the rows it does not hold
        # were replaced by a later row of their key.
        self._latest: dict[Any, Any] = {}
        self._maybe_repeats: list[int] = []
        self._first = self._last = 0

    def add(self, position: int, plan: Plan, values: tuple[Any, ...]) -> None:
        """One parsed row; it replaces an earlier row of this chunk with the same key."""
        if plan is not self._plan:
            self._use(plan)
            if not self._first:
                self._first = position
        self._last = position
        key = self._key_of(values)
        key_hash = hash(key)
        bit = key_hash & (_SEEN_BITS - 1)
        byte, flag = bit >> 3, 1 << (bit & 7)
        seen = self._seen
        repeat = seen[byte] & flag
        if repeat:
            self._maybe_repeats.append(key_hash)
        else:
            seen[byte] |= flag
        if self.key_hashes is not None:
            self.key_hashes.append(key_hash)
        column_set, set_text, spread = self._layout
        if spread is not None:
            values = spread((*values, COPY_NULL if self.as_copy_text else None))
        if self.as_copy_text:
            row: Any = "\t".join((set_text, str(position), str(key_hash), *values))
        else:
            row = (column_set, position, key_hash, *values)
        self._rows.append(row)
        if repeat and self._modified is not None:
            held = self._latest.get(key)
            if held is not None and not self._replaces(values, held):
                return  # the held row is newer: this one counts as the duplicate
        self._latest[key] = row

    def _replaces(self, values: tuple[Any, ...], held: Any) -> bool:
        """Whether a row with these staged values replaces ``held``, a row of its key."""
        assert self._modified is not None
        mine = values[self._modified]
        if self.as_copy_text:
            theirs: Any = held.split("\t")[len(STAGE_PREFIX) + self._modified]
            null: Any = COPY_NULL
        else:
            theirs, null = held[len(STAGE_PREFIX) + self._modified], None
        # COPY text holds timestamps as ISO text, which sorts as the times do.
        return newer(None if mine == null else mine, None if theirs == null else theirs)

    def _use(self, plan: Plan) -> None:
        """Make ``plan`` the current one: how its rows are laid out, and their key."""
        assert plan.key_of is not None  # rows come from plans that have every key field
        layout = self._layouts.get((plan.columns, plan.carried))
        if layout is None:
            carried = set(plan.carried or plan.columns)
            column_set = sum(1 << i for i, c in enumerate(self.columns) if c in carried)
            spread = self._spreads.get(plan.columns, _MISSING)
            if spread is _MISSING:
                # Each staged column from the plan's values; an absent one from one more, NULL.
                within = set(plan.columns)
                absent = len(plan.columns)
                spread = self._spreads[plan.columns] = (
                    None
                    if plan.columns == self.columns
                    else itemgetter(
                        *[plan.columns.index(c) if c in within else absent for c in self.columns]
                    )
                )
            if len(self._layouts) >= 4096:  # a source of ever new sets: keep memory flat
                self._layouts.clear()
            layout = (column_set, str(column_set), spread)
            self._layouts[(plan.columns, plan.carried)] = layout
        self._column_sets.add(layout[0])
        self._plan, self._layout, self._key_of = plan, layout, plan.key_of

    def seen_keys(self) -> bytes:
        """The bits of every key hash this encoder has met."""
        return bytes(self._seen)

    def flush(
        self, rejects: list[Reject], records: int, unknown_fields: frozenset[str]
    ) -> ParsedChunk:
        """The chunk collected so far (with the reader's rejects and counts); start anew."""
        duplicates = len(self._rows) - len(self._latest)
        rows = self._rows
        if duplicates:
            kept = set(map(id, self._latest.values()))
            rows = [r for r in rows if id(r) in kept]
        groups = []
        if rows:
            sets = frozenset(self._column_sets)
            if self.as_copy_text:
                # Bytes: the loading process hands them to COPY as they are (a str would
                # be copied into a StringIO at four bytes a character).
                body = ("\n".join(rows) + "\n").encode()
                groups.append(StagedGroup(self.columns, sets, copy_text=body))
            else:
                groups.append(StagedGroup(self.columns, sets, rows=rows))
        chunk = ParsedChunk(
            groups=groups,
            rejects=rejects,
            records=records,
            first=self._first,
            last=self._last,
            unknown_fields=unknown_fields,
            duplicates=duplicates,
            maybe_repeats=self._maybe_repeats,
        )
        self._start()
        return chunk


def newer(mine: Any, theirs: Any) -> bool:
    """Whether a record modified at ``mine`` wins over an earlier one of its key at ``theirs``.

    The newest wins; on a tie, or when neither has a time, the later record. One
    without a time loses to one with a time (the database ranks repeats alike).
    """
    if theirs is None:
        return True
    return mine is not None and mine >= theirs


def seen_before(seen: bytes, key_hashes: Iterable[int]) -> list[int]:
    """The hashes whose bit another encoder's ``seen_keys()`` has set (a superset of repeats)."""
    mask = _SEEN_BITS - 1
    return [h for h in key_hashes if seen[(h & mask) >> 3] & (1 << (h & 7))]


@dataclass(frozen=True)
class SecondHalf:
    """Where the rows of a source's second half stand, once its first half is counted.

    The second half's rows are numbered from SECOND_HALF + 1 while they are read:
    their order among themselves and after the first half is right, only the
    numbers are not. Stored rejects are renumbered with this at the end.
    """

    first_half_records: int

    def in_second_half(self, position: Any) -> Any:
        """Whether a provisional position is the second half's (a number or a column)."""
        return position > SECOND_HALF

    def source_position(self, position: Any) -> Any:
        """A second half's provisional position as its real one (a number or a column)."""
        return position - SECOND_HALF + self.first_half_records


@dataclass(frozen=True)
class SplitEnd:
    """The last message of a read in two halves: the second half's positions, and repeats.

    ``maybe_repeats`` are key hashes of the second half that the first half's reader
    also met (a superset of the keys the two halves share).
    """

    second_half: SecondHalf
    maybe_repeats: list[int]
