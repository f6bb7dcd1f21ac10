"""Time the 0005_canonical_times migration on a production-sized timesheets table.

Creates a throwaway PostgreSQL database on the server of OTC_TEST_DATABASE_URL
(default: the local trust-auth server), migrates it to 0004_analyst_views, COPYs
N timesheets into it (default 850,000, production's size) spelled as real loads
left them, then times the upgrade to 0005 and the downgrade back, and drops the
database. Usage: .venv/bin/python scripts/measure_canonical_times.py [N]

Spellings: 70% of the rows as the API gives them (07:00), 15% as a spreadsheet
time cell read by the old loader (07:00:00), 10% as an h:mm CSV (7:00) and 5% an
entry loaded twice, once from each of two formats (7:00 and 07:00:00), so 5% of
the rows collide and are archived.
"""

from __future__ import annotations

import io
import os
import random
import sys
import time
import uuid
from datetime import datetime, timedelta

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from otc_pipeline import migrate
from otc_pipeline.db import make_engine

COLUMNS = (
    '"TS-User Username"',
    '"TS-User Full Name"',
    '"TS-Date"',
    '"TS-Time From"',
    '"TS-Time To"',
    '"TS-Hours"',
    '"TS-Crm ID"',
    '"TS-Modified Time"',
)


def rows(count: int) -> io.StringIO:
    rng = random.Random(5)
    out = io.StringIO()
    day0 = datetime(2024, 7, 1)
    written = 0
    entry = 0
    while written < count:
        entry += 1
        user = f"user{entry % 350}"
        day = day0 + timedelta(days=(entry // 350) % 540)
        minute = (entry // (350 * 540)) * 15 + rng.randrange(0, 3) * 5
        hour, mins = divmod(minute % 1440, 60)
        end_hour = (hour + 1) % 24
        crm = "\\N" if rng.random() < 0.2 else str(100000 + entry)
        roll = rng.random()
        if roll < 0.70:
            spellings = [(f"{hour:02d}:{mins:02d}", f"{end_hour:02d}:{mins:02d}")]
        elif roll < 0.85:
            spellings = [(f"{hour:02d}:{mins:02d}:00", f"{end_hour:02d}:{mins:02d}:00")]
        elif roll < 0.95:
            spellings = [(f"{hour}:{mins:02d}", f"{end_hour}:{mins:02d}")]
        else:
            spellings = [
                (f"{hour}:{mins:02d}", f"{end_hour}:{mins:02d}"),
                (f"{hour:02d}:{mins:02d}:00", f"{end_hour:02d}:{mins:02d}:00"),
            ]
        for time_from, time_to in spellings:
            modified = day + timedelta(hours=rng.randrange(8, 48))
            out.write(
                f"{user}\tUser {entry % 350}\t{day:%Y-%m-%d}\t{time_from}\t{time_to}\t1.0\t"
                f"{crm}\t{modified:%Y-%m-%d %H:%M:%S}\n"
            )
            written += 1
    out.seek(0)
    return out


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 850_000
    admin_url = make_url(
        os.environ.get("OTC_TEST_DATABASE_URL")
        or "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    )
    name = f"otc_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = make_engine(admin_url.set(database=name))
    try:
        migrate.upgrade(engine, "0004_analyst_views")
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.copy_expert(
                f"COPY servicedesk.timesheets ({', '.join(COLUMNS)}) FROM STDIN", rows(count)
            )
            raw.commit()
        finally:
            raw.close()
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE servicedesk.timesheets")
        started = time.perf_counter()
        migrate.upgrade(engine, "0005_canonical_times")
        upgraded = time.perf_counter() - started
        with engine.connect() as conn:
            live = conn.execute(text("SELECT count(*) FROM servicedesk.timesheets")).scalar()
            archived = conn.execute(
                text("SELECT count(*) FROM servicedesk.timesheets_dedup_archive")
            ).scalar()
            rewritten = conn.execute(
                text("SELECT count(*) FROM servicedesk.timesheets_time_spellings")
            ).scalar()
        print(f"{count:,} timesheets: upgrade to 0005 {upgraded:.1f} s", flush=True)
        started = time.perf_counter()
        migrate.downgrade(engine, "0004_analyst_views")
        downgraded = time.perf_counter() - started
        print(
            f"{count:,} timesheets: upgrade to 0005 {upgraded:.1f} s "
            f"({live:,} live, {archived:,} archived, {rewritten:,} spellings kept); "
            f"downgrade {downgraded:.1f} s"
        )
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


if __name__ == "__main__":
    main()
