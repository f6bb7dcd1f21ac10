"""Write realistic synthetic OTC exports (tickets, timesheets, comments), mess included.

The files use the OTC field names and carry the mess real exports carry (see
legacy-schema.md): mixed date formats (ISO with and without ``Z``, ``+10:00``
offsets, ``YYYY-MM-DD HH:MM:SS``, day-first ``DD/MM/YYYY [HH:MM]``), hours
with a decimal comma, yes/no style booleans, blanks for NULL, the legacy
``' PendingAssignment'`` assignee, timesheets logged against no ticket or a
ticket not in the file, an unknown field (``TS-Legacy Flag``) and a small
share of in-file duplicate timesheet entries. Every row is valid unless
``bad_share`` asks for broken ones.

Rows are written one at a time, so a million-row file needs no more memory
than a ten-row one. The same seed gives the same files, byte for byte.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .views import COMMENTS, TICKETS, TIMESHEETS, VIEW_ORDER
from .vocabulary import PENDING_ASSIGNMENT, PLATFORMS, SEVERITIES

SampleFormat = Literal["json", "csv", "xlsx"]
FORMATS: tuple[SampleFormat, ...] = ("json", "csv", "xlsx")

Row = dict[str, Any]

# A field the loader does not know, so every sample load exercises the warning.
UNKNOWN_TIMESHEET_FIELD = "TS-Legacy Flag"
DUPLICATE_SHARE = 0.01  # of timesheet rows that repeat an earlier entry's key
XLSX_MAX_ROWS = 1_048_575  # Excel's sheet limit, less the header row

# A fixed "now" keeps the output independent of the day it is generated.
NOW = datetime(2026, 1, 15, 9, 0)
TIMESHEET_DAYS = 540  # the timesheets view covers the last 18 months
TICKET_ID_BASE = 2_400_001
COMMENT_ID_BASE = 8_100_001
USER_COUNT = 350

_FIRST_NAMES = (
    "Dion Aaron Abigail Adam Aisha Alex Amelia Andrew Angus Anika Ben Bella Bruce Caitlin "
    "Callum Chloe Chris Claire Connor Daniel Deepa Elena Ethan Fiona Gareth Grace Hamish "
    "Hannah Harry Imogen Isaac Jack Jade James Jasmine Jess Josh Kate Kieran Liam Lily Lucas "
    "Maddie Mark Matt Mia Mohammed Nadia Nathan Nina Oliver Olivia Oscar Priya Rachel Raj "
    "Rhys Ruby Ryan Sam Sarah Sean Sophie Tahlia Tom Tran Vikram Will Zara Zoe"
).split()
_LAST_NAMES = (
    "Jewell Anderson Bailey Baker Bennett Brown Campbell Chen Clarke Collins Cooper Davies "
    "Dixon Edwards Evans Fraser Gill Graham Green Hall Harris Hughes Hunt Jackson James "
    "Johnson Jones Kaur Kelly Kennedy King Lee Lewis Lim Martin Mason Mitchell Moore Murphy "
    "Nguyen Nolan OBrien Parker Patel Pearce Phillips Price Reid Richards Roberts Robinson "
    "Ross Russell Ryan Scott Sharma Simpson Singh Smith Stewart Taylor Thomas Thompson "
    "Turner Walker Ward Watson White Williams Wilson Wong Wood Wright Young Zhang"
).split()
_TEAMS = (
    "Cloud - Infrastructure",
    "Cloud - Security",
    "Cloud - L3 Escalation",
    "NOC",
    "Service Desk",
    "Network Operations",
    "Modern Workplace",
)
_STATUSES = (
    ["Closed"] * 40
    + ["Incident Resolved"] * 12
    + ["Resolved"] * 8
    + ["In Progress"] * 12
    + ["Open"] * 10
    + ["New"] * 6
    + ["Pending Customer"] * 6
    + ["Pending Vendor"] * 3
    + ["On Hold"] * 3
)
_DONE_STATUSES = frozenset({"Closed", "Incident Resolved", "Resolved"})
_CATEGORIES = ["Alert"] * 35 + ["Incident"] * 30 + ["Service Request"] * 25 + ["Change"] * 7
_CATEGORIES += ["Problem"] * 3
# Medium twice: the commonest severity.
_SEVERITIES = (*SEVERITIES[:3], SEVERITIES[2], *SEVERITIES[3:])
_PLATFORMS = PLATFORMS
_GROUPS = ("Managed Cloud", "Managed Network", "Managed Security", "End User Services")
_SLAS = ("Gold 24x7", "Silver 12x5", "Bronze 8x5", "Standard")
_SLA_CLOCK = ("Running", "Paused", "Stopped", "Stopped", "")
_ROOT_CAUSES = ("Hardware", "Software", "Configuration", "Capacity", "Vendor", "User Error", "")
_RESOLUTION_TYPES = ("Fixed", "Workaround", "No Fault Found", "Standard Change", "Duplicate")
_TICKET_SOURCES = ("Email", "Portal", "Phone", "Monitoring", "Monitoring", "Chat")
_SUBJECTS = (
    "CPU utilisation above 90%",
    "Disk space low on C:",
    "VPN tunnel down",
    "Backup job failed",
    "Certificate expiring in 14 days",
    "User cannot access shared mailbox",
    "New starter onboarding",
    "Firewall rule change",
    "Azure VM unresponsive",
    "Password reset",
    "Switch port flapping",
    "Licence request",
    "Suspicious sign-in detected",
    "SQL Server agent job failed",
    "Printer offline",
)
_WORK = (
    "Investigated alert, cleared temp files",
    "Called customer, confirmed fix",
    "Reviewed logs; escalated to L3",
    'Applied patch "KB5034441" and rebooted',
    "Updated firewall policy, tested with customer",
    "Weekly team meeting",
    "Documentation update",
    "Restored backup from snapshot",
    "Change implementation, post-checks OK",
    "Handover to NOC\nnext steps in ticket notes",
    "Monitoring, no action required",
    "Replaced certificate on load balancer",
)
_TS_CATEGORIES = ("Ticket Work", "Ticket Work", "Ticket Work", "Project", "Internal", "Training")
_TS_SUB_CATEGORIES = ("Remote Support", "On Site", "After Hours", "Meeting", "Admin", "")
_TS_TYPES = ("Billable", "Billable", "Non-Billable")
_COMMENT_TYPES = ("Note", "Work Note", "Email", "Resolution", "Customer Reply")
_OWNER_TYPES = ("Agent",) * 8 + ("Customer", "System")
_COMPANIES = (
    "Acme Logistics",
    "Bluegum Health",
    "Coastal Water Authority",
    "Dingo Mining",
    "Eastern Councils Alliance",
    "Fernhill Grammar",
    "Gumtree Financial",
    "Harbour City Ports",
    "Ironbark Constructions",
    "Jacaranda Aged Care",
    "Kookaburra Media",
    "Lorikeet Airlines",
    "Mallee Grain Co-op",
    "Numbat Insurance",
    "Outback Freight",
    "Platypus Energy",
    "Quokka Retail Group",
    "Redgum Legal",
    "Saltbush Pharmacy",
    "Tasman Engineering",
    "Ulladulla Fisheries",
    "Wattle University",
    "Yarra Valley Wines",
    "Orro Internal",
)
# The boolean spellings legacy-schema.md lists; blank is NULL.
_BOOLEANS = ("Yes", "No", "Y", "N", "true", "1", "0", "Yes", "No", "")
# Hours in quarter-hours, short entries far more common than long ones.
_HOUR_QUARTERS = [1] * 6 + [2] * 8 + [3] * 4 + [4] * 8 + [5, 6, 6, 6, 7, 8, 8, 10, 12, 16, 24, 32]
_CLOCK = [f"{q // 4:02d}:{q % 4 * 15:02d}" for q in range(96)]


class _World:
    """The people, accounts and ticket ids every view of one sample shares."""

    def __init__(self, rng: random.Random, tickets: int) -> None:
        self.users: list[tuple[str, str, int, str]] = []  # short, full, userid, team
        shorts: set[str] = set()
        fulls: set[str] = set()
        pairs = [(f, last) for f in _FIRST_NAMES for last in _LAST_NAMES]
        rng.shuffle(pairs)
        # The example from the legacy notes is always user number one.
        pairs.insert(0, ("Dion", "Jewell"))
        for first, last in pairs:
            full = f"{first} {last}"
            short = (first[0] + last).lower()
            if short in shorts:
                short = (first[:2] + last).lower()
            if full in fulls or short in shorts:
                continue
            shorts.add(short)
            fulls.add(full)
            self.users.append((short, full, 10_000 + len(self.users), rng.choice(_TEAMS)))
            if len(self.users) == USER_COUNT:
                break
        self.accounts = [
            (
                name,
                500 + i,
                f"SEL{3000 + i * 7}",
                f"CC-{410 + i % 9}",
                f"BILL-{name[:3].upper()}{i}",
            )
            for i, name in enumerate(_COMPANIES)
        ]
        self.ticket_count = tickets


def _pick_bool(rng: random.Random) -> str:
    return _BOOLEANS[int(rng.random() * len(_BOOLEANS))]


def _render_time(rng: random.Random, moment: datetime) -> str:
    """One instant (UTC) in one of the formats the OTC API mixes."""
    r = rng.random()
    if r < 0.3:
        return moment.isoformat()
    if r < 0.5:
        return moment.isoformat() + "Z"
    if r < 0.6:
        return (moment + timedelta(hours=10)).isoformat() + "+10:00"
    if r < 0.8:
        return moment.isoformat(" ")
    if r < 0.93:
        return moment.strftime("%d/%m/%Y %H:%M")
    return moment.strftime("%d/%m/%Y")


def _day_formats(day: datetime) -> tuple[str, ...]:
    """A timesheet date (midnight) in each format, with weights by repetition."""
    iso = day.isoformat()
    return (
        iso,
        iso,
        iso,
        iso + "Z",
        day.isoformat(" "),
        day.isoformat(" "),
        day.strftime("%d/%m/%Y"),
        day.strftime("%d/%m/%Y"),
        day.strftime("%d/%m/%Y %H:%M"),
    )


def _hours(rng: random.Random, quarters: int, fmt: SampleFormat) -> Any:
    value = quarters / 4
    text = f"{value:g}"
    r = rng.random()
    if r < 0.15 and "." in text:
        return text.replace(".", ",")
    if fmt != "csv" and r < 0.65:
        return value
    return text


def _maybe_text(rng: random.Random, value: Any, fmt: SampleFormat) -> Any:
    """Numbers as JSON numbers mostly, sometimes as strings (both occur in exports)."""
    if fmt == "json" and rng.random() < 0.15:
        return str(value)
    return value


def _blank(rng: random.Random, fmt: SampleFormat) -> Any:
    # JSON exports spell NULL both ways; CSV and XLSX have only the empty cell.
    if fmt == "json" and rng.random() < 0.5:
        return ""
    return None


def _other_ticket(rng: random.Random) -> int:
    """A ticket id that is not in the sample's tickets file (older tickets)."""
    return rng.randrange(1_000_000, TICKET_ID_BASE - 1)


def _ticket_rows(
    rng: random.Random, world: _World, count: int, fmt: SampleFormat, bad_share: float
) -> Iterator[Row]:
    span = int(timedelta(days=3 * 365).total_seconds() // 60)
    users = world.users
    for i in range(count):
        user = users[int(rng.random() * len(users))]
        creator = users[int(rng.random() * len(users))]
        account = world.accounts[int(rng.random() * len(world.accounts))]
        category = rng.choice(_CATEGORIES)
        status = rng.choice(_STATUSES)
        created = NOW - timedelta(minutes=int(rng.random() * span))
        response = created + timedelta(minutes=5 + int(rng.random() * 240))
        modified = min(NOW, created + timedelta(minutes=int(rng.random() * 30 * 24 * 60)))
        done = status in _DONE_STATUSES
        pending = not done and rng.random() < 0.35
        subject = rng.choice(_SUBJECTS)
        row: Row = {
            "TKT-Ticket ID": _maybe_text(rng, TICKET_ID_BASE + i, fmt),
            "TKT-Title": f"{category}: {subject} - {account[0]}",
            "TKT-Status": status,
            "TKT-Severity": rng.choice(_SEVERITIES),
            "TKT-Category": category,
            "TKT-Team": rng.choice(_TEAMS),
            "TKT-Assigned To User": PENDING_ASSIGNMENT if pending else user[1],
            "TKT-Created Time": _render_time(rng, created),
            "TKT-Modified Time": _render_time(rng, modified),
            "TKT-Account Name": account[0],
            "TKT-Client Name": account[0],
            "TKT-Description": (
                f'{subject} reported via {rng.choice(_TICKET_SOURCES).lower()}, "{account[0]}".'
                "\nCustomer contact: service desk, phone 1300 000 000."
            ),
            "TKT-Platform": rng.choice(_PLATFORMS),
            "TKT-Group": rng.choice(_GROUPS),
            "TKT-Assigned To Userid": _blank(rng, fmt) if pending else user[2],
            "TKT-Created By User": creator[1],
            "TKT-Created By Userid": creator[2],
            "TKT-Account Id": _maybe_text(rng, account[1], fmt),
            "TKT-Actual Resolution Date": (
                _render_time(rng, modified) if done else _blank(rng, fmt)
            ),
            "TKT-Closure Date": _render_time(rng, modified) if done else _blank(rng, fmt),
            "TKT-Due Date": _render_time(rng, created + timedelta(days=3)),
            "TKT-Actual Response Date": _render_time(rng, response),
            "TKT-SLA": rng.choice(_SLAS),
            "TKT-SLA Met": _pick_bool(rng),
            "TKT-Response Met": _pick_bool(rng),
            "TKT-Resolution Met": _pick_bool(rng) if done else _blank(rng, fmt),
            "TKT-SLA Clock Status": rng.choice(_SLA_CLOCK),
            "TKT-Solution": "Resolved remotely, customer confirmed." if done else "",
            "TKT-Root Cause Category": rng.choice(_ROOT_CAUSES) if done else "",
            "TKT-Resolution/Change Type": rng.choice(_RESOLUTION_TYPES) if done else "",
            "TKT-Ticket Source": rng.choice(_TICKET_SOURCES),
        }
        # The first row stays valid: loaders recognise a file's view by its first record.
        if bad_share and i and rng.random() < bad_share:
            _break(rng, row, "TKT-Ticket ID", "TKT-Created Time", "TKT-Assigned To Userid")
        yield row


def _break(rng: random.Random, row: Row, key: str, date_field: str, number_field: str) -> None:
    """Make one row invalid on purpose: a missing key, a bad date or a bad number."""
    kind = rng.randrange(3)
    if kind == 0:
        row[key] = None
    elif kind == 1:
        row[date_field] = "not a date"
    else:
        row[number_field] = "abc"


def _timesheet_rows(
    rng: random.Random, world: _World, count: int, fmt: SampleFormat, bad_share: float
) -> Iterator[Row]:
    users = world.users
    n_users = len(users)
    days = [
        datetime(NOW.year, NOW.month, NOW.day) - timedelta(days=d) for d in range(TIMESHEET_DAYS)
    ]
    day_strings = [_day_formats(day) for day in days]
    recent_keys: list[tuple[int, Any, int, Any]] = []
    unique = 0
    for i in range(count):
        if recent_keys and rng.random() < DUPLICATE_SHARE:
            # The same entry exported twice (the legacy table's duplicates).
            user_index, date_value, start, crm = rng.choice(recent_keys)
        else:
            # Entry number k gets a (user, day, start) nobody else has: the user
            # cycles fastest, the day walks a permutation of the 540 days, and each
            # later lap over the days moves the start a quarter-hour on.
            k = unique
            unique += 1
            user_index = k % n_users
            slot = k // n_users
            day = (slot * 97 + user_index * 13) % TIMESHEET_DAYS
            start = (28 + (user_index * 31 + day * 17) % 40 + slot // TIMESHEET_DAYS) % 96
            if fmt == "xlsx" and rng.random() < 0.3:
                date_value = days[day]  # a real date cell, as Excel exports have
            else:
                strings = day_strings[day]
                date_value = strings[int(rng.random() * len(strings))]
            r = rng.random()
            if r < 0.35:
                crm = _blank(rng, fmt)
            elif r < 0.75 and world.ticket_count:
                crm = _maybe_text(rng, TICKET_ID_BASE + int(rng.random() * world.ticket_count), fmt)
            else:
                crm = _maybe_text(rng, _other_ticket(rng), fmt)
            recent_keys.append((user_index, date_value, start, crm))
            if len(recent_keys) > 64:
                del recent_keys[0]
        short, full, _userid, _team = users[user_index]
        quarters = _HOUR_QUARTERS[int(rng.random() * len(_HOUR_QUARTERS))]
        account = world.accounts[int(rng.random() * len(world.accounts))]
        modified = NOW - timedelta(minutes=int(rng.random() * TIMESHEET_DAYS * 1440))
        row: Row = {
            "TS-User Username": short,
            "TS-User Full Name": full,
            "TS-Date": date_value,
            "TS-Time From": _CLOCK[start],
            "TS-Time To": _CLOCK[(start + quarters) % 96],
            "TS-Hours": _hours(rng, quarters, fmt),
            "TS-Category": _TS_CATEGORIES[int(rng.random() * len(_TS_CATEGORIES))],
            "TS-Sub Category": _TS_SUB_CATEGORIES[int(rng.random() * len(_TS_SUB_CATEGORIES))],
            "TS-Type": _TS_TYPES[int(rng.random() * len(_TS_TYPES))],
            "TS-Crm ID": crm,
            "TS-Description": _WORK[int(rng.random() * len(_WORK))],
            "TS-Account Name": account[0],
            "TS-Ticket Project Master Code": (
                f"PRJ-{10_000 + account[1]}" if rng.random() < 0.2 else _blank(rng, fmt)
            ),
            "TS-Notes": "See ticket for details" if rng.random() < 0.1 else _blank(rng, fmt),
            "TS-Account Selcom": account[2],
            "TS-Costcentre": account[3],
            "TS-Charge Code": f"CHG-{account[1]}-{quarters % 3}",
            "TS-Client Bill Code": account[4],
            "TS-Billable": _pick_bool(rng),
            "TS-Approved": _pick_bool(rng),
            "TS-Modified Time": _render_time(rng, modified),
        }
        if rng.random() < 0.02:
            row[UNKNOWN_TIMESHEET_FIELD] = "Y" if rng.random() < 0.5 else "N"
        # The first row stays valid: loaders recognise a file's view by its first record.
        if bad_share and i and rng.random() < bad_share:
            _break(rng, row, "TS-User Username", "TS-Date", "TS-Hours")
        yield row


def _comment_rows(
    rng: random.Random, world: _World, count: int, fmt: SampleFormat, bad_share: float
) -> Iterator[Row]:
    users = world.users
    span = int(timedelta(days=10).total_seconds() // 60)  # the comments view: last 10 days
    for i in range(count):
        short, full, userid, team = users[int(rng.random() * len(users))]
        owner = _OWNER_TYPES[int(rng.random() * len(_OWNER_TYPES))]
        if world.ticket_count and rng.random() < 0.85:
            ticket = TICKET_ID_BASE + int(rng.random() * world.ticket_count)
        else:
            ticket = _other_ticket(rng)
        created = NOW - timedelta(minutes=int(rng.random() * span))
        text = _WORK[int(rng.random() * len(_WORK))]
        row: Row = {
            "TKTCT-CommentID": _maybe_text(rng, COMMENT_ID_BASE + i, fmt),
            "TKTCT-TicketID": _maybe_text(rng, ticket, fmt),
            "TKTCT-Comment": f"{text}. -- {full}" if owner == "Agent" else text,
            "TKTCT-UserID": str(userid) if owner != "System" else _blank(rng, fmt),
            "TKTCT-Username": short if owner != "System" else "system",
            "TKTCT-OwnerType": owner,
            "TKTCT-Created Time": _render_time(rng, created),
            "TKTCT-VisibleCustomer": _pick_bool(rng),
            "TKTCT-Type": _COMMENT_TYPES[int(rng.random() * len(_COMMENT_TYPES))],
            "TKTCT-Team": team,
        }
        # The first row stays valid: loaders recognise a file's view by its first record.
        if bad_share and i and rng.random() < bad_share:
            _break(rng, row, "TKTCT-CommentID", "TKTCT-Created Time", "TKTCT-TicketID")
        yield row


# --- writers ---------------------------------------------------------------------------


def _write_json(path: Path, fields: list[str], rows: Iterator[Row]) -> None:
    # The envelope the OTC API answers with, written around the rows as they come.
    with path.open("w", encoding="utf-8", buffering=1 << 20) as f:
        f.write('{"message": {"data": [')
        separator = "\n"
        for row in rows:
            # A missing key is an absent field in JSON, not a null.
            if None in row.values():
                row = {k: v for k, v in row.items() if v is not None or k not in _KEYS}
            f.write(separator)
            f.write(json.dumps(row, ensure_ascii=False))
            separator = ",\n"
        f.write("\n]}}\n")


def _write_csv(path: Path, fields: list[str], rows: Iterator[Row]) -> None:
    # utf-8-sig: the byte-order mark Excel writes, so readers must cope with it.
    with path.open("w", encoding="utf-8-sig", newline="", buffering=1 << 20) as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for row in rows:
            writer.writerow([row.get(name) for name in fields])


def _write_xlsx(path: Path, fields: list[str], rows: Iterator[Row]) -> None:
    import xlsxwriter  # only xlsx samples pay for it

    workbook = xlsxwriter.Workbook(
        str(path),
        {
            "constant_memory": True,  # rows are flushed as written
            "strings_to_urls": False,
            "strings_to_formulas": False,
            "default_date_format": "yyyy-mm-dd",
        },
    )
    # A fixed creation time keeps the same seed's workbook identical.
    workbook.set_properties({"created": NOW})
    sheet = workbook.add_worksheet("Export")
    sheet.write_row(0, 0, fields)
    row_number = 0
    for row in rows:
        row_number += 1
        if row_number > XLSX_MAX_ROWS:
            workbook.close()
            raise ConfigError(
                f"an XLSX sheet holds at most {XLSX_MAX_ROWS:,} rows; "
                "use --format json or csv for more"
            )
        sheet.write_row(row_number, 0, [row.get(name) for name in fields])
    workbook.close()


_KEYS = frozenset({"TKT-Ticket ID", "TS-User Username", "TKTCT-CommentID"})

_Generator = Callable[[random.Random, _World, int, SampleFormat, float], Iterator[Row]]
_Writer = Callable[[Path, list[str], Iterator[Row]], None]
_WRITERS: dict[str, _Writer] = {"json": _write_json, "csv": _write_csv, "xlsx": _write_xlsx}


def _same_name(path: Path) -> Path:
    """``path``, or the file beside it whose name differs only in case (--force overwrites it).

    Writing timesheets.xlsx beside Timesheets.xlsx would leave the folder with two
    exports of one view, which `otc load all` refuses.
    """
    for entry in path.parent.iterdir():
        if entry.name.lower() == path.name.lower():
            return entry
    return path


def write_sample(
    directory: Path,
    *,
    tickets: int,
    timesheets: int,
    comments: int,
    fmt: SampleFormat,
    seed: int,
    bad_share: float = 0.0,
    force: bool = False,
) -> dict[str, Path]:
    """Write tickets.<fmt>, timesheets.<fmt> and comments.<fmt> into DIRECTORY.

    Returns the path written for each view. ``bad_share`` (0 to 1) makes that
    share of rows invalid on purpose (a missing key, ``'not a date'``, ``'abc'``
    for a number) for tests of the reject path. A folder that already holds an
    export of any view is refused unless ``force`` (then files of the same names
    are overwritten): real exports must not be replaced by synthetic ones.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown sample format {fmt!r}; use one of {', '.join(FORMATS)}")
    for name, count in (("tickets", tickets), ("timesheets", timesheets), ("comments", comments)):
        if count < 0:
            raise ConfigError(f"--{name} must be 0 or more, not {count}")
        if fmt == "xlsx" and count > XLSX_MAX_ROWS:
            raise ConfigError(
                f"an XLSX sheet holds at most {XLSX_MAX_ROWS:,} rows, not {count:,} {name}; "
                "use --format json or csv for more"
            )
    if not 0.0 <= bad_share <= 1.0:
        raise ConfigError(f"bad_share must be between 0 and 1, not {bad_share}")
    capacity = USER_COUNT * TIMESHEET_DAYS * 96
    if timesheets > capacity:
        raise ConfigError(f"at most {capacity:,} distinct timesheet entries; ask for fewer")

    directory = Path(directory)
    if directory.is_dir() and not force:
        names = {f"{view}{suffix}" for view in VIEW_ORDER for suffix in (".json", ".csv", ".xlsx")}
        existing = sorted(p.name for p in directory.iterdir() if p.name.lower() in names)
        if existing:
            raise ConfigError(
                f"{directory} already holds {', '.join(existing)}; `otc sample` does not "
                "overwrite exports: choose an empty folder, or add --force to overwrite"
            )
    directory.mkdir(parents=True, exist_ok=True)
    world = _World(random.Random(f"{seed}:world"), tickets)
    plan: list[tuple[str, int, list[str], _Generator]] = [
        ("tickets", tickets, list(TICKETS.fields), _ticket_rows),
        (
            "timesheets",
            timesheets,
            [*TIMESHEETS.fields, UNKNOWN_TIMESHEET_FIELD],
            _timesheet_rows,
        ),
        ("comments", comments, list(COMMENTS.fields), _comment_rows),
    ]
    written: dict[str, Path] = {}
    for view, count, fields, generate in plan:
        # One generator per view, seeded separately: asking for more comments
        # leaves the tickets and timesheets files unchanged.
        rng = random.Random(f"{seed}:{view}")
        path = _same_name(directory / f"{view}.{fmt}")
        _WRITERS[fmt](path, fields, generate(rng, world, count, fmt, bad_share))
        written[view] = path
    return written
