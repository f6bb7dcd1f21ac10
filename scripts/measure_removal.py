"""Time removal.move_out on a production-sized timesheets table against a full stage.

Creates a throwaway PostgreSQL database on the server of OTC_TEST_DATABASE_URL
(default: the local trust-auth server), migrates it to head, fills timesheets with
N rows (default 850,000, production's size; 20% without a ticket), and builds a
temporary stage shaped like the loader's (its three bookkeeping columns and every
timesheet column) holding what a complete source would carry: every row but 1%
deleted in OTC and 0.5% re-keyed (another start time), so 1.5% of the rows leave.
Then, each in a transaction rolled back afterwards, --repeat times (median shown):

* the anti-join alone (count the table's rows the stage lacks): about what one
  reload's compare of the whole stage with the table costs;
* move_out as the loader would call it, the stage unanalyzed (the loader analyzes
  it only when rows changed), its INSERT … SELECT and its DELETE timed apart;
* the same with the stage analyzed;
* the alternative DELETE: a second anti-join of the range with the stage
  (DELETE … WHERE NOT EXISTS), instead of deleting the copied rows by primary key,
  both statements under the loader's compare settings (as move_out's INSERT runs).

Then drops the database. Usage: .venv/bin/python scripts/measure_removal.py [N] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Table,
    delete,
    event,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.engine import Connection, make_url

from otc_pipeline import migrate, removal
from otc_pipeline.chunks import COLUMN_SET, KEY_HASH, POSITION
from otc_pipeline.db import make_engine
from otc_pipeline.merge import ONE_HASH_JOIN, key_match, planned
from otc_pipeline.stage import Stage
from otc_pipeline.views import TIMESHEETS

ADMIN = os.environ.get("OTC_TEST_DATABASE_URL") or (
    "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)

FILL = """
INSERT INTO servicedesk.timesheets ("TS-User Username", "TS-User Full Name", "TS-Date",
  "TS-Time From", "TS-Time To", "TS-Hours", "TS-Category", "TS-Sub Category", "TS-Type",
  "TS-Crm ID", "TS-Description", "TS-Account Name", "TS-Billable", "TS-Approved",
  "TS-Modified Time")
SELECT 'user' || n % 350, 'User ' || n % 350,
       timestamp '2024-07-01' + ((n / 350) / 5) * interval '1 day',
       to_char(time '07:00' + ((n / 350) % 5) * interval '90 minutes', 'HH24:MI'),
       to_char(time '08:00' + ((n / 350) % 5) * interval '90 minutes', 'HH24:MI'),
       (n % 16) * 0.25, 'Work', 'Project', 'Normal',
       CASE WHEN n % 5 = 0 THEN NULL ELSE 100000 + n % 190000 END,
       'entry ' || n, 'Account ' || n % 900, n % 2 = 0, true,
       timestamp '2024-07-01' + n * interval '1 minute'
FROM generate_series(0, :rows - 1) AS n
"""


def stage_table(conn: Connection) -> Table:
    """The loader's own stage of the timesheets, filled from the table as a reload stages it."""
    stage = Stage(conn, TIMESHEETS, indexed=True).table
    names = [c for c in stage.c.keys() if c not in (POSITION, COLUMN_SET, KEY_HASH)]
    quoted = ", ".join(f'"{n}"' for n in names)
    rekeyed = """CASE WHEN mod(id, 200) = 3 THEN '23:59' ELSE "TS-Time From" END"""
    values = ", ".join(rekeyed if n == "TS-Time From" else f'"{n}"' for n in names)
    # Every row but 1% (deleted in OTC); 0.5% with another start time (re-keyed).
    conn.exec_driver_sql(
        f'INSERT INTO {stage.name} ("{POSITION}", "{COLUMN_SET}", "{KEY_HASH}", '  # noqa: S608
        f"{quoted}) SELECT id, 0, id, {values} FROM servicedesk.timesheets WHERE mod(id, 100) <> 7"
    )
    return stage


class StatementClock:
    """Seconds of each INSERT and DELETE run on an engine."""

    def __init__(self, engine: Any) -> None:
        self.times: dict[str, float] = {}
        self._started = 0.0
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, *args: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in ("INSERT", "DELETE"):
            self.times[verb] = self.times.get(verb, 0.0) + time.perf_counter() - self._started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="?", type=int, default=850_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    name = f"otc_bench_removal_{uuid.uuid4().hex[:8]}"
    admin = make_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = make_engine(make_url(ADMIN).set(database=name))
    try:
        migrate.upgrade(engine, "head")
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text(FILL), {"rows": args.rows})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE servicedesk.timesheets")
        print(f"{args.rows:,} timesheets in {time.perf_counter() - started:.1f} s")
        clock = StatementClock(engine)
        live = TIMESHEETS.table
        results: dict[str, list[tuple[float, float, float, int]]] = {}

        def measure(label: str, body: Callable[[Connection, Table], int]) -> None:
            for _ in range(args.repeat):
                with engine.connect() as conn:
                    transaction = conn.begin()
                    stage = stage_table(conn)
                    if label.startswith("move_out, stage analyzed"):
                        conn.exec_driver_sql("ANALYZE otc_stage_timesheets")
                    clock.times.clear()
                    began = time.perf_counter()
                    count = body(conn, stage)
                    took = time.perf_counter() - began
                    inserted, deleted = (
                        clock.times.get("INSERT", 0.0),
                        clock.times.get("DELETE", 0.0),
                    )
                    transaction.rollback()
                results.setdefault(label, []).append((took, inserted, deleted, count))

        def low_high(conn: Connection, stage: Table) -> tuple[datetime, datetime]:
            low, high = conn.execute(
                select(func.min(stage.c["TS-Date"]), func.max(stage.c["TS-Date"]))
            ).one()
            return low, high

        def anti_join(conn: Connection, stage: Table) -> int:
            with planned(conn, ONE_HASH_JOIN):
                carried = (
                    select(literal(1)).select_from(stage).where(key_match(live, stage, TIMESHEETS))
                )
                return int(
                    conn.execute(
                        select(func.count()).select_from(live).where(~carried.exists())
                    ).scalar_one()
                )

        def move(conn: Connection, stage: Table) -> int:
            low, high = low_high(conn, stage)
            return removal.move_out(
                conn,
                TIMESHEETS,
                stage,
                column="TS-Date",
                low=low,
                high=high,
                run_id=1,
                reason="bench",
            )

        def move_then_anti_join_delete(conn: Connection, stage: Table) -> int:
            low, high = low_high(conn, stage)
            removed = removal.removed_table(TIMESHEETS)
            carried = (
                select(literal(1)).select_from(stage).where(key_match(live, stage, TIMESHEETS))
            )
            in_range = live.c["TS-Date"].between(low, high)
            columns = removal.live_columns(TIMESHEETS)
            rows = select(
                *(live.c[c] for c in columns), literal(1), func.now(), literal("b")
            ).where(in_range, ~carried.exists())
            with planned(conn, ONE_HASH_JOIN):
                conn.execute(
                    removed.insert().from_select(
                        [*columns, "removed_run_id", "removed_at", "removed_reason"], rows
                    )
                )
                deleted = conn.execute(delete(live).where(in_range, ~carried.exists()))
            return int(deleted.rowcount)

        measure("anti-join alone (compare settings)", anti_join)
        measure("move_out, stage unanalyzed", move)
        measure("move_out, stage analyzed", move)
        measure("INSERT + DELETE by a second anti-join", move_then_anti_join_delete)
        print(f"median of {args.repeat}: total (INSERT … SELECT + DELETE), rows")
        for label, runs in results.items():
            took = statistics.median(r[0] for r in runs)
            inserted = statistics.median(r[1] for r in runs)
            deleted = statistics.median(r[2] for r in runs)
            print(
                f"  {label:<40} {took:6.2f} s ({inserted:.2f} + {deleted:.2f}), {runs[0][3]:,} rows"
            )
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


if __name__ == "__main__":
    main()
