"""Raw source record → column values for one view, or a Reject with its reason. No I/O.

Coercions (product.md "Values"): day-first slashed dates; a value with an
explicit offset is converted to ``OTC_TIMEZONE`` and stored naive; decimal
comma; yes/no booleans; blank means NULL; text is kept exactly as given.
Dates repeat a lot in real exports, so parsed values are cached per string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Boolean, DateTime, Integer, Numeric

from . import names
from .errors import ConfigError
from .sources.records import RefusedRecord
from .views import View

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# Longer text is no whole number that fits a column, whatever it holds: refused before
# int() or Decimal() work through it (a million digits cost them minutes).
MAX_NUMBER_TEXT = 100
# Decimal exponents a number column keeps on both databases (SQLite stores a double):
# 1e200000 is refused here rather than by PostgreSQL while staging.
MAX_NUMBER_EXPONENT = 300
CACHE_LIMIT = 10_000  # parsed strings remembered per column: dates, hours, flags repeat; ids do not
_MISSING = object()

Coercer = Callable[[Any], Any]


class CoercionError(ValueError):
    """A value that cannot be stored in its column; the message is the reason."""


@dataclass(frozen=True)
class Reject:
    """A record that is not loaded: which field, which value, and why."""

    position: int
    field: str | None
    value: str | None
    reason: str
    record: Any


@dataclass(frozen=True)
class Plan:
    """How to parse records that carry one particular set of fields."""

    columns: tuple[str, ...]  # column keys this record set fills, in order
    # (source field, coercer, cache of parsed strings or None for text) per column
    steps: tuple[tuple[str, Coercer, dict[str, Any] | None], ...]
    missing_required: str | None  # a required field the records lack entirely
    unknown: tuple[str, ...]  # fields of the source this view does not know
    required_slots: tuple[int, ...] = ()  # positions in `columns` that must not be NULL
    # record -> column values; raises CoercionError or BlankKey for a record to reject
    convert: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
    # column values -> the view's key (one value, or a tuple of them)
    key_of: Callable[[tuple[Any, ...]], Any] | None = None
    # The columns the records carry, when fewer than ``columns`` (records whose fields
    # vary: the values of the others are NULL, and never written).
    carried: tuple[str, ...] | None = None


class BlankKey(ValueError):
    """A required key field is present but blank."""


class OtherFields(LookupError):
    """A record does not carry exactly the fields of the plan tried on it."""


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


# --- coercers ---------------------------------------------------------------------------


def coerce_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if "\x00" in value:
            raise CoercionError("contains a NUL character, which the database cannot store")
        if not value.isprintable() and _has_lone_surrogate(value):
            raise CoercionError("contains a lone surrogate, which is not Unicode text")
        return value  # kept exactly as given: ' PendingAssignment' keeps its space
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # spreadsheets hand codes like 1234 back as 1234.0
    if isinstance(value, datetime | date | time):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, int | float | Decimal):
        return str(value)
    raise CoercionError(f"is a {type(value).__name__}, not text")


def coerce_integer(value: Any) -> int | None:
    if _is_blank(value):
        return None
    if isinstance(value, bool):
        raise CoercionError("is a boolean, not a whole number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float | Decimal):
        if not math.isfinite(value):
            raise CoercionError("is not a whole number")
        if isinstance(value, Decimal) and value.adjusted() > 18:
            # Before int(), which would spell out all of 1e200000's digits.
            raise CoercionError("is out of range for an INTEGER column")
        if value != int(value):
            raise CoercionError("is not a whole number")
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_NUMBER_TEXT:
            raise CoercionError(f"is out of range for an INTEGER column ({len(text):,} characters)")
        try:
            number = int(text)
        except ValueError:
            try:
                as_decimal = Decimal(text.replace(",", "."))
            except InvalidOperation:
                raise CoercionError("is not a whole number") from None
            if not as_decimal.is_finite() or as_decimal != as_decimal.to_integral_value():
                raise CoercionError("is not a whole number") from None
            if as_decimal.adjusted() > 18:
                raise CoercionError("is out of range for an INTEGER column") from None
            number = int(as_decimal)
    else:
        raise CoercionError(f"is a {type(value).__name__}, not a whole number")
    if not INT32_MIN <= number <= INT32_MAX:
        raise CoercionError("is out of range for an INTEGER column")
    return number


def coerce_numeric(value: Any) -> Decimal | None:
    if _is_blank(value):
        return None
    if isinstance(value, bool):
        raise CoercionError("is a boolean, not a number")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_NUMBER_TEXT:
            raise CoercionError(f"is too long for a number ({len(text):,} characters)")
        if "," in text:
            if "." in text:
                raise CoercionError("mixes decimal comma and point")
            text = text.replace(",", ".")  # decimal comma: "1,5" hours
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise CoercionError("is not a number") from None
    else:
        raise CoercionError(f"is a {type(value).__name__}, not a number")
    if not number.is_finite():
        raise CoercionError("is not a finite number")
    if not _exponent_in_range(number):
        raise CoercionError(
            f"is out of range for a number column (between 1e-{MAX_NUMBER_EXPONENT} "
            f"and 1e{MAX_NUMBER_EXPONENT}, or 0)"
        )
    return number


def _exponent_in_range(number: Decimal) -> bool:
    """Whether a finite Decimal's digits stay within ±MAX_NUMBER_EXPONENT (zero always does)."""
    return not number or -MAX_NUMBER_EXPONENT <= number.adjusted() <= MAX_NUMBER_EXPONENT


def _has_lone_surrogate(text: str) -> bool:
    """Whether text holds a surrogate code point (never valid on its own; UTF-8 cannot hold it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_TRUE = frozenset({"yes", "y", "true", "t", "1"})
_FALSE = frozenset({"no", "n", "false", "f", "0"})


def coerce_boolean(value: Any) -> bool | None:
    if _is_blank(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise CoercionError("is not a yes/no value (Yes, No, Y, N, true, false, 1, 0)")


_SLASHED = re.compile(
    r"^(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})"
    r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?(?:\s*([AaPp])\.?[Mm]\.?)?)?$"
)
DATE_ORDERS = ("dmy", "mdy")  # OTC_DATE_ORDER / --date-order: how slashed dates read
OTHER_DATE_ORDER = ", but reads as "  # in the reason of a date valid only in the other order
# Spreadsheets count days from this date (1900 date system, Lotus's leap-day bug included
# for every date after February 1900); their largest date is 9999-12-31.
_EXCEL_EPOCH = datetime(1899, 12, 30)
_EXCEL_SERIAL_MAX = 2958466


def _slashed_moment(groups: tuple[str | None, ...], date_order: str) -> datetime:
    """The datetime of a _SLASHED match read in ``date_order``; ValueError when invalid."""
    first, second, year, hour, minute, second_of_minute, fraction, half = groups
    day, month = (first, second) if date_order == "dmy" else (second, first)
    assert day is not None and month is not None and year is not None
    years = int(year)
    if len(year) == 2:
        years += 2000 if years < 30 else 1900  # Excel's pivot for two-digit years
    hours = int(hour or 0)
    if half is not None:
        if not 1 <= hours <= 12:
            raise ValueError("not a 12-hour time")
        hours = hours % 12 + (12 if half in "Pp" else 0)
    return datetime(
        years,
        int(month),
        int(day),
        hours,
        int(minute or 0),
        int(second_of_minute or 0),
        int((fraction or "0").ljust(6, "0")),
    )


class DateTimeCoercer:
    """Parses OTC's date formats to naive datetimes in the target timezone.

    Slashed dates are day-first by contract (``date_order`` "dmy"); "mdy" reads
    them month-first. A number is a spreadsheet's serial date (days since
    1899-12-30, the fraction the time of day): XLSX cells hold dates that way.
    """

    def __init__(self, timezone: tzinfo, date_order: str = "dmy") -> None:
        self.timezone = timezone
        self.date_order = date_order

    def _naive(self, moment: datetime) -> datetime:
        if moment.tzinfo is not None:
            return moment.astimezone(self.timezone).replace(tzinfo=None)
        return moment

    def _parse_text(self, text: str) -> datetime:
        if "/" not in text:
            try:
                # Python 3.11 reads ISO 8601 with 'Z', offsets, a space or a 'T'.
                return self._naive(datetime.fromisoformat(text))
            except ValueError:
                raise CoercionError("is not a date (expected ISO 8601 or DD/MM/YYYY)") from None
        slashed = _SLASHED.match(text)
        if slashed:
            try:
                return _slashed_moment(slashed.groups(), self.date_order)
            except ValueError:
                raise CoercionError(self._wrong_order(slashed.groups())) from None
        raise CoercionError("is not a date (expected ISO 8601 or DD/MM/YYYY)")

    def _wrong_order(self, groups: tuple[str | None, ...]) -> str:
        """Why a slashed date is invalid, naming the setting when the other order reads it."""
        other = "mdy" if self.date_order == "dmy" else "dmy"
        this = "day-first date (DD/MM/YYYY)"
        if self.date_order == "mdy":
            this = "month-first date (MM/DD/YYYY)"
        try:
            _slashed_moment(groups, other)
        except ValueError:
            return f"is not a valid {this}"
        that = "month-first" if other == "mdy" else "day-first"
        return (
            f"is not a valid {this}{OTHER_DATE_ORDER}{that}: if the file's dates are "
            f"{that}, load it with OTC_DATE_ORDER={other} or --date-order {other}"
        )

    def __call__(self, value: Any) -> datetime | None:
        if _is_blank(value):
            return None
        if isinstance(value, str):
            return self._parse_text(value.strip())
        if isinstance(value, datetime):
            return self._naive(value)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day)
        if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            if not (isinstance(value, int) or math.isfinite(value)) or not (
                1 <= value < _EXCEL_SERIAL_MAX
            ):
                raise CoercionError("is a number outside the range of spreadsheet dates")
            # Rounded to the second: a serial's fraction of a day is seldom exact in binary.
            return _EXCEL_EPOCH + timedelta(seconds=round(float(value) * 86400))
        raise CoercionError(f"is a {type(value).__name__}, not a date")


# --- times of day ("TS-Time From", "TS-Time To") -------------------------------------------

# 7:00, 07:00, 07:00:00, 07:00:00.000, 7:00 AM, 7:00 pm, 7:00 a.m.
_CLOCK_TEXT = re.compile(
    r"^(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?\s*(?:([AaPp])\.?[Mm]\.?)?$"
)
# The dates a spreadsheet puts under a bare time: Excel's zero date (1899-12-30, shown
# by some tools as 1899-12-31 or "1900-01-00") and the 1904 date system's day zero.
_ZERO_DATES = frozenset({date(1899, 12, 30), date(1899, 12, 31), date(1904, 1, 1)})
_TIME_HINT = "expected a time of day such as 07:00, 7:00 or 7:00 PM"


def _clock(seconds: float, shown: Any) -> str:
    """``HH:MM`` for a number of seconds since midnight, rounded to the second.

    Spreadsheets keep times as fractions of a day, so 07:00 may come back as
    06:59:59.9999: rounding to the second first keeps it 07:00, and a time that
    still has seconds is refused rather than silently truncated (it would be a
    different key).
    """
    whole = round(seconds)
    if not 0 <= whole < 86400:
        raise CoercionError(f"is outside 00:00–23:59 ({_TIME_HINT})")
    minutes, second = divmod(whole, 60)
    if second:
        raise CoercionError(f"has seconds ({shown}); OTC times are whole minutes, e.g. 07:00")
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _clock_text(text: str) -> str:
    match = _CLOCK_TEXT.match(text)
    if match is None:
        try:
            moment = datetime.fromisoformat(text)  # a time cell written with its zero date
        except ValueError:
            try:
                share = Decimal(text)  # a time cell written as its fraction of a day
            except InvalidOperation:
                raise CoercionError(f"is not a time of day ({_TIME_HINT})") from None
            return coerce_time_of_day(share) or ""
        return coerce_time_of_day(moment) or ""
    hour, minute, second, fraction, half = match.groups()
    hours, minutes = int(hour), int(minute)
    if half is not None:
        if not 1 <= hours <= 12:
            raise CoercionError(f"is not a 12-hour time ({_TIME_HINT})")
        hours = hours % 12 + (12 if half in "Pp" else 0)
    if hours > 23 or minutes > 59:
        raise CoercionError(f"is outside 00:00–23:59 ({_TIME_HINT})")
    if (second is not None and second != "00") or (fraction and fraction.strip("0")):
        raise CoercionError(f"has seconds ({text}); OTC times are whole minutes, e.g. 07:00")
    return f"{hours:02d}:{minutes:02d}"


def coerce_time_of_day(value: Any) -> str | None:
    """A time of day as ``HH:MM`` (zero-padded, 24-hour): the one spelling every source gives.

    "TS-Time From" is part of the timesheet's key, so 7:00, 07:00:00, 7:00 AM,
    a spreadsheet time cell and 0.2916… (its fraction of a day) must all be the
    same text, or one entry loaded from two formats becomes two rows.
    """
    if value.__class__ is str:
        if len(value) == 5 and value[2] == ":" and value[:2].isdigit() and value[3:].isdigit():
            if value < "24" and value[3] < "6":  # the API's and our exports' own spelling
                return value
        text = value.strip()
        if not text:
            return None
        return _clock_text(text)
    if value is None:
        return None
    if isinstance(value, bool):
        raise CoercionError(f"is a boolean, not a time of day ({_TIME_HINT})")
    if isinstance(value, datetime):
        if value.date() not in _ZERO_DATES:
            raise CoercionError(f"is a date and time, not a time of day ({_TIME_HINT})")
        value = value.time()
    if isinstance(value, time):
        seconds = value.hour * 3600 + value.minute * 60 + value.second
        return _clock(seconds + value.microsecond / 1e6, value.isoformat())
    if isinstance(value, timedelta):
        return _clock(value.total_seconds(), value)
    if isinstance(value, int | float | Decimal):
        if not (isinstance(value, int) or math.isfinite(value)) or not 0 <= value < 1:
            raise CoercionError(
                f"is not a time of day ({_TIME_HINT}; as a number, a fraction of a day below 1)"
            )
        return _clock(float(value) * 86400, value)
    raise CoercionError(f"is a {type(value).__name__}, not a time of day")


@dataclass(frozen=True)
class TextFormat:
    """How a bulk load takes values as text; the Parser is handed one (see copy_text.py).

    Numbers, flags, dates and times of day come out as Python prints them; a
    format decides how NULL is written and how text is escaped.
    """

    null: str
    as_text: Callable[[Any], str]  # any parsed value (None too) as one field
    escaped: str  # printable characters that text must have escaped (control ones always are)


class _TextCoercers:
    """The coercers of one TextFormat: the same rules, with a fast path for the values JSON
    exports mostly carry (measured: dates, ids and hours that miss the cache are ~2/3 of
    parsing)."""

    def __init__(self, text_format: TextFormat) -> None:
        self.null = text_format.null
        self.as_text = text_format.as_text

    def text(self, value: Any) -> str:
        return self.as_text(coerce_text(value))

    def time_of_day(self, value: Any) -> str:
        canonical = coerce_time_of_day(value)
        return self.null if canonical is None else canonical  # HH:MM needs no escaping

    def integer(self, value: Any) -> str:
        if value.__class__ is int and INT32_MIN <= value <= INT32_MAX:
            return str(value)
        return self.as_text(coerce_integer(value))

    def numeric(self, value: Any) -> str:
        if (
            value.__class__ is Decimal
            and value.is_finite()
            and -MAX_NUMBER_EXPONENT <= value.adjusted() <= MAX_NUMBER_EXPONENT
        ):
            return str(value)
        return self.as_text(coerce_numeric(value))

    def boolean(self, value: Any) -> str:
        return self.as_text(coerce_boolean(value))


def _prints_as_itself(text: str) -> bool:
    """Whether a string fromisoformat() read is already how PostgreSQL prints a timestamp."""
    return (
        len(text) == 19
        and text[4] == text[7] == "-"
        and text[10] == " "
        and text[13] == text[16] == ":"
    )


class DateTimeAsText(DateTimeCoercer):
    """Timestamps as text, NULL written as ``null``."""

    def __init__(self, timezone: tzinfo, date_order: str = "dmy", null: str = "") -> None:
        super().__init__(timezone, date_order)
        self.null = null

    def __call__(self, value: Any) -> str:  # type: ignore[override]
        if value.__class__ is str:
            try:
                moment: datetime | None = datetime.fromisoformat(value)
            except ValueError:
                moment = super().__call__(value)  # day-first, padded, blank or not a date
            else:
                assert moment is not None
                if moment.tzinfo is None and _prints_as_itself(value):
                    return value
                moment = self._naive(moment)
        else:
            moment = super().__call__(value)
        return self.null if moment is None else moment.isoformat(sep=" ")


def load_timezone(name: str) -> tzinfo:
    """The zone values with an offset are converted to (OTC_TIMEZONE)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"OTC_TIMEZONE={name!r} is not a known time zone; use e.g. UTC or Australia/Sydney"
        ) from None


# --- field names ------------------------------------------------------------------------

_FOLDED: dict[str, dict[str, str]] = {}  # view name -> folded field name -> field name


def match_fields(view: View, fields: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Which source field fills each of the view's fields, and those spelled otherwise.

    An exact name wins. Else a name that is a field's once trimmed of whitespace
    and BOMs (``'TS-Hours '``), else once case and inner spacing are folded
    (``'ts-hours'``, ``'TS-User  Username'``) is taken for it: a stray space must
    not empty a whole column. Returns (view field -> source field, source field ->
    view field for the names taken that way); the rest of ``fields`` is unknown.
    """
    folded = _FOLDED.get(view.name)
    if folded is None:
        folded = _FOLDED[view.name] = {names.folded(f): f for f in view.fields}
        assert len(folded) == len(view.fields), f"{view.name}: two fields fold alike"
    matched = {f: f for f in fields if f in view.fields}
    renamed: dict[str, str] = {}
    for name in sorted(fields - set(matched)):
        trimmed = names.trimmed(name)
        target = trimmed if trimmed in view.fields else folded.get(names.folded(name))
        if target is not None and target not in matched:
            matched[target] = name
            renamed[name] = target
    return matched, renamed


# --- the parser -------------------------------------------------------------------------


# Plans compiled for as many sets of fields; records of further sets go through one
# plan of every field (see Parser._varying_plan). Plans kept for reuse: at most PLANS_KEPT.
COMPILED_PLANS = 8
PLANS_KEPT = 4096


@dataclass
class Parser:
    """Parses raw records of one view; remembers unknown fields for the run's warnings.

    Given a ``text_format`` (COPY's, for PostgreSQL) every value comes out as one
    field of it, and the caches keep that text: a cached date is then formatted
    once per distinct string, not once per row.
    """

    view: View
    timezone: tzinfo
    text_format: TextFormat | None = None
    date_order: str = "dmy"  # how slashed dates read: "dmy" (the contract) or "mdy"
    unknown_fields: set[str] = field(default_factory=set)
    # source field -> the view's field it was taken for (spelled otherwise: 'TS-Hours ')
    renamed_fields: dict[str, str] = field(default_factory=dict)
    _plans: dict[tuple[str, ...], Plan] = field(default_factory=dict)
    _plans_by_set: dict[frozenset[str], Plan] = field(default_factory=dict)
    _last_plan: Plan | None = None  # records of one source nearly always share their fields
    _whole_plan: Plan | None = None  # every field of the view: what varying records go through
    _key_fields: frozenset[str] = frozenset()  # the source fields no varying record may lack
    _every_field: list[str] = field(default_factory=list)  # the whole plan's fields
    _unmatched: set[str] = field(default_factory=set)  # unknown names that match no field
    _coercers: dict[str, Coercer] = field(default_factory=dict)
    _caches: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    _null: str | None = None  # NULL as the parser hands it out
    _text: Coercer = coerce_text

    def __post_init__(self) -> None:
        text = None if self.text_format is None else _TextCoercers(self.text_format)
        self._null = None if self.text_format is None else self.text_format.null
        as_text: Coercer = coerce_text if text is None else text.text
        dates: Coercer = (
            DateTimeCoercer(self.timezone, self.date_order)
            if text is None
            else DateTimeAsText(self.timezone, self.date_order, text.null)
        )
        for column in self.view.table.columns:
            coerce: Coercer
            if column.key in self.view.times_of_day:
                coerce = coerce_time_of_day if text is None else text.time_of_day
            elif isinstance(column.type, DateTime):
                coerce = dates
            elif isinstance(column.type, Boolean):
                coerce = coerce_boolean if text is None else text.boolean
            elif isinstance(column.type, Integer):
                coerce = coerce_integer if text is None else text.integer
            elif isinstance(column.type, Numeric):
                coerce = coerce_numeric if text is None else text.numeric
            else:
                coerce = as_text
            self._coercers[column.key] = coerce
            # Text is taken as it is: nothing to remember.
            self._caches[column.key] = None if coerce is as_text else {}
        self._text = as_text

    def plan_for(self, fields: tuple[str, ...]) -> Plan:
        """The plan for records with these fields (in this order); one per set of fields."""
        plan = self._plans.get(fields)
        if plan is None:
            plan = self._plans_by_set.get(frozenset(fields))
            if plan is None:
                plan = None
                if len(self._plans_by_set) >= COMPILED_PLANS:
                    plan = self._varying_plan(fields)
                if plan is None:
                    plan = self._make_plan(set(fields))
                self.unknown_fields.update(map(_printable, plan.unknown))
                if len(self._plans_by_set) < PLANS_KEPT:
                    self._plans_by_set[frozenset(fields)] = plan
            if len(self._plans) < PLANS_KEPT:
                self._plans[fields] = plan
        return plan

    def _varying_plan(self, fields: tuple[str, ...]) -> Plan | None:
        """A plan made in microseconds for records whose fields vary (APIs omit null
        fields: nearly every record has its own set), or None to make a full one.

        Compiling a plan per set of fields took 3 ms each: for such a source, most of
        the load. These plans pass the record, its absent fields as None, through one
        compiled plan of every field of the view, and keep the values of its own
        columns. Only for records whose names are the view's own or unknown (none
        spelled otherwise), key fields present.
        """
        view = self.view
        present = set(fields)
        if len(present) != len(fields):
            return None
        unknown = present - view.fields.keys()
        if unknown - self._unmatched:
            if match_fields(view, unknown)[0]:
                return None  # a field spelled otherwise: the full plan matches it
            self._unmatched |= unknown
        whole = self._whole_plan
        if whole is None:
            whole = self._whole_plan = self._make_plan(set(view.fields))
            self._every_field = [step[0] for step in whole.steps]  # in the plan's order
            self._key_fields = frozenset(view.required) | {view.columns[k] for k in view.key}
        if not self._key_fields <= present:
            return None
        assert whole.convert is not None
        every = self._every_field
        convert_whole, width = whole.convert, len(fields)

        def convert(record: Mapping[str, Any]) -> tuple[Any, ...]:
            if len(record) != width or not present.issuperset(record):
                raise OtherFields  # another set of fields: another plan
            return convert_whole({f: record.get(f) for f in every})

        # Every column's value (NULL where the record lacks the field), and which it
        # carried: the encoder then lays out every such record alike (measured: making
        # a plan and a layout per set of fields was two thirds of reading them).
        return Plan(
            columns=whole.columns,
            steps=whole.steps,
            missing_required=None,
            unknown=tuple(sorted(unknown)) if unknown else (),
            required_slots=whole.required_slots,
            convert=convert,
            key_of=whole.key_of,
            carried=tuple(
                c for c, step in zip(whole.columns, whole.steps, strict=True) if step[0] in present
            ),
        )

    def _make_plan(self, fields: set[str]) -> Plan:
        matched, renamed = match_fields(self.view, fields)
        self.renamed_fields.update(renamed)
        # The view's own field order: records with the same fields in another order share a plan.
        known = [f for f in self.view.fields if f in matched]
        unknown = tuple(sorted(fields - set(matched.values())))
        missing = next((f for f in self.view.required if f not in matched), None)
        if missing is None:
            # Every key column must be in the plan, even where the source may be blank.
            missing = next(
                (
                    self.view.columns[k]
                    for k in self.view.key
                    if self.view.columns[k] not in matched
                ),
                None,
            )
        steps = tuple(
            (matched[f], self._coercers[self.view.fields[f]], self._caches[self.view.fields[f]])
            for f in known
        )
        required_slots = tuple(i for i, f in enumerate(known) if f in self.view.required)
        key_slots = tuple(
            known.index(self.view.columns[k])
            for k in self.view.key
            if self.view.columns[k] in known
        )
        return Plan(
            columns=tuple(self.view.fields[f] for f in known),
            steps=steps,
            missing_required=missing,
            unknown=unknown,
            required_slots=required_slots,
            convert=None
            if missing
            else _compile(
                steps, required_slots, self.text_format, self._text, len(fields), unknown
            ),
            key_of=None if missing else itemgetter(*key_slots),
        )

    def parse(self, position: int, record: Any) -> tuple[Plan, tuple[Any, ...]] | Reject:
        """Column values for ``record`` (with the plan naming their columns), or a Reject."""
        if record.__class__ is not dict and not isinstance(record, Mapping):
            if isinstance(record, RefusedRecord):
                return Reject(
                    position,
                    None if record.field is None else _printable(record.field),
                    _show(record.value),
                    record.reason,
                    _storable(record.record),
                )
            return Reject(
                position, None, _show(record), "record is not an object of fields", record
            )
        plan = self._last_plan
        if plan is not None:
            assert plan.convert is not None
            try:
                return plan, plan.convert(record)
            except LookupError:  # OtherFields, or KeyError: a field of the plan is missing
                pass
            except (CoercionError, BlankKey):
                return self._explain(position, record, plan)
        plan = self.plan_for(tuple(record))
        if plan.missing_required is not None:
            return Reject(
                position, plan.missing_required, None, "key field is missing", _storable(record)
            )
        self._last_plan = plan
        assert plan.convert is not None
        try:
            return plan, plan.convert(record)
        except (CoercionError, BlankKey):
            return self._explain(position, record, plan)

    def _explain(
        self, position: int, record: Any, plan: Plan
    ) -> tuple[Plan, tuple[Any, ...]] | Reject:
        """Field by field, as the compiled plan does, to name the field a record is rejected for."""
        null = self._null
        values: list[Any] = []
        for source_field, coerce, cache in plan.steps:
            raw = record.get(source_field)  # a varying record's plan has fields it lacks
            if raw is None:
                values.append(null)
                continue
            if cache is not None and raw.__class__ is str:
                hit = cache.get(raw, _MISSING)
                if hit is not _MISSING:
                    values.append(hit)
                    continue
            try:
                value = coerce(raw)
            except CoercionError as exc:
                return Reject(position, source_field, _show(raw), f"value {exc}", _storable(record))
            if cache is not None and raw.__class__ is str and len(cache) < CACHE_LIMIT:
                cache[raw] = value
            values.append(value)
        for index in plan.required_slots:
            if values[index] is null:
                field_name = plan.steps[index][0]
                return Reject(
                    position,
                    field_name,
                    _show(record[field_name]),
                    "key field is blank",
                    _storable(record),
                )
        return plan, tuple(values)


def _remembering(coerce: Coercer, cache: dict[str, Any]) -> Coercer:
    """``coerce`` that also remembers what each string became, up to CACHE_LIMIT strings."""

    def coerce_and_remember(raw: Any) -> Any:
        value = coerce(raw)
        if raw.__class__ is str and len(cache) < CACHE_LIMIT:
            cache[raw] = value
        return value

    return coerce_and_remember


def _remembering_timestamp_text(coerce: DateTimeAsText, cache: dict[str, Any]) -> Coercer:
    """``_remembering`` for timestamps as COPY text, the shapes exports use most done here.

    Modification times rarely repeat, so they are the parser's most frequent cache
    miss (measured: about 90% of a timesheet export's), and ``coerce`` takes 1.5 to
    2 µs a value. Here: 'YYYY-MM-DD HH:MM:SS' is already how PostgreSQL prints the
    value and only needs validating; other ISO 8601 goes through ``fromisoformat``
    (an offset converted as ``coerce`` does); 'DD/MM/YYYY', 'DD/MM/YYYY HH:MM' and
    'DD/MM/YYYY HH:MM:SS' (or month-first, as ``coerce`` reads them) are rewritten as
    ISO and validated the same way.
    ``fromisoformat`` does the validating, in C. Anything else, and every invalid
    value, goes through ``coerce``, which reads the other forms or gives the reason.
    """
    fromisoformat = datetime.fromisoformat
    timezone = coerce.timezone
    day_first = coerce.date_order == "dmy"

    def coerce_and_remember(raw: str) -> Any:
        size = len(raw)
        value = None
        try:
            if (
                size == 19
                and raw[10] == " "
                and raw[4] == raw[7] == "-"
                and raw[13] == raw[16] == ":"
            ):
                fromisoformat(raw)  # 19 characters in this shape leave no room for an offset
                value = raw
            elif "/" not in raw:
                moment = fromisoformat(raw)
                if moment.tzinfo is not None:
                    moment = moment.astimezone(timezone).replace(tzinfo=None)
                value = moment.isoformat(sep=" ")
            elif (
                size in (10, 16, 19)
                and raw[2] == raw[5] == "/"
                and (size == 10 or (raw[10] == " " and raw[13] == ":"))
                and (size != 19 or raw[16] == ":")
            ):
                time_of_day = (
                    " 00:00:00" if size == 10 else raw[10:] + (":00" if size == 16 else "")
                )
                day, month = (raw[:2], raw[3:5]) if day_first else (raw[3:5], raw[:2])
                iso = f"{raw[6:10]}-{month}-{day}{time_of_day}"
                fromisoformat(iso)
                value = iso
        except ValueError:
            value = None
        if value is None:
            value = coerce(raw)  # raises the reason for a value that is no date
        if len(cache) < CACHE_LIMIT:
            cache[raw] = value
        return value

    return coerce_and_remember


def _compile(
    steps: tuple[tuple[str, Coercer, dict[str, Any] | None], ...],
    required_slots: tuple[int, ...],
    text_format: TextFormat | None,
    text: Coercer,
    width: int,
    unknown: tuple[str, ...],
) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function turning one record into its column values, written out field by field.

    Parsing is the loader's hot loop and a loop over the fields costs more than
    the work it does: like dataclasses' generated __init__, the plan's steps are
    written out as straight-line code once per set of fields. Text is taken as
    given (as text, when it holds nothing to escape); other strings are looked up
    in their column's cache first (exports repeat dates, hours and flags
    endlessly). A record with other fields than the plan's raises OtherFields
    or KeyError (so one plan can be tried on the next record without looking its
    fields up: it fits if it has as many fields, the plan's unknown ones among
    them, and every known one). The names in the code are this view's own field
    names as repr'd literals, never text read from a source.
    """
    namespace: dict[str, Any] = {
        "text": text,
        "NULL": None if text_format is None else text_format.null,
        "MISSING": _MISSING,
        "BlankKey": BlankKey,
        "OtherFields": OtherFields,
    }
    # A non-empty string is taken as it is unless it holds NUL (refused) or, as text,
    # a control character or a character the format escapes: isprintable() finds NUL
    # and the control characters in one pass.
    if text_format is not None:
        needs_work = " or ".join(
            ["not {v}.isprintable()"]
            + [f"ESCAPED{i} in {{v}}" for i in range(len(text_format.escaped))]
        )
        namespace.update({f"ESCAPED{i}": c for i, c in enumerate(text_format.escaped)})
    else:
        needs_work = "NUL in {v}"
    namespace.update(NUL="\x00")
    lines = ["def convert(record):", f"    if len(record) != {width}:", "        raise OtherFields"]
    if unknown:
        # The source's own names stay data (never code): checked from the namespace.
        namespace["UNKNOWN"] = unknown
        lines += [
            "    for name in UNKNOWN:",
            "        if name not in record:",
            "            raise OtherFields",
        ]
    for i, (source_field, coerce, cache) in enumerate(steps):
        v = f"v{i}"
        lines.append(f"    {v} = record[{source_field!r}]")
        if cache is None:
            # Blanks are common in exports: NULL without a call.
            lines += [
                f"    if {v}.__class__ is str:",
                f"        if not {v}:",
                f"            {v} = NULL",
                f"        elif {needs_work.format(v=v)}:",
                f"            {v} = text({v})",
                f"    elif {v} is None:",
                f"        {v} = NULL",
                "    else:",
                f"        {v} = text({v})",
            ]
        else:
            namespace[f"cache{i}"] = cache
            namespace[f"parse{i}"] = (
                _remembering_timestamp_text(coerce, cache)
                if isinstance(coerce, DateTimeAsText)
                else _remembering(coerce, cache)
            )
            namespace[f"coerce{i}"] = coerce
            lines += [
                f"    if {v}.__class__ is str:",
                f"        hit = cache{i}.get({v}, MISSING)",
                f"        {v} = parse{i}({v}) if hit is MISSING else hit",
                f"    elif {v} is None:",
                f"        {v} = NULL",
                "    else:",
                f"        {v} = coerce{i}({v})",
            ]
    if required_slots:
        blank = " or ".join(f"v{i} is NULL" for i in required_slots)
        lines += [f"    if {blank}:", "        raise BlankKey"]
    lines.append("    return (" + "".join(f"v{i}, " for i in range(len(steps))) + ")")
    exec("\n".join(lines), namespace)  # noqa: S102 - our own generated code, see above
    convert: Callable[[Mapping[str, Any]], tuple[Any, ...]] = namespace["convert"]
    return convert


def _show(value: Any) -> str | None:
    """A value as the reject shows it: at most 200 characters, storable on both databases."""
    if value is None:
        return None
    if isinstance(value, int) and value.bit_length() > 700:
        # repr() of a huge int takes time quadratic in its digits.
        return f"(a whole number of about {int(value.bit_length() * 0.30103):,} digits)"
    text = value if isinstance(value, str) else repr(value)
    return _printable(text if len(text) <= 200 else text[:200] + "…")


def _printable(text: str) -> str:
    """Text the database can store: NUL and lone surrogates spelled as escapes."""
    if text.isprintable():
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


_STORABLE_DEPTH = 100


def _storable(record: Any, depth: int = 0) -> Any:
    """A rejected record as etl_rejects keeps it: lone surrogates spelled as escapes.

    JSON writes NUL as \\u0000 by itself but passes a lone surrogate through, which
    neither database driver can encode. Records are bounded in depth by the reader.
    """
    if isinstance(record, str):
        if record.isprintable():
            return record
        return record.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(record, int) and record.bit_length() > 700:
        return _show(record)
    if depth > _STORABLE_DEPTH:
        return "…"
    if isinstance(record, Mapping):
        return {_storable(k, depth + 1): _storable(v, depth + 1) for k, v in record.items()}
    if isinstance(record, list | tuple):
        return [_storable(v, depth + 1) for v in record]
    return record
