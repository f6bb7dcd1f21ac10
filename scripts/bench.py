"""Benchmark the timesheets load against the old loader and PostgreSQL's COPY ceiling.

Everything is measured in one run on a throwaway PostgreSQL database (created
and dropped here; no other database is touched):

1. first load, end to end (`otc load timesheets --from FILE` in a child process);
2. an identical reload, and how many rows it wrote (pg_stat_user_tables);
3. the old loader's approach on the same file: json.load, one pydantic model per
   row with Python validators, psycopg2 execute_batch(page_size=100) of
   INSERT … ON CONFLICT in 500-row batches;
4. a plain COPY of the same parsed rows into an empty copy of the table (the ceiling);
   three ways to upsert those rows into an empty table (SQLAlchemy's executemany of
   the upsert with RETURNING, arrays through unnest, COPY into a temporary table then
   INSERT … SELECT … ON CONFLICT, as the loader does);
   and reading alone: read, parse and encode the file in one process with no
   database (a reload must read every record to compare it; it reads a large JSON
   export in two halves side by side, so it can take less than this);
5. peak RSS of a load of a 1M-row JSON export (--big-rows, 0 to skip), and the time
   and peak RSS of an identical reload of it;
6. peak RSS of a load streamed from a local OTC API server sending a large body
   (--api-mb, 0 to skip);
7. records with varying field sets (--varying-rows, 0 to skip): the same timesheets,
   once with every field (null where blank) and once omitting the null fields, as
   APIs that omit nulls send them, so nearly every record has its own set of fields;
   a first load and an identical reload of each, and the time ratios;
8. the fixed cost of a small load (--small-runs, 0 to skip; --small measures only
   this): `otc load all` of a folder of 3k tickets, 2k timesheets and 5k comments,
   a first load (each on a new database) and an identical reload, on PostgreSQL and
   SQLite, as whole processes (wall and CPU, readers included) against the sum of the
   three loads' own clocks (`duration_s`); the rest is start-up, imports, the schema
   check, run records and exit.

Steps 1–3 run --repeat times (default 3; each first load on a fresh database) and
the medians are reported. Ratios are printed against the targets of the load and
API issues.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg2

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
OTC = [PYTHON, "-m", "otc_pipeline.cli"]


@dataclass
class ChildResult:
    seconds: float
    peak_rss_mb: float  # the sum of each process's own peak (VmHWM): an upper bound
    peak_pss_mb: float  # the largest sum of the processes' PSS seen at one moment
    stdout: str


def median_run(runs: list[ChildResult], seconds: Any) -> ChildResult:
    """The run whose own clock is the median of the runs'."""
    return sorted(runs, key=seconds)[len(runs) // 2]


def _proc_mb(pid: int, file: str, field: str) -> float | None:
    """A kB figure from /proc/PID/FILE (the line starting FIELD), in MB; None once gone."""
    try:
        with open(f"/proc/{pid}/{file}") as lines:
            for line in lines:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _peak_rss_mb(pid: int) -> float | None:
    """A process's own peak RSS (VmHWM) so far, or None once it has gone."""
    return _proc_mb(pid, "status", "VmHWM:")


def _pss_mb(pid: int) -> float:
    """A process's proportional set size: its own pages plus its share of shared ones."""
    return _proc_mb(pid, "smaps_rollup", "Pss:") or 0.0


def run_measured(
    args: list[str], env: dict[str, str] | None = None, pss: bool = False
) -> ChildResult:
    """Run a child; return its wall time, its peak RSS (with its own children) and output.

    Peaks are read from /proc/PID/status (VmHWM) while the processes run: the
    rusage of a waited child would also count this (large) parent's memory at
    fork time, which Linux carries over into the child's ru_maxrss. The load's
    reading process is counted too: the peak reported is the sum of each
    process's own peak, an upper bound of what they held at any one time. A
    forked reader shares the parent's pages (the interpreter, the imported
    modules), which that sum counts twice; the largest sum of PSS (shared pages
    split between their sharers) seen at one sample is the closer figure. Reading
    PSS walks the processes' page tables, which takes CPU from the load: only the
    memory runs ask for it (``pss=True``), never a timed one.
    """
    started = time.perf_counter()
    peaks: dict[int, float] = {}
    peak_pss = 0.0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env)
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                pids = [proc.pid] + [c.pid for c in watched.children(recursive=True)]
            except psutil.Error:
                pids = [proc.pid]
            for pid in pids:
                seen = _peak_rss_mb(pid)
                if seen is not None:
                    peaks[pid] = max(peaks.get(pid, 0.0), seen)
            if pss:
                peak_pss = max(peak_pss, sum(_pss_mb(pid) for pid in pids))
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode not in (0, 3):
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(args)}\n{stderr}")
    return ChildResult(seconds, sum(peaks.values()), peak_pss, stdout)


# --- throwaway databases ------------------------------------------------------------------


class Server:
    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.created: list[str] = []

    def create(self) -> str:
        name = f"otc_bench_{uuid.uuid4().hex[:10]}"
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        conn.close()
        self.created.append(name)
        return name

    def drop_all(self) -> None:
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in self.created:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


def url_for(base: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(base).set(database=name).render_as_string(hide_password=False)


def dsn_for(base: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(base).set(database=name)
    parts = [f"dbname={name}", f"host={url.host or '127.0.0.1'}", f"port={url.port or 5432}"]
    if url.username:
        parts.append(f"user={url.username}")
    if url.password:
        parts.append(f"password={url.password}")
    return " ".join(parts)


def written_rows(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute(
            "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables "
            "WHERE schemaname = 'servicedesk' AND relname = 'timesheets'"
        )
        row = cur.fetchone()
    conn.close()
    return int(row[0]) if row else 0


def migrate_head(url: str) -> None:
    subprocess.run([*OTC, "db", "upgrade", "--database-url", url], check=True, capture_output=True)


# --- the old loader, reproduced as the reference ------------------------------------------

OLD_LOADER = r"""
import json, sys, time
from datetime import datetime
from decimal import Decimal
from typing import Optional
import psycopg2
from psycopg2.extras import execute_batch
from pydantic import BaseModel, field_validator

class TimesheetRow(BaseModel):
    user_username: str
    user_full_name: Optional[str] = None
    date: datetime
    time_from: str
    time_to: Optional[str] = None
    hours: Optional[Decimal] = None
    category: Optional[str] = None
    sub_category: Optional[str] = None
    type: Optional[str] = None
    crm_id: Optional[int] = None
    description: Optional[str] = None
    account_name: Optional[str] = None
    ticket_project_master_code: Optional[str] = None
    notes: Optional[str] = None
    account_selcom: Optional[str] = None
    costcentre: Optional[str] = None
    charge_code: Optional[str] = None
    client_bill_code: Optional[str] = None
    billable: Optional[bool] = None
    approved: Optional[bool] = None
    modified_time: Optional[datetime] = None

    @field_validator("date", "modified_time", mode="before")
    @classmethod
    def day_first(cls, v):
        if v in (None, ""):
            return None
        v = str(v).strip()
        for fmt in ("%d/%m/%Y %H:%M", "%d/%m/%Y"):
            try:
                return datetime.strptime(v, fmt)
            except ValueError:
                pass
        return datetime.fromisoformat(v).replace(tzinfo=None)

    @field_validator("hours", mode="before")
    @classmethod
    def comma(cls, v):
        if v in (None, ""):
            return None
        return Decimal(str(v).replace(",", "."))

    @field_validator("billable", "approved", mode="before")
    @classmethod
    def yes_no(cls, v):
        if v in (None, ""):
            return None
        return str(v).strip().lower() in ("yes", "y", "true", "t", "1")

    @field_validator("crm_id", mode="before")
    @classmethod
    def blank_int(cls, v):
        return None if v in (None, "") else int(v)

    @field_validator("*", mode="before")
    @classmethod
    def blank(cls, v):
        return None if v == "" else v

FIELDS = {"user_username": "TS-User Username", "user_full_name": "TS-User Full Name",
          "date": "TS-Date", "time_from": "TS-Time From", "time_to": "TS-Time To",
          "hours": "TS-Hours", "category": "TS-Category", "sub_category": "TS-Sub Category",
          "type": "TS-Type", "crm_id": "TS-Crm ID", "description": "TS-Description",
          "account_name": "TS-Account Name",
          "ticket_project_master_code": "TS-Ticket Project Master Code", "notes": "TS-Notes",
          "account_selcom": "TS-Account Selcom", "costcentre": "TS-Costcentre",
          "charge_code": "TS-Charge Code", "client_bill_code": "TS-Client Bill Code",
          "billable": "TS-Billable", "approved": "TS-Approved",
          "modified_time": "TS-Modified Time"}
SQL = ('INSERT INTO servicedesk.timesheets (' + ", ".join('"%s"' % c for c in FIELDS.values())
       + ') VALUES (' + ", ".join(["%s"] * len(FIELDS)) + ') ON CONFLICT ON CONSTRAINT '
       'timesheets_unique_entry DO UPDATE SET ' + ", ".join(
           '"%s" = EXCLUDED."%s"' % (c, c) for c in list(FIELDS.values())[4:] if c != "TS-Crm ID"))

path, dsn = sys.argv[1], sys.argv[2]
start = time.perf_counter()
with open(path) as f:
    body = json.load(f)
records = body["message"]["data"] if isinstance(body, dict) else body
rows, last = [], {}
for r in records:
    try:
        m = TimesheetRow(**{k: r.get(v) for k, v in FIELDS.items()})
    except Exception:
        continue
    key = (m.user_username, m.date, m.time_from, m.crm_id)
    last[key] = tuple(getattr(m, k) for k in FIELDS)  # the old loader dropped in-batch repeats
rows = list(last.values())
conn = psycopg2.connect(dsn)
with conn.cursor() as cur:
    for i in range(0, len(rows), 500):
        execute_batch(cur, SQL, rows[i:i + 500], page_size=100)
conn.commit()
print(json.dumps({"rows": len(records), "seconds": time.perf_counter() - start}))
"""


# --- COPY ceiling ---------------------------------------------------------------------------


def parsed_rows(path: Path) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The timesheet columns and the rows a load keeps (parsed, last occurrence wins)."""
    from otc_pipeline.parse import Parser, Reject, load_timezone
    from otc_pipeline.sources.files import read_file
    from otc_pipeline.views import TIMESHEETS

    parser = Parser(TIMESHEETS, load_timezone("UTC"))
    columns = [c.key for c in TIMESHEETS.table.columns if c.key != "id"]
    by_key: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for position, record in read_file(path):
        parsed = parser.parse(position, record)
        if isinstance(parsed, Reject):
            continue
        plan, values = parsed
        row = dict(zip(plan.columns, values, strict=True))
        key = tuple(row.get(k) for k in TIMESHEETS.key)
        by_key.pop(key, None)
        by_key[key] = tuple(row.get(c) for c in columns)
    return columns, list(by_key.values())


def _csv_body(rows: list[tuple[Any, ...]]) -> io.StringIO:
    body = io.StringIO()
    csv.writer(body, lineterminator="\n").writerows(rows)
    body.seek(0)
    return body


def copy_ceiling(columns: list[str], rows: list[tuple[Any, ...]], dsn: str) -> float:
    """Seconds of one COPY of the parsed rows into an empty copy of the table."""
    body = _csv_body(rows)
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE servicedesk.timesheets_copy (LIKE servicedesk.timesheets "
            "INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES)"
        )
        conn.commit()
        quoted = ", ".join(f'"{c}"' for c in columns)
        started = time.perf_counter()
        cur.copy_expert(
            f"COPY servicedesk.timesheets_copy ({quoted}) FROM STDIN WITH (FORMAT csv)", body
        )
        conn.commit()
        seconds = time.perf_counter() - started
    conn.close()
    return seconds


TRANSPORT_CHUNK = 10_000


def transports(
    columns: list[str], rows: list[tuple[Any, ...]], server: Server, base: str
) -> dict[str, float]:
    """Seconds to upsert the same parsed rows into an empty table, three ways, 10k-row chunks.

    The issue's baseline (SQLAlchemy's executemany of insert().on_conflict_do_update(),
    with RETURNING so that it is batched), arrays through unnest, and what the loader
    does (COPY into a temporary table, then INSERT … SELECT … ON CONFLICT). Each returns
    (xmax = 0) per row, as the loader needs for its counts; parsing is not timed.
    """
    from sqlalchemy import create_engine, literal_column
    from sqlalchemy.dialects import postgresql

    from otc_pipeline.views import TIMESHEETS

    table = TIMESHEETS.table
    updates = [c for c in columns if c not in TIMESHEETS.key]
    chunks = [rows[i : i + TRANSPORT_CHUNK] for i in range(0, len(rows), TRANSPORT_CHUNK)]
    # SQL text below is built from the model's own column names only (nothing read in).
    quoted = ", ".join(f'"{c}"' for c in columns)
    conflict = "ON CONFLICT ON CONSTRAINT timesheets_unique_entry DO UPDATE SET " + ", ".join(
        f'"{c}" = EXCLUDED."{c}"' for c in updates
    )
    results: dict[str, float] = {}

    engine = create_engine(url_for(base, _fresh(server, base)))
    statement = postgresql.insert(table)
    upsert: Any = statement.on_conflict_do_update(
        constraint="timesheets_unique_entry",
        set_={table.c[c]: statement.excluded[c] for c in updates},
    ).returning(literal_column("(xmax = 0)"))
    started = time.perf_counter()
    with engine.begin() as conn:
        for chunk in chunks:
            conn.execute(upsert, [dict(zip(columns, row, strict=True)) for row in chunk]).all()
    results["executemany"] = time.perf_counter() - started
    engine.dispose()

    casts = {
        "DateTime": "timestamp[]",
        "Numeric": "numeric[]",
        "Integer": "integer[]",
        "Boolean": "boolean[]",
    }
    arrays = ", ".join(
        f"%s::{casts.get(type(table.c[c].type).__name__, 'text[]')}" for c in columns
    )
    conn = psycopg2.connect(dsn_for(base, _fresh(server, base)))
    started = time.perf_counter()
    with conn.cursor() as cur:
        for chunk in chunks:
            unnest_upsert = (
                f"INSERT INTO servicedesk.timesheets ({quoted}) SELECT * FROM unnest({arrays}) "  # noqa: S608
                f"{conflict} RETURNING (xmax = 0)"
            )
            cur.execute(unnest_upsert, [list(values) for values in zip(*chunk, strict=True)])
            cur.fetchall()
    conn.commit()
    results["unnest"] = time.perf_counter() - started
    conn.close()

    conn = psycopg2.connect(dsn_for(base, _fresh(server, base)))
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(
            f"CREATE TEMPORARY TABLE stage ON COMMIT DROP AS "  # noqa: S608
            f"SELECT {quoted} FROM servicedesk.timesheets WITH NO DATA"
        )
        for chunk in chunks:
            cur.copy_expert(f"COPY stage ({quoted}) FROM STDIN WITH (FORMAT csv)", _csv_body(chunk))
            merge = (
                f"INSERT INTO servicedesk.timesheets ({quoted}) SELECT {quoted} FROM stage "  # noqa: S608
                f"{conflict} RETURNING (xmax = 0)"
            )
            cur.execute(merge)
            cur.fetchall()
            cur.execute("TRUNCATE stage")
    conn.commit()
    results["copy and merge"] = time.perf_counter() - started
    conn.close()
    return results


def _fresh(server: Server, base: str) -> str:
    """A new throwaway database at head; its name."""
    name = server.create()
    migrate_head(url_for(base, name))
    return name


def reading_alone(path: Path) -> float:
    """Seconds to read, parse and encode the file as a load does, with no database."""
    import gc

    from otc_pipeline.parse import load_timezone
    from otc_pipeline.pipeline import DEFAULT_CHUNK_SIZE
    from otc_pipeline.reading import collect_rarely, parsed_chunks, plan_read
    from otc_pipeline.sources.files import ReadOptions
    from otc_pipeline.views import TIMESHEETS

    thresholds = gc.get_threshold()
    collect_rarely()  # as the load's reading process does
    try:
        started = time.perf_counter()
        plan = plan_read(
            TIMESHEETS,
            path,
            chunk_size=DEFAULT_CHUNK_SIZE,
            timezone=load_timezone("UTC"),
            for_copy=True,
            options=ReadOptions(),
        )
        for _ in parsed_chunks(plan):
            pass
        return time.perf_counter() - started
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def sample(folder: Path, rows: int, seed: int) -> Path:
    subprocess.run(
        [
            *OTC,
            "sample",
            str(folder),
            "--tickets",
            "0",
            "--timesheets",
            str(rows),
            "--comments",
            "0",
            "--format",
            "json",
            "--seed",
            str(seed),
        ],
        check=True,
        capture_output=True,
    )
    return folder / "timesheets.json"


# --- the fixed cost of a small load ---------------------------------------------------------

SMALL = {"tickets": 3000, "timesheets": 2000, "comments": 5000}


@dataclass
class ProcessTime:
    wall_s: float
    cpu_s: float  # user + system of the process and the readers it waited for
    loads_s: float  # the sum of the views' own clocks (duration_s)


def timed_load_all(args: list[str], env: dict[str, str]) -> ProcessTime:
    """One `otc load all … --json` as a whole process: wall, CPU and the loads' own clocks.

    Timed with a plain wait (no sampling of its memory, which would add up to 50 ms).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}): {' '.join(args)}\n{done.stderr}")
    loads = sum(json.loads(line)["duration_s"] for line in done.stdout.splitlines() if line)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ProcessTime(wall, cpu, loads)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _small_url(dialect: str, args: argparse.Namespace, server: Server, work: Path) -> str:
    """A new empty database of that dialect (PostgreSQL: a throwaway one, dropped at the end)."""
    if dialect == "postgresql":
        return url_for(args.server, server.create())
    return f"sqlite:///{work / f'small-{uuid.uuid4().hex[:8]}.db'}"


def small_bench(
    args: argparse.Namespace, server: Server, env: dict[str, str], work: Path
) -> dict[str, Any]:
    """Whole-process time of `otc load all` of a small folder against the loads' own clocks."""
    folder = work / "small"
    subprocess.run(
        [*OTC, "sample", str(folder), *(f"--{k}={v}" for k, v in SMALL.items()), "--seed", "4"],
        check=True,
        capture_output=True,
    )
    # As an installed otc runs: its modules' bytecode cached (a warm-up run writes it),
    # not compiled again by every process as PYTHONDONTWRITEBYTECODE would have it.
    child_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    sizes = ", ".join(f"{count:,} {view}" for view, count in SMALL.items())
    print(f"small folder    : {sizes} (JSON); `otc load all --from FOLDER --json`")
    results: dict[str, Any] = {}
    runs = args.small_runs
    for dialect in ("postgresql", "sqlite"):

        def load(url: str) -> ProcessTime:
            args_ = [*OTC, "load", "all", "--from", str(folder), "--database-url", url, "--json"]
            return timed_load_all(args_, child_env)

        load(_small_url(dialect, args, server, work))  # warm-up: bytecode, page cache
        firsts = [load(_small_url(dialect, args, server, work)) for _ in range(runs)]
        again = _small_url(dialect, args, server, work)
        load(again)
        reloads = [load(again) for _ in range(runs)]
        name = "PostgreSQL" if dialect == "postgresql" else "SQLite"
        for kind, measured in (("first load", firsts), ("reload", reloads)):
            wall = _median([m.wall_s for m in measured])
            cpu = _median([m.cpu_s for m in measured])
            loads = _median([m.loads_s for m in measured])
            rest = _median([m.wall_s - m.loads_s for m in measured])
            print(
                f"small {kind:<10}: {name:<10} process {wall:.2f} s (CPU {cpu:.2f} s), the "
                f"three loads' own clocks {loads:.2f} s, the rest {rest:.2f} s "
                f"({rest / wall:.0%}; medians of {runs})"
            )
            key = f"small_{dialect}_{kind.replace(' ', '_')}"
            results.update(
                {
                    f"{key}_s": round(wall, 2),
                    f"{key}_cpu_s": round(cpu, 2),
                    f"{key}_loads_s": round(loads, 2),
                    f"{key}_rest_s": round(rest, 2),
                }
            )
    return results


# --- adopt of a production-size legacy database ------------------------------------------

# The legacy servicedesk database as the old scripts built it: keys and the columns
# their INSERTs carried, "TS-Hours" as double precision (adopt converts it, which
# rewrites timesheets), no unique entry (before the clean-up), the legacy indexes.
LEGACY_SQL = """
CREATE SCHEMA servicedesk;
CREATE TABLE servicedesk.tickets ("TKT-Ticket ID" integer PRIMARY KEY, "TKT-Title" text,
  "TKT-Status" text, "TKT-Severity" text, "TKT-Category" text, "TKT-Team" text,
  "TKT-Assigned To User" text, "TKT-Created Time" timestamp, "TKT-Modified Time" timestamp,
  "TKT-Account Name" text, "TKT-Client Name" text);
CREATE TABLE servicedesk.timesheets ("TS-User Username" text, "TS-User Full Name" text,
  "TS-Date" timestamp, "TS-Time From" text, "TS-Time To" text,
  "TS-Hours" double precision, "TS-Category" text, "TS-Sub Category" text, "TS-Type" text,
  "TS-Crm ID" integer, "TS-Description" text, "TS-Account Name" text);
CREATE TABLE servicedesk.comments (comment_id integer PRIMARY KEY, ticket_id integer,
  comment_text text, user_id text, user_name text, owner_type text,
  created_time timestamp, visible_to_customer text, comment_type text, team text);
CREATE TABLE servicedesk.user_lookup (id serial PRIMARY KEY,
  short_username text CONSTRAINT user_lookup_short_username_key UNIQUE,
  full_name text CONSTRAINT user_lookup_full_name_unique UNIQUE, email text, team text,
  source text, updated_at timestamp DEFAULT now());
CREATE TABLE servicedesk.etl_metadata (id serial PRIMARY KEY, view_name text,
  records_fetched integer, records_inserted integer, records_updated integer,
  load_status text, load_duration_seconds numeric, last_load_time timestamp);
INSERT INTO servicedesk.tickets
  SELECT n, 'Ticket ' || n, (ARRAY['Open','Closed','In Progress'])[1 + n %% 3], 'P3',
         'Incident', (ARRAY['NOC','Cloud - Infrastructure','Cloud - Security'])[1 + n %% 3],
         'User ' || n %% 350, timestamp '2023-01-01' + n * interval '7 minutes',
         timestamp '2023-01-01' + n * interval '8 minutes', 'Account ' || n %% 900,
         'Client ' || n %% 400
  FROM generate_series(1, %(tickets)s) AS n;
INSERT INTO servicedesk.timesheets
  SELECT 'user' || n %% 350, 'User ' || n %% 350,
         date '2024-07-01' + (n / 1500) * interval '1 day',
         to_char(time '00:00' + (n %% 1500) * interval '1 minute', 'HH24:MI'), NULL,
         (n %% 16) * 0.25, 'Work', 'Project', 'Normal',
         CASE WHEN n %% 5 = 0 THEN NULL ELSE n %% %(tickets)s + 1 END, 'entry ' || n,
         'Account ' || n %% 900
  FROM generate_series(1, %(unique_timesheets)s) AS n;
-- Duplicates as the reloads left them: the same entry once more.
INSERT INTO servicedesk.timesheets
  SELECT * FROM servicedesk.timesheets LIMIT %(duplicates)s;
INSERT INTO servicedesk.comments
  SELECT n, n %% %(tickets)s + 1, 'comment ' || n, (n %% 350)::text, 'user' || n %% 350,
         'Engineer', timestamp '2025-01-01' + n * interval '1 minute', 'No', 'Note', 'NOC'
  FROM generate_series(1, %(comments)s) AS n;
INSERT INTO servicedesk.user_lookup (short_username, full_name, source)
  SELECT 'user' || n, 'User ' || n, 'auto_etl' FROM generate_series(0, 349) AS n;
INSERT INTO servicedesk.etl_metadata (view_name, records_fetched, load_status)
  VALUES ('tickets', %(tickets)s, 'success'), ('timesheets', 0, 'success');
"""
INDEX_SQL = """
CREATE INDEX idx_tickets_team ON servicedesk.tickets ("TKT-Team");
CREATE INDEX idx_tickets_status ON servicedesk.tickets ("TKT-Status");
CREATE INDEX idx_tickets_status_team ON servicedesk.tickets ("TKT-Status", "TKT-Team");
CREATE INDEX idx_tickets_assigned_user ON servicedesk.tickets ("TKT-Assigned To User");
CREATE INDEX idx_tickets_modified_time ON servicedesk.tickets ("TKT-Modified Time");
CREATE INDEX idx_tickets_created_time ON servicedesk.tickets ("TKT-Created Time");
CREATE INDEX idx_timesheets_crm_id ON servicedesk.timesheets ("TS-Crm ID");
CREATE INDEX idx_timesheets_user ON servicedesk.timesheets ("TS-User Username");
CREATE INDEX idx_timesheets_date ON servicedesk.timesheets ("TS-Date");
CREATE INDEX idx_timesheets_user_date ON servicedesk.timesheets ("TS-User Username", "TS-Date");
CREATE INDEX idx_comments_ticket_id ON servicedesk.comments (ticket_id);
CREATE INDEX idx_comments_user_name ON servicedesk.comments (user_name);
CREATE INDEX idx_comments_created_time ON servicedesk.comments (created_time);
CREATE INDEX idx_etl_metadata_view ON servicedesk.etl_metadata (view_name);
ANALYZE;
"""


def adopt_bench(args: argparse.Namespace, server: Server, env: dict[str, str]) -> dict[str, Any]:
    """Time `otc db adopt --dry-run` and `otc db adopt` on a production-size legacy database."""
    name = server.create()
    sizes = {
        "tickets": args.adopt_tickets,
        "unique_timesheets": args.adopt_timesheets - args.adopt_duplicates,
        "duplicates": args.adopt_duplicates,
        "comments": args.adopt_comments,
    }
    t = time.perf_counter()
    conn = psycopg2.connect(dsn_for(args.server, name))
    with conn, conn.cursor() as cur:
        # %% in LEGACY_SQL is SQL's modulo, escaped for psycopg2's parameters.
        cur.execute(LEGACY_SQL, sizes)
        cur.execute(INDEX_SQL)
    conn.close()
    print(
        f"legacy database: {args.adopt_timesheets:,} timesheets ({args.adopt_duplicates:,} "
        f"duplicates), {args.adopt_tickets:,} tickets, {args.adopt_comments:,} comments, "
        f"built in {time.perf_counter() - t:.1f} s"
    )
    url = url_for(args.server, name)
    dry = run_measured([*OTC, "db", "adopt", "--dry-run", "--database-url", url], env)
    adopted = run_measured([*OTC, "db", "adopt", "--database-url", url], env)
    print(f"adopt --dry-run: {dry.seconds:.1f} s")
    print(f"adopt          : {adopted.seconds:.1f} s, peak RSS {adopted.peak_rss_mb:.0f} MB")
    print(adopted.stdout.rstrip())
    return {
        "adopt_timesheets": args.adopt_timesheets,
        "adopt_dry_run_s": round(dry.seconds, 1),
        "adopt_s": round(adopted.seconds, 1),
        "adopt_peak_rss_mb": round(adopted.peak_rss_mb),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="timesheet rows (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument(
        "--big-rows", type=int, default=1_000_000, help="rows of the RSS run (0 skips)"
    )
    parser.add_argument(
        "--api-mb", type=int, default=200, help="MB of the streamed API body (0 skips)"
    )
    parser.add_argument(
        "--varying-rows",
        type=int,
        default=5000,
        help="records of the varying-field-sets case (0 skips)",
    )
    parser.add_argument(
        "--server",
        default=os.environ.get(
            "OTC_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL server (an SQLAlchemy URL) where throwaway databases may be created",
    )
    parser.add_argument(
        "--adopt",
        action="store_true",
        help="only measure `otc db adopt` on a production-size legacy database",
    )
    parser.add_argument(
        "--small-runs",
        type=int,
        default=5,
        metavar="N",
        help="runs of each small-load measurement (median; 0 skips)",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="only measure the fixed cost of a small `otc load all` (PostgreSQL and SQLite)",
    )
    parser.add_argument("--adopt-timesheets", type=int, default=850_000, metavar="N")
    parser.add_argument("--adopt-duplicates", type=int, default=4_000, metavar="N")
    parser.add_argument("--adopt-tickets", type=int, default=190_000, metavar="N")
    parser.add_argument("--adopt-comments", type=int, default=320_000, metavar="N")
    args = parser.parse_args()
    server = Server(dsn_for(args.server, args.server.rsplit("/", 1)[-1] or "postgres"))
    work = Path(tempfile.mkdtemp(prefix="otc-bench-"))
    env = dict(os.environ)
    results: dict[str, Any] = {
        "rows": args.rows,
        "date": datetime.now().isoformat(timespec="seconds"),
    }
    try:
        if args.adopt:
            results.update(adopt_bench(args, server, env))
            print(json.dumps(results))
            return
        if args.small:
            results.update(small_bench(args, server, env, work))
            print(json.dumps(results))
            return
        t = time.perf_counter()
        path = sample(work / "sample", args.rows, seed=1)
        print(
            f"sample: {args.rows:,} timesheets, {path.stat().st_size / 1e6:.1f} MB JSON "
            f"in {time.perf_counter() - t:.1f} s"
        )

        # Each measurement runs --repeat times, each first load and old-loader run on a
        # fresh database; the medians are reported (this machine varies by ±15%).
        load_args = [*OTC, "load", "timesheets", "--from", str(path), "--json"]
        firsts, reloads, reconciles, olds, written_reload = [], [], [], [], 0
        for _ in range(args.repeat):
            ours = _fresh(server, args.server)
            url = url_for(args.server, ours)
            firsts.append(run_measured([*load_args, "--database-url", url], env))
            before = written_rows(dsn_for(args.server, ours))
            reloads.append(run_measured([*load_args, "--database-url", url], env))
            written_reload = max(written_reload, written_rows(dsn_for(args.server, ours)) - before)
            # The same identical reload, reconciled: what the anti-join with the stage costs.
            reconciles.append(run_measured([*load_args, "--database-url", url, "--reconcile"], env))
            old_db = _fresh(server, args.server)
            olds.append(
                run_measured(
                    [PYTHON, "-c", OLD_LOADER, str(path), dsn_for(args.server, old_db)], env
                )
            )
        first = median_run(firsts, lambda r: json.loads(r.stdout)["duration_s"])
        reload = median_run(reloads, lambda r: json.loads(r.stdout)["duration_s"])
        reconciled = median_run(reconciles, lambda r: json.loads(r.stdout)["duration_s"])
        old = median_run(olds, lambda r: json.loads(r.stdout)["seconds"])
        summary, resummary = json.loads(first.stdout), json.loads(reload.stdout)

        columns, kept = parsed_rows(path)
        copied = len(kept)
        copy_seconds = copy_ceiling(
            columns, kept, dsn_for(args.server, _fresh(server, args.server))
        )
        moved = transports(columns, kept, server, args.server)
        reading = sorted(reading_alone(path) for _ in range(args.repeat))[args.repeat // 2]

        # Rates use each load's own clock, from opening the file to the commit (our
        # `duration_s`; the old loader times itself the same way), so interpreter start
        # and imports count for neither. Wall times of the whole processes are shown too.
        rows = args.rows
        print(f"(medians of {args.repeat} runs each)")
        first_s, reload_s = summary["duration_s"], resummary["duration_s"]
        old_s = json.loads(old.stdout)["seconds"]
        print(
            f"first load   : {rows / first_s:>9,.0f} rows/s ({first_s:.2f} s; process {first.seconds:.2f} s, "
            f"peak RSS {first.peak_rss_mb:.0f} MB; {summary['inserted']:,} inserted, "
            f"{summary['duplicates']:,} duplicates)"
        )
        print(
            f"reload       : {rows / reload_s:>9,.0f} rows/s ({reload_s:.2f} s; process {reload.seconds:.2f} s; "
            f"rows written: {written_reload}; {resummary['unchanged']:,} unchanged)"
        )
        reconcile_s = json.loads(reconciled.stdout)["duration_s"]
        print(
            f"reconcile    : {rows / reconcile_s:>9,.0f} rows/s ({reconcile_s:.2f} s: the identical "
            f"reload with --reconcile, {reconcile_s - reload_s:+.2f} s on the reload; "
            f"{json.loads(reconciled.stdout)['removed']} removed)"
        )
        print(
            f"old loader   : {rows / old_s:>9,.0f} rows/s ({old_s:.2f} s; process {old.seconds:.2f} s, "
            f"peak RSS {old.peak_rss_mb:.0f} MB)"
        )
        print(
            f"COPY ceiling : {copied / copy_seconds:>9,.0f} rows/s ({copy_seconds:.2f} s, database side only)"
        )
        print(
            "upsert transports (empty table, 10k-row chunks, database and driver, no parse): "
            + "; ".join(f"{way} {copied / seconds:,.0f} rows/s" for way, seconds in moved.items())
        )
        print(
            f"reading alone: {rows / reading:>9,.0f} rows/s ({reading:.2f} s: read, parse and encode "
            f"the file in one process, no database; a reload reads it in two halves at once)"
        )
        print(
            f"first load vs old loader: {old_s / first_s:.1f}x rows/s (target >= 3x); "
            f"processes {old.seconds / first.seconds:.1f}x"
        )
        print(
            f"reload vs first load: {reload_s / first_s:.2f}x time (target <= 0.7x; processes "
            f"{reload.seconds / first.seconds:.2f}x), {written_reload} rows written (target 0)"
        )
        results.update(
            first_rps=round(rows / first_s),
            reload_rps=round(rows / reload_s),
            reload_ratio=round(reload_s / first_s, 2),
            reload_written=written_reload,
            reconcile_s=reconcile_s,
            old_rps=round(rows / old_s),
            copy_rps=round(copied / copy_seconds),
            reading_rps=round(rows / reading),
            transports_rps={way: round(copied / seconds) for way, seconds in moved.items()},
            speedup=round(old_s / first_s, 1),
            first_peak_rss_mb=round(first.peak_rss_mb),
        )

        if args.big_rows:
            t = time.perf_counter()
            big = sample(work / "big", args.big_rows, seed=2)
            size = big.stat().st_size / 1e6
            big_url = url_for(args.server, _fresh(server, args.server))
            gen = time.perf_counter() - t
            run = run_measured(
                [
                    *OTC,
                    "load",
                    "timesheets",
                    "--from",
                    str(big),
                    "--database-url",
                    big_url,
                    "--json",
                ],
                env,
                pss=True,
            )
            # Timed apart from the memory run: reading PSS slows the processes it reads.
            timed_url = url_for(args.server, _fresh(server, args.server))
            big_load = [*OTC, "load", "timesheets", "--from", str(big), "--database-url", timed_url]
            big_first = json.loads(run_measured([*big_load, "--json"], env).stdout)["duration_s"]
            big_reload = json.loads(run_measured([*big_load, "--json"], env).stdout)["duration_s"]
            big_reconcile = json.loads(
                run_measured([*big_load, "--json", "--reconcile"], env).stdout
            )["duration_s"]
            # The reload reads in two halves: three processes. Its memory, from another
            # identical reload (PSS is read only in a run that is not timed).
            reloaded = run_measured([*big_load, "--json"], env, pss=True)
            print(
                f"big reload   : {args.big_rows / big_reload:,.0f} rows/s ({big_reload:.1f} s, "
                f"{big_reload / big_first:.2f}x the big first load's {big_first:.1f} s); "
                f"peak RSS {reloaded.peak_rss_mb:.0f} MB (PSS {reloaded.peak_pss_mb:.0f} MB)"
            )
            print(
                f"big reconcile: {big_reconcile:.1f} s (the identical big reload with "
                f"--reconcile, {big_reconcile - big_reload:+.1f} s on it)"
            )
            print(
                f"big load     : {args.big_rows:,} rows, {size:.0f} MB JSON (made in {gen:.0f} s): "
                f"{args.big_rows / run.seconds:,.0f} rows/s, peak RSS {run.peak_rss_mb:.0f} MB "
                f"(target <= 300 MB; PSS {run.peak_pss_mb:.0f} MB)"
            )
            results.update(
                big_rows=args.big_rows,
                big_mb=round(size),
                big_peak_rss_mb=round(run.peak_rss_mb),
                big_peak_pss_mb=round(run.peak_pss_mb),
                big_rps=round(args.big_rows / run.seconds),
                big_first_s=big_first,
                big_reload_s=big_reload,
                big_reconcile_s=big_reconcile,
                big_reload_peak_rss_mb=round(reloaded.peak_rss_mb),
                big_reload_peak_pss_mb=round(reloaded.peak_pss_mb),
            )
            big.unlink()

        if args.varying_rows:
            results.update(varying_bench(args, server, env, work))

        if args.api_mb:
            results.update(api_bench(args, server, env))

        if args.small_runs:
            results.update(small_bench(args, server, env, work))
    finally:
        server.drop_all()
        shutil.rmtree(work, ignore_errors=True)  # the sample exports: 64 MB at 100k rows
    print(json.dumps(results))


def varying_bench(
    args: argparse.Namespace, server: Server, env: dict[str, str], work: Path
) -> dict[str, Any]:
    """First load and reload of the same records with uniform and with varying field sets."""
    made = sample(work / "varying", args.varying_rows, seed=3)
    body = json.loads(made.read_text())
    records = body["message"]["data"] if isinstance(body, dict) else body
    keys = ("TS-User Username", "TS-Date", "TS-Time From", "TS-Crm ID")
    others = sorted({f for r in records for f in r} - set(keys))
    uniform, varying = [], []
    for i, record in enumerate(records):
        # Record i leaves out the fields of its own pattern of bits (null in the uniform file).
        left_out = {f for j, f in enumerate(others) if (i * 2654435761 >> j) & 1}
        uniform.append({f: (None if f in left_out else record.get(f)) for f in [*keys, *others]})
        varying.append({f: v for f, v in uniform[-1].items() if f not in left_out})
    sets = len({tuple(r) for r in varying})
    seconds: dict[str, tuple[float, float]] = {}
    for name, rows in (("uniform", uniform), ("varying", varying)):
        path = work / f"{name}.json"
        path.write_text(json.dumps(rows))
        url = url_for(args.server, _fresh(server, args.server))
        load = [*OTC, "load", "timesheets", "--from", str(path), "--database-url", url, "--json"]
        first = json.loads(run_measured(load, env).stdout)["duration_s"]
        again = json.loads(run_measured(load, env).stdout)["duration_s"]
        seconds[name] = (first, again)
    (u_first, u_again), (v_first, v_again) = seconds["uniform"], seconds["varying"]
    print(
        f"varying sets : {args.varying_rows:,} records in {sets:,} field sets: first load "
        f"{v_first:.2f} s vs {u_first:.2f} s uniform ({v_first / u_first:.2f}x), reload "
        f"{v_again:.2f} s vs {u_again:.2f} s ({v_again / u_again:.2f}x; target <= 1.5x)"
    )
    return {
        "varying_rows": args.varying_rows,
        "varying_sets": sets,
        "varying_first_ratio": round(v_first / u_first, 2),
        "varying_reload_ratio": round(v_again / u_again, 2),
    }


def api_bench(args: argparse.Namespace, server: Server, env: dict[str, str]) -> dict[str, Any]:
    """Peak RSS of `otc load timesheets --from api` against a local server streaming a big body."""
    rows = args.api_mb * 1_000_000 // 412  # a generated timesheet record is about 412 bytes
    password = uuid.uuid4().hex
    serving = subprocess.Popen(
        [
            PYTHON,
            str(ROOT / "tests" / "otc_server.py"),
            "--timesheets",
            str(rows),
            "--user",
            "bench",
            "--password",
            password,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    state = tempfile.mkdtemp(prefix="otc-bench-state-")
    try:
        assert serving.stdout is not None
        base_url = serving.stdout.readline().strip()
        url = url_for(args.server, _fresh(server, args.server))
        child_env = dict(
            env,
            OTC_API_BASE_URL=base_url,
            OTC_API_USER="bench",
            OTC_API_PASSWORD=password,
            OTC_API_MIN_INTERVAL_S="0",
            OTC_STATE_DIR=state,
        )
        run = run_measured(
            [*OTC, "load", "timesheets", "--from", "api", "--database-url", url, "--json"],
            child_env,
            pss=True,
        )
        summary = json.loads(run.stdout)
    finally:
        serving.terminate()
        serving.wait(10)
        shutil.rmtree(state, ignore_errors=True)
    print(
        f"api stream   : ~{args.api_mb} MB body, {summary['fetched']:,} records: "
        f"{summary['fetched'] / run.seconds:,.0f} rows/s, peak RSS {run.peak_rss_mb:.0f} MB "
        f"(target <= 300 MB; PSS {run.peak_pss_mb:.0f} MB)"
    )
    return {
        "api_mb": args.api_mb,
        "api_rows": summary["fetched"],
        "api_peak_rss_mb": round(run.peak_rss_mb),
        "api_peak_pss_mb": round(run.peak_pss_mb),
    }


if __name__ == "__main__":
    main()
