"""Every coercion and reject reason of parse.py (no database needed)."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from otc_pipeline.copy_text import COPY_TEXT, as_copy_text
from otc_pipeline.errors import ConfigError
from otc_pipeline.parse import Parser, Reject, load_timezone
from otc_pipeline.sample import write_sample
from otc_pipeline.sources.files import read_file
from otc_pipeline.views import COMMENTS, TICKETS, TIMESHEETS


def ts(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "TS-User Username": "djewell",
        "TS-Date": "2026-01-05",
        "TS-Time From": "09:15",
        "TS-Crm ID": "1001",
    }
    base.update(fields)
    return base


def parse_one(record: object, view=TIMESHEETS, tz: str = "UTC"):  # type: ignore[no-untyped-def]
    parser = Parser(view, load_timezone(tz))
    result = parser.parse(7, record)
    if isinstance(result, Reject):
        return result
    plan, values = result
    return dict(zip(plan.columns, values, strict=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-05T10:30:00", datetime(2026, 1, 5, 10, 30)),
        ("2026-01-05T10:30:00Z", datetime(2026, 1, 5, 10, 30)),
        ("2026-01-05 10:30:00", datetime(2026, 1, 5, 10, 30)),
        ("2026-01-05T10:30:00+10:00", datetime(2026, 1, 5, 0, 30)),
        ("05/01/2026", datetime(2026, 1, 5)),
        ("05/01/2026 10:30", datetime(2026, 1, 5, 10, 30)),
        ("5/1/2026 7:05:09", datetime(2026, 1, 5, 7, 5, 9)),
        ("2026-01-05", datetime(2026, 1, 5)),
    ],
)
def test_dates_day_first_and_offsets_to_utc(text: str, expected: datetime) -> None:
    assert parse_one(ts(**{"TS-Modified Time": text}))["TS-Modified Time"] == expected


def test_offsets_convert_to_otc_timezone() -> None:
    row = parse_one(ts(**{"TS-Modified Time": "2026-01-05T00:30:00Z"}), tz="Australia/Sydney")
    assert row["TS-Modified Time"] == datetime(2026, 1, 5, 11, 30)  # AEDT is UTC+11
    # A value without an offset is already local: kept as it is.
    row = parse_one(ts(**{"TS-Modified Time": "2026-01-05 00:30"}), tz="Australia/Sydney")
    assert row["TS-Modified Time"] == datetime(2026, 1, 5, 0, 30)


def test_unknown_timezone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OTC_TIMEZONE"):
        load_timezone("Mars/Olympus")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1,5", Decimal("1.5")), ("0.25", Decimal("0.25")), (2, Decimal(2)), (1.75, Decimal("1.75"))],
)
def test_hours_accept_decimal_comma(raw: object, expected: Decimal) -> None:
    assert parse_one(ts(**{"TS-Hours": raw}))["TS-Hours"] == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes", True),
        ("No", False),
        ("Y", True),
        ("n", False),
        ("true", True),
        ("1", True),
        ("0", False),
        (True, True),
        (0, False),
        ("", None),
    ],
)
def test_yes_no_booleans(raw: object, expected: bool | None) -> None:
    assert parse_one(ts(**{"TS-Billable": raw}))["TS-Billable"] is expected


def test_blank_is_null_and_text_is_kept_as_given() -> None:
    row = parse_one(
        {
            "TKT-Ticket ID": "42",
            "TKT-Assigned To User": " PendingAssignment",
            "TKT-Title": "",
            "TKT-Closure Date": "  ",
            "TKT-Account Id": None,
        },
        view=TICKETS,
    )
    assert row["TKT-Assigned To User"] == " PendingAssignment"
    assert row["TKT-Title"] is None
    assert row["TKT-Closure Date"] is None
    assert row["TKT-Account Id"] is None
    assert row["TKT-Ticket ID"] == 42


def test_spreadsheet_numbers() -> None:
    row = parse_one(
        {"TKT-Ticket ID": 42.0, "TKT-SLA": 8.0, "TKT-Created Time": datetime(2026, 1, 1)},
        view=TICKETS,
    )
    assert row == {"TKT-Ticket ID": 42, "TKT-SLA": "8", "TKT-Created Time": datetime(2026, 1, 1)}


def test_comment_fields_map_to_legacy_columns() -> None:
    row = parse_one(
        {"TKTCT-CommentID": "9", "TKTCT-TicketID": "42", "TKTCT-Username": "djewell"}, view=COMMENTS
    )
    assert row == {"comment_id": 9, "ticket_id": 42, "user_name": "djewell"}


@pytest.mark.parametrize(
    ("record", "field", "reason"),
    [
        ({"TS-Date": "not a date"}, "TS-Date", "value is not a date"),
        ({"TS-Date": "31/02/2026"}, "TS-Date", "value is not a valid day-first date"),
        ({"TS-Hours": "abc"}, "TS-Hours", "value is not a number"),
        ({"TS-Hours": "1,5.0"}, "TS-Hours", "value mixes decimal comma and point"),
        ({"TS-Hours": "NaN"}, "TS-Hours", "value is not a finite number"),
        ({"TS-Crm ID": "12.5"}, "TS-Crm ID", "value is not a whole number"),
        ({"TS-Crm ID": "x1"}, "TS-Crm ID", "value is not a whole number"),
        ({"TS-Crm ID": "99999999999"}, "TS-Crm ID", "value is out of range for an INTEGER column"),
        ({"TS-Billable": "maybe"}, "TS-Billable", "value is not a yes/no value"),
        ({"TS-Notes": "a\x00b"}, "TS-Notes", "value contains a NUL character"),
        ({"TS-User Username": ""}, "TS-User Username", "key field is blank"),
        ({"TS-Time From": None}, "TS-Time From", "key field is blank"),
    ],
)
def test_reject_reasons_name_field_and_value(
    record: dict[str, object], field: str, reason: str
) -> None:
    result = parse_one(ts(**record))
    assert isinstance(result, Reject)
    assert result.field == field
    assert result.reason.startswith(reason)
    assert result.position == 7


def test_missing_key_field_is_rejected() -> None:
    record = ts()
    del record["TS-Date"]
    result = parse_one(record)
    assert isinstance(result, Reject)
    assert (result.field, result.reason) == ("TS-Date", "key field is missing")


def test_missing_crm_field_is_rejected_but_blank_crm_is_null() -> None:
    record = ts()
    del record["TS-Crm ID"]
    assert isinstance(parse_one(record), Reject)
    assert parse_one(ts(**{"TS-Crm ID": ""}))["TS-Crm ID"] is None


def test_non_object_record_is_rejected() -> None:
    result = parse_one(["not", "an", "object"])
    assert isinstance(result, Reject)
    assert result.reason == "record is not an object of fields"


def test_unknown_fields_are_collected_once() -> None:
    parser = Parser(TIMESHEETS, load_timezone("UTC"))
    for i in range(3):
        parser.parse(i, ts(**{"TS-Legacy Flag": "x", "Other": 1}))
    assert parser.unknown_fields == {"TS-Legacy Flag", "Other"}


@pytest.mark.parametrize("fmt", ["json", "csv", "xlsx"])
def test_compiled_plans_and_copy_text_agree_with_the_field_by_field_rules(
    tmp_path: Path, fmt: str
) -> None:
    """The compiled fast path, the field-by-field path and the COPY-text parser agree.

    Over messy sample exports (every format, 5% bad rows): the compiled plan gives
    what the step-by-step rules give, record for record, and the COPY-text parser
    gives exactly the text of those values (the fast paths for JSON numbers and
    ISO dates included), or the same reject.
    """
    paths = write_sample(
        tmp_path, tickets=300, timesheets=600, comments=300, fmt=fmt, seed=11, bad_share=0.05
    )
    for view in (TICKETS, TIMESHEETS, COMMENTS):
        values_parser = Parser(view, load_timezone("Australia/Sydney"))
        text_parser = Parser(view, load_timezone("Australia/Sydney"), text_format=COPY_TEXT)
        seen = {"rows": 0, "rejects": 0}
        for position, record in read_file(paths[view.name]):
            parsed = values_parser.parse(position, record)
            as_text = text_parser.parse(position, record)
            if isinstance(parsed, Reject):
                seen["rejects"] += 1
                assert isinstance(as_text, Reject)
                assert (as_text.field, as_text.reason) == (parsed.field, parsed.reason)
                continue
            seen["rows"] += 1
            plan, values = parsed
            assert values_parser._explain(position, record, plan) == parsed
            assert not isinstance(as_text, Reject)
            assert as_text[1] == tuple(as_copy_text(v) for v in values)
        assert seen["rows"] > 250 and seen["rejects"] > 0, (view.name, seen)


@pytest.mark.parametrize("tz", ["UTC", "Australia/Sydney"])
def test_timestamps_as_copy_text_take_the_same_rules_on_every_path(tz: str) -> None:
    """The shapes parsed on the quick path give DateTimeAsText's text, or its reason."""
    from otc_pipeline.parse import CoercionError, DateTimeAsText, _remembering_timestamp_text

    coerce = DateTimeAsText(load_timezone(tz))
    quick = _remembering_timestamp_text(coerce, {})
    values = [
        "2025-10-17 11:27:00",
        "2025-10-17T11:27:00",
        "2025-10-17T11:27:00Z",
        "2025-10-17T11:27:00+10:00",
        "2026-01-05",
        "13/01/2025",
        "20/12/2025 00:00",
        "20/12/2025 23:59:59",
        "5/1/2026 7:05:09",
        "05/01/2026 10:30:00.5",
        "20/12/2025T00:00",
        " 2025-01-01 00:00:00",
        # Not dates, or not these shapes: each must get coerce's answer.
        "20/12/2025 00:00+10",
        "2025-12-20 00:00+10",
        "2025-02-30 00:00:00",
        "2026-01-05 24:00:00",
        "2025-W42-5 11:27:00",
        "31/02/2026",
        "32/01/2026",
        "01/13/2026",
        "29/02/2025",
        "٢٠/١٢/٢٠٢٥",
        "x",
    ]
    for value in values:
        try:
            expected: object = coerce(value)
        except CoercionError as exc:
            expected = ("rejected", str(exc))
        try:
            got: object = quick(value)
        except CoercionError as exc:
            got = ("rejected", str(exc))
        assert got == expected, value


def test_copy_text_of_each_type() -> None:
    assert as_copy_text(None) == "\\N"
    # COPY's own characters are escaped, so a text backslash-N is never NULL.
    assert as_copy_text("a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert as_copy_text("\\N") == "\\\\N"
    assert as_copy_text(True) == "t" and as_copy_text(False) == "f"
    assert as_copy_text(datetime(2026, 1, 5, 9, 15)) == "2026-01-05 09:15:00"
    assert as_copy_text(datetime(2026, 1, 5, 9, 15, 0, 500)) == "2026-01-05 09:15:00.000500"
    assert as_copy_text(Decimal("1.50")) == "1.50"
    assert as_copy_text(-7) == "-7"
    assert as_copy_text(" kept ") == " kept "


def test_a_record_with_other_fields_gets_its_own_plan() -> None:
    """The last record's plan is tried first; a record with other fields never fits it."""
    parser = Parser(TIMESHEETS, load_timezone("UTC"))
    full = ts(**{"TS-Hours": "1,5", "TS-Legacy Flag": "x"})
    plan, values = parser.parse(1, full)  # type: ignore[misc]
    # Same number of fields, but a known field instead of the unknown one: not dropped.
    other = ts(**{"TS-Hours": "1,5", "TS-Notes": "kept"})
    other_plan, other_values = parser.parse(2, other)  # type: ignore[misc]
    assert other_plan is not plan
    assert dict(zip(other_plan.columns, other_values, strict=True))["TS-Notes"] == "kept"
    # Fewer fields, and the same fields in another order: the right plan each time.
    narrow = ts()
    narrow_plan, _ = parser.parse(3, narrow)  # type: ignore[misc]
    assert "TS-Hours" not in narrow_plan.columns
    reordered = dict(reversed(list(full.items())))
    again, again_values = parser.parse(4, reordered)  # type: ignore[misc]
    assert again is plan and again_values == values
    assert parser.unknown_fields == {"TS-Legacy Flag"}


# --- times of day, date order, spreadsheet serials, header spellings ---------------------

TIME_SHAPES = [
    "7:00",
    "07:00",
    "07:00:00",
    "07:00:00.000",
    "7:00 AM",
    "7:00 am",
    "7:00a.m.",
    " 07:00 ",
    time(7, 0),
    time(6, 59, 59, 999_800),  # a spreadsheet's fraction of a day, read back in binary
    datetime(1899, 12, 30, 7, 0),  # a time cell under Excel's zero date
    datetime(1899, 12, 31, 7, 0),
    timedelta(hours=7),
    7 / 24,
    Decimal("0.291666666666667"),  # LibreOffice's 15 digits of 7/24
    "0.2916666666666667",
    "1899-12-30 07:00:00",
]


@pytest.mark.parametrize("shape", TIME_SHAPES, ids=repr)
@pytest.mark.parametrize("as_text", [False, True], ids=["objects", "copy-text"])
def test_every_time_shape_is_one_canonical_key(shape: object, as_text: bool) -> None:
    parser = Parser(TIMESHEETS, load_timezone("UTC"), text_format=COPY_TEXT if as_text else None)
    result = parser.parse(1, ts(**{"TS-Time From": shape, "TS-Time To": shape}))
    assert not isinstance(result, Reject), result
    row = dict(zip(result[0].columns, result[1], strict=True))
    assert (row["TS-Time From"], row["TS-Time To"]) == ("07:00", "07:00")


@pytest.mark.parametrize(
    ("shape", "expected"),
    [("12:00 AM", "00:00"), ("12:30 PM", "12:30"), ("11:59 pm", "23:59"), ("0:05", "00:05")],
)
def test_twelve_hour_times(shape: str, expected: str) -> None:
    assert parse_one(ts(**{"TS-Time To": shape}))["TS-Time To"] == expected


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ("07:00:30", "value has seconds (07:00:30)"),
        (time(7, 0, 30), "value has seconds"),
        ("24:00", "value is outside 00:00–23:59"),
        ("7:60", "value is outside 00:00–23:59"),
        ("13:00 PM", "value is not a 12-hour time"),
        ("seven", "value is not a time of day"),
        (1.25, "value is not a time of day"),
        (datetime(2026, 1, 5, 7, 0), "value is a date and time, not a time of day"),
    ],
)
def test_times_that_are_no_whole_minute_are_rejected(shape: object, reason: str) -> None:
    result = parse_one(ts(**{"TS-Time From": shape}))
    assert isinstance(result, Reject)
    assert result.field == "TS-Time From"
    assert result.reason.startswith(reason), result.reason


def test_month_first_dates_are_named_with_the_setting() -> None:
    result = parse_one(ts(**{"TS-Date": "01/15/26 07:00 AM"}))
    assert isinstance(result, Reject) and result.field == "TS-Date"
    assert "reads as month-first" in result.reason
    assert "OTC_DATE_ORDER=mdy" in result.reason and "--date-order mdy" in result.reason
    for as_text, expected in ((False, datetime(2026, 1, 15, 7, 0)), (True, "2026-01-15 07:00:00")):
        parser = Parser(TIMESHEETS, load_timezone("UTC"), text_format=COPY_TEXT if as_text else None, date_order="mdy")
        for text in ("01/15/26 07:00 AM", "01/15/2026 07:00"):
            parsed = parser.parse(1, ts(**{"TS-Date": text}))
            assert not isinstance(parsed, Reject), parsed
            assert parsed[1][1] == expected
        # A date that reads both ways is read in the order given, on every path.
        parsed = parser.parse(1, ts(**{"TS-Date": "01/02/2026", "TS-Modified Time": "01/02/2026 09:30"}))
        assert not isinstance(parsed, Reject), parsed
        values = dict(zip(parsed[0].columns, parsed[1], strict=True))
        if as_text:
            assert (values["TS-Date"], values["TS-Modified Time"]) == (
                "2026-01-02 00:00:00",
                "2026-01-02 09:30:00",
            )
        else:
            assert values["TS-Date"] == datetime(2026, 1, 2)
    # Invalid either way: no hint.
    result = parse_one(ts(**{"TS-Date": "31/31/2026"}))
    assert isinstance(result, Reject) and "reads as" not in result.reason


def test_spreadsheet_serial_numbers_are_dates() -> None:
    row = parse_one(ts(**{"TS-Date": 46037, "TS-Modified Time": 46037.3125}))
    assert row["TS-Date"] == datetime(2026, 1, 15)
    assert row["TS-Modified Time"] == datetime(2026, 1, 15, 7, 30)
    result = parse_one(ts(**{"TS-Date": 1e12}))
    assert isinstance(result, Reject) and "outside the range of spreadsheet dates" in result.reason


def test_headers_match_after_trimming_and_folding() -> None:
    parser = Parser(TIMESHEETS, load_timezone("UTC"))
    record = {
        "\ufeffTS-User Username": "djewell",
        "TS-Date\u00a0": "2026-01-05",
        "ts-time  from": "9:15",
        "TS-Crm ID": "1001",
        "TS-Hours ": "1,5",
        "TS-Hours": "2",  # the exact name wins; the spaced one is then unknown
        "TS-Nonsense": "x",
    }
    result = parser.parse(1, record)
    assert not isinstance(result, Reject), result
    row = dict(zip(result[0].columns, result[1], strict=True))
    assert row["TS-User Username"] == "djewell"
    assert row["TS-Time From"] == "09:15"
    assert row["TS-Hours"] == Decimal("2")
    assert parser.renamed_fields == {
        "\ufeffTS-User Username": "TS-User Username",
        "TS-Date\u00a0": "TS-Date",
        "ts-time  from": "TS-Time From",
    }
    assert parser.unknown_fields == {"TS-Hours ", "TS-Nonsense"}
