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
from datetime import date, datetime, time, tzinfo
from decimal import Decimal, InvalidOperation
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Boolean, DateTime, Integer, Numeric

from .errors import ConfigError
from .views import View

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
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
        if not math.isfinite(value) or value != int(value):
            raise CoercionError("is not a whole number")
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                as_decimal = Decimal(text.replace(",", "."))
            except InvalidOperation:
                raise CoercionError("is not a whole number") from None
            if not as_decimal.is_finite() or as_decimal != as_decimal.to_integral_value():
                raise CoercionError("is not a whole number") from None
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
    return number


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
    r"^(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?$"
)


class DateTimeCoercer:
    """Parses OTC's date formats to naive datetimes in the target timezone."""

    def __init__(self, timezone: tzinfo) -> None:
        self.timezone = timezone

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
            day, month, year, hour, minute, second, fraction = slashed.groups()
            try:
                return datetime(
                    int(year),
                    int(month),
                    int(day),
                    int(hour or 0),
                    int(minute or 0),
                    int(second or 0),
                    int((fraction or "0").ljust(6, "0")),
                )
            except ValueError:
                raise CoercionError("is not a valid day-first date") from None
        raise CoercionError("is not a date (expected ISO 8601 or DD/MM/YYYY)")

    def __call__(self, value: Any) -> datetime | None:
        if _is_blank(value):
            return None
        if isinstance(value, str):
            return self._parse_text(value.strip())
        if isinstance(value, datetime):
            return self._naive(value)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day)
        raise CoercionError(f"is a {type(value).__name__}, not a date")


COPY_NULL = "\\N"  # NULL in PostgreSQL's COPY text format (a text \N is escaped, never this)

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def as_copy_text(value: Any) -> str:
    """A parsed value as one field of PostgreSQL's COPY text format (None is NULL)."""
    if value is None:
        return COPY_NULL
    if value.__class__ is str:
        # Backslash, tab, newline and carriage return are the format's own characters.
        return str.translate(value, _COPY_ESCAPES)
    if value.__class__ is bool:
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)  # int, Decimal


def text_as_copy_text(value: Any) -> str:
    return as_copy_text(coerce_text(value))


# Text-mode coercers: the same rules, with a fast path for the values JSON exports
# mostly carry (measured: dates, ids and hours that miss the cache are ~2/3 of parsing).


def integer_as_text(value: Any) -> str:
    if value.__class__ is int and INT32_MIN <= value <= INT32_MAX:
        return str(value)
    return as_copy_text(coerce_integer(value))


def numeric_as_text(value: Any) -> str:
    if value.__class__ is Decimal and value.is_finite():
        return str(value)
    return as_copy_text(coerce_numeric(value))


def boolean_as_text(value: Any) -> str:
    return as_copy_text(coerce_boolean(value))


def _prints_as_itself(text: str) -> bool:
    """Whether a string fromisoformat() read is already how PostgreSQL prints a timestamp."""
    return (
        len(text) == 19
        and text[4] == text[7] == "-"
        and text[10] == " "
        and text[13] == text[16] == ":"
    )


class DateTimeAsText(DateTimeCoercer):
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
        return COPY_NULL if moment is None else moment.isoformat(sep=" ")


def load_timezone(name: str) -> tzinfo:
    """The zone values with an offset are converted to (OTC_TIMEZONE)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"OTC_TIMEZONE={name!r} is not a known time zone; use e.g. UTC or Australia/Sydney"
        ) from None


# --- the parser -------------------------------------------------------------------------


@dataclass
class Parser:
    """Parses raw records of one view; remembers unknown fields for the run's warnings.

    With ``as_text`` every value comes out as one field of PostgreSQL's COPY
    text format (NULL as ``\\N``, text escaped), and the caches keep that text:
    a cached date is then formatted once per distinct string, not once per row.
    """

    view: View
    timezone: tzinfo
    as_text: bool = False
    unknown_fields: set[str] = field(default_factory=set)
    _plans: dict[tuple[str, ...], Plan] = field(default_factory=dict)
    _plans_by_set: dict[frozenset[str], Plan] = field(default_factory=dict)
    _last_plan: Plan | None = None  # records of one source nearly always share their fields
    _coercers: dict[str, Coercer] = field(default_factory=dict)
    _caches: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        as_text = self.as_text
        dates = DateTimeAsText(self.timezone) if as_text else DateTimeCoercer(self.timezone)
        for column in self.view.table.columns:
            coerce: Coercer
            if isinstance(column.type, DateTime):
                coerce = dates
            elif isinstance(column.type, Boolean):
                coerce = boolean_as_text if as_text else coerce_boolean
            elif isinstance(column.type, Integer):
                coerce = integer_as_text if as_text else coerce_integer
            elif isinstance(column.type, Numeric):
                coerce = numeric_as_text if as_text else coerce_numeric
            else:
                coerce = text_as_copy_text if as_text else coerce_text
            self._coercers[column.key] = coerce
            self._caches[column.key] = None if coerce in (coerce_text, text_as_copy_text) else {}

    def plan_for(self, fields: tuple[str, ...]) -> Plan:
        """The plan for records with these fields (in this order); one per set of fields."""
        plan = self._plans.get(fields)
        if plan is None:
            plan = self._plans_by_set.get(frozenset(fields))
            if plan is None:
                plan = self._plans_by_set[frozenset(fields)] = self._make_plan(set(fields))
                self.unknown_fields.update(plan.unknown)
            self._plans[fields] = plan
        return plan

    def _make_plan(self, fields: set[str]) -> Plan:
        # The view's own field order: records with the same fields in another order share a plan.
        known = [f for f in self.view.fields if f in fields]
        unknown = tuple(sorted(f for f in fields if f not in self.view.fields))
        missing = next((f for f in self.view.required if f not in fields), None)
        if missing is None:
            # Every key column must be in the plan, even where the source may be blank.
            missing = next(
                (self.view.columns[k] for k in self.view.key if self.view.columns[k] not in fields),
                None,
            )
        steps = tuple(
            (f, self._coercers[self.view.fields[f]], self._caches[self.view.fields[f]])
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
            else _compile(steps, required_slots, self.as_text, len(fields), unknown),
            key_of=None if missing else itemgetter(*key_slots),
        )

    def parse(self, position: int, record: Any) -> tuple[Plan, tuple[Any, ...]] | Reject:
        """Column values for ``record`` (with the plan naming their columns), or a Reject."""
        if record.__class__ is not dict and not isinstance(record, Mapping):
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
            return Reject(position, plan.missing_required, None, "key field is missing", record)
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
        null = COPY_NULL if self.as_text else None
        values: list[Any] = []
        for source_field, coerce, cache in plan.steps:
            raw = record[source_field]
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
                return Reject(position, source_field, _show(raw), f"value {exc}", record)
            if cache is not None and raw.__class__ is str and len(cache) < CACHE_LIMIT:
                cache[raw] = value
            values.append(value)
        for index in plan.required_slots:
            if values[index] is null:
                field_name = plan.steps[index][0]
                return Reject(
                    position, field_name, _show(record[field_name]), "key field is blank", record
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
    'DD/MM/YYYY HH:MM:SS' are rewritten as ISO and validated the same way.
    ``fromisoformat`` does the validating, in C. Anything else, and every invalid
    value, goes through ``coerce``, which reads the other forms or gives the reason.
    """
    fromisoformat = datetime.fromisoformat
    timezone = coerce.timezone

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
                iso = f"{raw[6:10]}-{raw[3:5]}-{raw[:2]}{time_of_day}"
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
    as_text: bool,
    width: int,
    unknown: tuple[str, ...],
) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function turning one record into its column values, written out field by field.

    Parsing is the loader's hot loop and a loop over the fields costs more than
    the work it does: like dataclasses' generated __init__, the plan's steps are
    written out as straight-line code once per set of fields. Text is taken as
    given (for COPY, when it holds nothing to escape); other strings are looked up
    in their column's cache first (exports repeat dates, hours and flags
    endlessly). A record with other fields than the plan's raises OtherFields
    or KeyError (so one plan can be tried on the next record without looking its
    fields up: it fits if it has as many fields, the plan's unknown ones among
    them, and every known one). The names in the code are this view's own field
    names as repr'd literals, never text read from a source.
    """
    namespace: dict[str, Any] = {
        "text": text_as_copy_text if as_text else coerce_text,
        "NULL": COPY_NULL if as_text else None,
        "MISSING": _MISSING,
        "BlankKey": BlankKey,
        "OtherFields": OtherFields,
    }
    # A non-empty string is taken as it is unless it holds NUL (refused) or, for COPY,
    # a control character or a backslash (escaped): isprintable() finds NUL and the
    # control characters in one pass.
    if as_text:
        needs_work = "not {v}.isprintable() or BACKSLASH in {v}"
    else:
        needs_work = "NUL in {v}"
    namespace.update(BACKSLASH="\\", NUL="\x00")
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
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:200] + "…"
