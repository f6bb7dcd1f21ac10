"""Keep hostile JSON away from the C parser: the bytes are checked before ijson reads them.

ijson (yajl) builds what it reads, so a few kilobytes can cost gigabytes or crash
the reading process: 20,000 nested arrays build a prefix string per level
(memory quadratic in the depth), an integer of more than 4,300 digits makes the
C backend dereference NULL (signal 11), a longer one takes minutes to convert,
and a lone surrogate escape (``\\udfff``) fails the whole file while ``\\ud800``
silently becomes ``?``.

:class:`JsonGuard` sits between the bytes and ijson. Most chunks pass untouched
after a few whole-chunk byte operations (in C): the bytes outside strings are
followed to know the nesting depth, and long digit runs and surrogate escapes are
looked for. Only a chunk where one of those is found is walked token by token,
and the offending value is replaced by a marker string (a NUL, which no stored
value can hold, then the reason). :meth:`JsonGuard.checked` then turns the record
holding a marker into a :class:`~otc_pipeline.sources.records.RefusedRecord`, so
that record alone is rejected. No database imports here.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Mapping
from typing import Any

from .records import RefusedRecord

MAX_DEPTH = 32  # nesting levels, envelope included: an OTC record has one
MAX_NUMBER_DIGITS = 1000  # digits in one number: an OTC number has at most 20

MARKER = "\x00otc:"  # starts the text that replaces a refused value
_MARKER_END = "\x00"

# Everything but quotes and brackets, deleted to leave a chunk's structure.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_NOT_KEYS = bytes(b for b in range(256) if b not in b'"[]{}:')  # ...and the colons
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_RUN = b"0" * (MAX_NUMBER_DIGITS + 1)
_STRING = re.compile(rb'"[^"]*"')
# Every escape: a surrogate pair (12 bytes), a surrogate alone (6), or any other.
_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\\."
)
_SAMPLE_STEP = MAX_NUMBER_DIGITS // 2  # a longer digit run holds two samples in a row
# Token by token (the careful walk): outside strings, then inside one.
_OUTSIDE = re.compile(rb'["\[\]{}]|-?[0-9][0-9.eE+\-]*')
_INSIDE = re.compile(
    rb'"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}'
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\\."
)
_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")
_NUMBER_BYTES = frozenset(b"0123456789.eE+-")
_NUMBER_CHARS = re.compile(rb"[0-9.eE+\-]*")
_TAIL_NUMBER = re.compile(rb"[0-9.eE+\-]+\Z")


def _marker(reason: str) -> bytes:
    """A JSON string holding the marker and the reason (ASCII, so valid in any chunk)."""
    return json.dumps(MARKER + reason + _MARKER_END).encode()


class JsonGuard:
    """Filters a JSON byte stream, chunk by chunk, so ijson never sees a hostile value.

    Feed every chunk through :meth:`feed` and the end through :meth:`end`, in order;
    what they return is what the parser gets. A few bytes may be held back until
    the next chunk (a number or an escape cut in two by the chunk boundary).
    """

    def __init__(self, records_prefix: str | None = None) -> None:
        # With the records' ijson prefix ("message.data.item"), fields named twice in a
        # record are found too (see _KeyCounter); without it (ijson.parse users), not.
        self._keys = None if records_prefix is None else _KeyCounter(records_prefix)
        self._held = b""  # the end of the last chunk, kept until what it starts is whole
        self._in_string = False
        self._depth = 0
        self._dropping_to: int | None = None  # dropping a value nested too deep, to this depth
        self._dropping_number = False  # dropping the rest of a number too long to read
        self._lone_surrogate = False
        self.markers = 0  # refused values replaced so far
        self._found = 0  # markers found in records so far

    def feed(self, chunk: bytes) -> bytes:
        """The chunk as the parser may read it."""
        data = self._held + chunk if self._held else chunk
        cut = _hold_from(data)
        self._held = data[cut:]
        return self._filter(data[:cut])

    def end(self) -> bytes:
        """What was held back, at the end of the stream."""
        data, self._held = self._held, b""
        return self._filter(data)

    def _filter(self, data: bytes) -> bytes:
        if not data:
            return data
        if self._dropping_to is None and not self._dropping_number and self._plain(data):
            return data
        passed = self._walk(data)
        if self._keys is not None:
            self._keys.walk(passed)
        return passed

    def _plain(self, data: bytes) -> bool:
        """Follow the structure of a chunk with whole-chunk operations; False: walk it.

        Measured on a timesheet export: about a third of ijson's own time.
        """
        if _has_long_digit_run(data):
            return False
        scanned = data
        if data.find(b"\\") >= 0:
            # Escapes removed (an escaped quote is no string's end); a lone surrogate seen.
            self._lone_surrogate = False
            scanned = _ESCAPE.sub(self._drop_escape, data)
            if self._lone_surrogate:
                return False
        keys = self._keys
        structure = scanned.translate(None, _NOT_STRUCTURE if keys is None else _NOT_KEYS)
        if self._in_string:
            structure = b'"' + structure
        # Adjacent quotes close one string and open the next, or hold nothing between.
        structure = structure.replace(b'""', b"")
        if structure.find(b'"') >= 0:
            # Quotes alternate open and close: the even pieces are outside strings, and
            # an odd count of quotes leaves the chunk inside one. (A split and a join:
            # 3x faster than a regex substitution when colons in times keep quotes.)
            pieces = structure.split(b'"')
            in_string = len(pieces) % 2 == 0
            structure = b"".join(pieces[::2])
        else:
            in_string = False
        keyed = structure
        if keys is not None:
            # Colons outside strings are the keys; the depth below is the brackets'.
            structure = structure.translate(None, b":")
        opening = structure.count(b"[") + structure.count(b"{")
        closing = len(structure) - opening
        # Pairs that open and close at once add one level at most.
        inner = structure.replace(b"{}", b"").replace(b"[]", b"")
        deepest = self._depth + inner.count(b"[") + inner.count(b"{") + (inner != structure)
        if deepest > MAX_DEPTH:
            # Walked instead: _filter gives the walked chunk to the key counter, so it
            # must not have seen it here (followed twice, its counts and state go wrong).
            return False
        if keys is not None:
            # Only now, when the chunk passes as it is: the key counter sees each chunk once.
            keys.plain(keyed, data, in_string)
        self._in_string = in_string
        self._depth += opening - closing
        return True

    def _drop_escape(self, escape: re.Match[bytes]) -> bytes:
        if escape.end() - escape.start() == 6:  # a surrogate escape without its other half
            self._lone_surrogate = True
        return b""

    def _walk(self, data: bytes) -> bytes:
        """Token by token: replace what is nested too deep, too long or a lone surrogate."""
        out: list[bytes] = []
        keep_from = 0  # data[keep_from:position] is passed on as it is
        position, size = 0, len(data)
        while position < size:
            if self._dropping_number:
                position = _NUMBER_CHARS.match(data, position).end()  # type: ignore[union-attr]
                keep_from = position
                if position < size:
                    self._dropping_number = False
                continue
            if self._in_string:
                found = _INSIDE.search(data, position)
                if found is None:
                    break
                token = found.group()
                if token == b'"':
                    self._in_string = False
                elif token.startswith(b"\\u") and len(token) == 6 and self._dropping_to is None:
                    out += [data[keep_from : found.start()], _escaped_marker(token)]
                    keep_from = found.end()
                    self.markers += 1
                position = found.end()
                continue
            found = _OUTSIDE.search(data, position)
            if found is None:
                break
            token = found.group()
            first = token[:1]
            position = found.end()
            if first == b'"':
                self._in_string = True
            elif first in (b"[", b"{"):
                self._depth += 1
                if self._depth > MAX_DEPTH and self._dropping_to is None:
                    self._dropping_to = self._depth - 1
                    out += [
                        data[keep_from : found.start()],
                        _marker(f"nested more than {MAX_DEPTH} levels deep"),
                    ]
                    self.markers += 1
            elif first in (b"]", b"}"):
                self._depth -= 1
                if self._dropping_to is not None and self._depth == self._dropping_to:
                    self._dropping_to = None
                    keep_from = position
            elif self._dropping_to is None and _too_long(token):
                out += [
                    data[keep_from : found.start()],
                    _marker(f"is a number of more than {MAX_NUMBER_DIGITS:,} characters"),
                ]
                self.markers += 1
                keep_from = position
                self._dropping_number = position == size
        if self._dropping_to is None and not self._dropping_number:
            out.append(data[keep_from:])
        return b"".join(out)

    def checked(self, record: Any) -> Any:
        """The record, or a RefusedRecord when it holds a marker or a field named twice."""
        keys = self._keys
        # One comparison per record: ijson keeps the last of a key written twice, so a
        # record with fewer fields than the keys its object held named one twice.
        if keys is not None and record.__class__ is dict and keys.counts:
            if len(record) + 1 != keys.counts.popleft():
                return keys.named_twice(record)
        if self._found >= self.markers:
            return record
        found = _find_marker(record, None, 0)
        if found is None:
            return record
        self._found += 1
        field, value, reason = found
        return RefusedRecord(field, value, reason, _unmarked(record, 0))


# A chunk's structure (brackets and colons outside strings) made only of whole flat
# records, with a record begun at the end: the common case, read by two regexes.
_FLAT_BETWEEN = re.compile(rb"((?:\{:*\})*)(\{:*)?")
_FLAT_INSIDE = re.compile(rb"(:*)(?:\}((?:\{:*\})*)(\{:*)?)?")
_STRUCTURAL = re.compile(rb'["\[\]{}:]')
_STRING_REST = re.compile(rb'(?:[^"\\]|\\.)*"')
_OPEN_BRACE, _OPEN_BRACKET, _COLON, _QUOTE = b"{"[0], b"["[0], b":"[0], b'"'[0]


class _KeyCounter:
    """How many keys each record object held in the bytes ijson was given.

    ijson builds a dict, which keeps the last value of a key written twice
    (``{"TKT-Status": "New", "TKT-Status": "Closed"}``) and says nothing. A record's
    keys are the colons outside strings directly inside its object, so the guard's
    whole-chunk pass (strings already removed) gives each flat record's count with
    one regex and a split, in C; ``counts`` holds ``keys + 1`` per record object, in
    order, for :meth:`JsonGuard.checked` to compare with the dict's length. Chunks
    that are not only flat records (the envelope, nested values, a walked chunk) are
    followed token by token, which also finds the record array by the envelope's
    keys, so objects elsewhere in the envelope are never taken for records.

    The last chunks are kept (until every record begun in them was checked) so that
    a record found short can be read again to name the field written twice.
    """

    def __init__(self, prefix: str) -> None:
        self.path = tuple(prefix.split(".")[:-1])  # the envelope's keys down to the array
        self.record_depth = len(self.path) + 2  # the depth inside a record object
        self.counts: deque[int] = deque()
        self.depth = 0
        self.in_string = False
        self.in_array = False  # inside the record array (at record_depth - 1 or deeper)
        self.in_record = False  # inside a record *object* (arrays and scalars have no keys)
        self.open = 0  # keys + 1 of the record object being read
        self.pushed = 0  # record objects counted so far
        self._envelope: dict[int, tuple[int, bytes | None]] = {}  # depth: (bracket, key)
        self._text: bytes | None = None  # an envelope string being read
        self._last_text: bytes | None = None
        self._capture: int | None = None  # the record whose keys are collected (a replay)
        self.captured: list[bytes] = []
        self._kept: deque[tuple[tuple[Any, ...], bytes]] = deque()

    # --- following the bytes ---------------------------------------------------------------

    def plain(self, structure: bytes, data: bytes, ends_in_string: bool) -> None:
        """A chunk the guard passed unchanged; ``structure`` is its brackets and colons.

        ``ends_in_string``: the guard's finding that the chunk ends inside a string.
        """
        self._keep(data)
        depth = self.record_depth
        if self.in_array and self.depth == depth - 1:
            flat = _FLAT_BETWEEN.fullmatch(structure)
            if flat is not None:
                self.in_string = ends_in_string
                self._records(flat.group(1), flat.group(2))
                return
        elif self.in_array and self.in_record and self.depth == depth:
            flat = _FLAT_INSIDE.fullmatch(structure)
            if flat is not None:
                self.in_string = ends_in_string
                self.open += len(flat.group(1))
                if len(flat.group(1)) < len(structure):  # the record's "}" is there
                    self.counts.append(self.open)
                    self.pushed += 1
                    self.in_record = False
                    self.depth -= 1
                    self._records(flat.group(2), flat.group(3))
                return
        self._follow(data)

    def walk(self, data: bytes) -> None:
        """A chunk the guard changed (or any chunk): followed token by token."""
        self._keep(data)
        self._follow(data)

    def _records(self, whole: bytes, begun: bytes | None) -> None:
        if whole:
            # "{::}{:}" -> "{::", "{:", "": each piece is a record's keys + 1.
            pieces = whole.split(b"}")
            pieces.pop()
            self.counts.extend(map(len, pieces))
            self.pushed += len(pieces)
        if begun:
            self.in_record = True
            self.open = len(begun)
            self.depth += 1

    def _follow(self, data: bytes) -> None:
        position, size, depth = 0, len(data), self.record_depth
        while position < size:
            if self.in_string:
                end = _STRING_REST.match(data, position)
                stop = size if end is None else end.end() - 1
                if self._text is not None:
                    self._text += data[position:stop]
                if end is None:
                    return
                self.in_string = False
                self._last_text, self._text = self._text, None
                position = end.end()
                continue
            found = _STRUCTURAL.search(data, position)
            if found is None:
                return
            position = found.end()
            char = data[found.start()]
            if char == _QUOTE:
                self.in_string = True
                capturing = self.depth < depth - 1 or (
                    self.in_record and self.depth == depth and self._capture == self.pushed
                )
                self._text = b"" if capturing else None
                self._last_text = None
            elif char == _COLON:
                if self.in_record and self.depth == depth:
                    self.open += 1
                    if self._capture == self.pushed and self._last_text is not None:
                        self.captured.append(self._last_text)
                elif self.depth < depth - 1 and self.depth in self._envelope:
                    self._envelope[self.depth] = (self._envelope[self.depth][0], self._last_text)
            elif char in (_OPEN_BRACE, _OPEN_BRACKET):
                self.depth += 1
                if self.in_array and self.depth == depth:
                    self.in_record = char == _OPEN_BRACE
                    self.open = 1
                elif self.depth < depth - 1:
                    self._envelope[self.depth] = (char, None)
                elif self.depth == depth - 1 and char == _OPEN_BRACKET and self._at_array():
                    self.in_array = True
            else:
                if self.in_record and self.depth == depth:
                    self.counts.append(self.open)
                    self.pushed += 1
                    self.in_record = False
                    if self._capture is not None and self.pushed > self._capture:
                        return
                elif self.in_array and self.depth == depth - 1:
                    self.in_array = False
                self._envelope.pop(self.depth, None)
                self.depth -= 1

    def _at_array(self) -> bool:
        """Whether the array just opened is the records' (its envelope keys match)."""
        for level, key in enumerate(self.path, 1):
            bracket, name = self._envelope.get(level, (None, None))
            if bracket != _OPEN_BRACE or name is None or _text(name) != key:
                return False
        return True

    # --- naming the field written twice ----------------------------------------------------

    def _state(self) -> tuple[Any, ...]:
        return (
            self.depth,
            self.in_string,
            self.in_array,
            self.in_record,
            self.open,
            self.pushed,
            dict(self._envelope),
            self._text,
            self._last_text,
        )

    def _keep(self, data: bytes) -> None:
        kept = self._kept
        kept.append((self._state(), data))
        checked = self.pushed - len(self.counts)
        # A chunk goes once no record begun in it is left to check.
        while len(kept) > 1 and kept[1][0][5] + kept[1][0][3] <= checked:
            kept.popleft()

    def named_twice(self, record: dict[str, Any]) -> RefusedRecord:
        """The record just found short, read again from the kept chunks: its named field."""
        ordinal = self.pushed - len(self.counts) - 1
        replay = _KeyCounter.__new__(_KeyCounter)
        replay.__dict__.update(self.__dict__)
        replay.counts, replay._kept, replay.captured = deque(), deque(), []
        replay._capture = ordinal
        state = self._kept[0][0]  # before the first chunk the record may have begun in
        replay.depth, replay.in_string, replay.in_array, replay.in_record = state[:4]
        replay.open, replay.pushed = state[4:6]
        replay._envelope = dict(state[6])
        replay._text, replay._last_text = state[7:]
        for _state, data in self._kept:
            replay._follow(data)
            if replay.pushed > ordinal:
                break
        names = [_text(key) for key in replay.captured]
        twice = next((name for name in names if names.count(name) > 1), None)
        times = names.count(twice) if twice is not None else 2
        reason = (
            f"named {times} times in one record (a duplicate JSON key): which value is "
            "meant is unknown"
        )
        return RefusedRecord(twice, record.get(twice) if twice else None, reason, record)


def _text(raw: bytes) -> str:
    """A JSON string's text from its bytes between the quotes."""
    try:
        return str(json.loads(b'"' + raw + b'"'))
    except ValueError:
        return raw.decode("utf-8", "replace")


def _has_long_digit_run(data: bytes) -> bool:
    """Whether ``data`` holds more than MAX_NUMBER_DIGITS digits in a row.

    Such a run holds two consecutive samples every _SAMPLE_STEP bytes, so only
    where two samples in a row are digits is the stretch between them looked at.
    """
    samples = data[::_SAMPLE_STEP].translate(_DIGITS_AS_ZERO)
    at = samples.find(b"00")
    while at >= 0:
        start = at * _SAMPLE_STEP
        if data[start : start + _SAMPLE_STEP + 1].isdigit():
            return data.translate(_DIGITS_AS_ZERO).find(_LONG_RUN) >= 0
        at = samples.find(b"00", at + 1)
    return False


def _too_long(token: bytes) -> bool:
    if len(token) > MAX_NUMBER_DIGITS:
        return True
    exponent = max(token.find(b"e"), token.find(b"E"))
    return exponent >= 0 and len(token) - exponent > 10  # Decimal refuses such exponents


def _escaped_marker(escape: bytes) -> bytes:
    """A lone surrogate escape, replaced by a marker inside the string it was in."""
    reason = f"holds a lone surrogate ({escape.decode()}), which is not Unicode text"
    return json.dumps(MARKER + reason + _MARKER_END).encode()[1:-1]


def _hold_from(data: bytes) -> int:
    """Where to cut a chunk so that a number or escape at its end is read whole next time.

    The number first, then the escape: a cut moved back to a backslash never splits
    an escape (a surrogate pair's two halves included), whatever it does to a number.
    """
    cut = len(data)
    if cut and data[cut - 1] in _NUMBER_BYTES:
        window = max(0, cut - MAX_NUMBER_DIGITS - 2)
        tail = _TAIL_NUMBER.search(data, window, cut)
        if tail is not None and tail.start() > window:  # longer: the walk refuses it now
            cut = tail.start()
    backslash = data.find(b"\\", max(0, cut - 12), cut)  # the first: a pair is 12 bytes
    if backslash >= 0:
        cut = backslash
        if cut >= 6 and _HIGH_SURROGATE.fullmatch(data, cut - 6, cut):
            cut -= 6  # the first half of a pair: the two halves stay together
        while cut > 0 and data[cut - 1] == 0x5C:  # a run of backslashes stays together
            cut -= 1
    return cut


def _find_marker(value: Any, field: str | None, depth: int) -> tuple[str | None, Any, str] | None:
    """(field, shown value, reason) of the first marker in a record (depth bounded by the guard)."""
    if isinstance(value, str):
        at = value.find(MARKER)
        if at < 0:
            return None
        end = value.find(_MARKER_END, at + len(MARKER))
        reason = value[at + len(MARKER) : end if end >= 0 else None]
        if value.startswith(MARKER) and (end < 0 or end == len(value) - 1):
            return field, None, f"value {reason}"
        return field, value[:at] + "…" + value[end + 1 :], f"value {reason}"
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = key if field is None else field
            found = _find_marker(key, name, depth + 1) or _find_marker(item, name, depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _find_marker(item, field, depth + 1)
            if found is not None:
                return found
    return None


class GuardedFile:
    """A binary file-like object whose ``read`` goes through a JsonGuard (for ijson)."""

    def __init__(self, raw: Any, guard: JsonGuard | None = None) -> None:
        self.raw = raw
        self.guard = guard or JsonGuard()

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""  # ijson asks for nothing first, to see that it gets bytes
        while True:
            chunk = self.raw.read(size)
            if not chunk:
                return self.guard.end()
            passed = self.guard.feed(chunk)
            if passed:
                return passed  # an empty answer would read as the end of the file

    def tell(self) -> int:
        return int(self.raw.tell())


def _unmarked(value: Any, depth: int) -> Any:
    """The record as etl_rejects shows it: each marker spelled as the reason it holds."""
    if isinstance(value, str):
        while MARKER in value:
            at = value.find(MARKER)
            end = value.find(_MARKER_END, at + len(MARKER))
            end = len(value) if end < 0 else end + 1
            value = f"{value[:at]}(not read: {value[at + len(MARKER) : end].rstrip(_MARKER_END)}){value[end:]}"
        return value
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, Mapping):
        return {_unmarked(k, depth + 1): _unmarked(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_unmarked(v, depth + 1) for v in value]
    return value
