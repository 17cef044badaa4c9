"""Storage that keeps its speed (sql/006): day partitions, retention, rollups, migration, views.

Real PostgreSQL throughout; the embedded broker only where the consumer is the subject.
Rollups are checked against a direct GROUP BY over the raw tables, written here on its
own (explicit UTC buckets, anomalies counted once per customer and timestamp), never
by reusing the statements under test.
"""

from __future__ import annotations

import random
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from heartbeat_platform import readiness
from heartbeat_platform.domain.events import HeartbeatClass, classify_heart_rate
from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.storage import maintenance
from heartbeat_platform.storage.migrations import load_migrations, migrate
from heartbeat_platform.storage.partitions import (
    RAW_TABLES,
    apply_retention,
    ensure_partitions,
    partition_days,
)
from heartbeat_platform.storage.rollups import (
    Rollup,
    mark_pending,
    refresh,
    refresh_pending,
    window_start,
)
from heartbeat_platform.storage.writer import Batch, BatchWriter, PartitionProgress
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from tests.integration.test_schema import VIEW_COLUMNS  # the views' contract, for both files

DAY = timedelta(days=1)
MICROSECOND = timedelta(microseconds=1)
ROLLUP_TABLES = ("fleet_minute_stats", "customer_hourly_bpm_stats", "customer_daily_bpm_stats",
                 "customers")

Record = tuple[str, datetime, int]  # customer_id, event_timestamp, heart_rate
Anomaly = tuple[str, datetime, int, str, int]  # ... anomaly_type, kafka_offset


# -- helpers ----------------------------------------------------------------------------------
def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def migration_day(conn: psycopg.Connection) -> date:
    """The UTC day the schema was created on: its partitions run from 7 days back to 3 ahead.

    Retention tests take "today" from here, not from the clock, so a midnight passing
    between the migration and the test's first step changes nothing.
    """
    return partition_days(conn)["heartbeat_records"][-1] - timedelta(days=3)


def insert_readings(conn: psycopg.Connection, records: Iterable[Record],
                    anomalies: Iterable[Anomaly]) -> None:
    """Raw rows as the writer stores them (records at partition 0, anomalies at 1)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
            "kafka_partition, kafka_offset) VALUES (%s, %s, %s, 0, %s)",
            [(c, when, bpm, i) for i, (c, when, bpm) in enumerate(records)],
        )
        cur.executemany(
            "INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate, "
            "anomaly_type, raw_payload, kafka_partition, kafka_offset) "
            "VALUES (%s, %s, %s, %s, '{}', 1, %s) ON CONFLICT DO NOTHING",
            list(anomalies),
        )


def classified(events: Iterable[tuple[str, datetime, int]], replays: Iterable[int] = ()
               ) -> tuple[list[Record], list[Anomaly]]:
    """Readings split as the consumer would: one record or anomaly per customer and time;
    `replays` repeat some anomalies at another Kafka offset (the same reading again, which
    the table keeps once, as the writer does)."""
    records: dict[tuple[str, datetime], Record] = {}
    anomalies: dict[tuple[str, datetime], Anomaly] = {}
    for customer, when, bpm in events:
        klass = classify_heart_rate(bpm)
        if klass is HeartbeatClass.NORMAL:
            records.setdefault((customer, when), (customer, when, bpm))
        else:
            anomalies.setdefault((customer, when),
                                 (customer, when, bpm, klass.value, len(anomalies)))
    unique = list(anomalies.values())
    repeated = [
        (*unique[i % len(unique)][:4], 10_000 + n) for n, i in enumerate(replays) if unique
    ]
    return list(records.values()), unique + repeated


def seeded_events(seed: int, start: datetime, hours: int, per_hour: int = 40,
                  customers: int = 5) -> list[tuple[str, datetime, int]]:
    rng = random.Random(seed)
    events = []
    for _ in range(hours * per_hour):
        customer = f"CUST_{rng.randint(1, customers):05d}"
        when = start + timedelta(microseconds=rng.randrange(hours * 3600 * 10**6))
        when = when.replace(microsecond=rng.choice([0, 0, 0, when.microsecond]))
        kind = rng.random()
        if kind < 0.8:
            bpm = rng.randint(40, 180)
        elif kind < 0.88:
            bpm = rng.randint(15, 39)
        elif kind < 0.96:
            bpm = rng.randint(181, 220)
        else:
            bpm = rng.choice([0, -1, 301, 400])
        events.append((customer, when, bpm))
    return events


def mark_all_pending(conn: psycopg.Connection) -> None:
    """Mark every minute (and hour) holding a raw reading, as batches and refreshes do."""
    minutes = [
        row[0] for row in conn.execute(
            "SELECT DISTINCT date_trunc('minute', event_timestamp, 'UTC') FROM ("
            "SELECT event_timestamp FROM heartbeat_records "
            "UNION ALL SELECT event_timestamp FROM heartbeat_anomalies) AS r"
        )
    ]
    mark_pending(conn, Rollup.FLEET_MINUTE, minutes)
    mark_pending(conn, Rollup.CUSTOMER_HOURLY,
                 sorted({window_start(Rollup.CUSTOMER_HOURLY, m) for m in minutes}))


# Every rollup level: (table, time column, its UTC bucket of a reading, per customer?).
# customer_minute_stats is the first level where the schema keeps one (a fleet-minute
# refresh writes it); the checks below compare whatever columns each table has.
ROLLUP_LEVELS = (
    ("fleet_minute_stats", "minute", "date_trunc('minute', event_timestamp, 'UTC')", False),
    ("customer_minute_stats", "minute", "date_trunc('minute', event_timestamp, 'UTC')", True),
    ("customer_hourly_bpm_stats", "hour", "date_trunc('hour', event_timestamp, 'UTC')", True),
    ("customer_daily_bpm_stats", "day", "(event_timestamp AT TIME ZONE 'UTC')::date", True),
)
OPTIONAL_LEVELS = {"customer_minute_stats"}


def direct_rollup(conn: psycopg.Connection, key: str, bucket: str, per_customer: bool
                  ) -> list[dict]:
    """A rollup's rows computed straight from every raw row, by a plain GROUP BY."""
    keys = ["customer_id", key] if per_customer else [key]
    select_keys = f"{bucket} AS {key}" + (", customer_id" if per_customer else "")
    group = ", ".join(keys)
    extra_readings = (
        "min(event_timestamp) AS first_reading_at, max(event_timestamp) AS last_reading_at"
        if per_customer else "count(DISTINCT customer_id) AS customer_count"
    )
    extra_anomalies = ", max(event_timestamp) AS last_anomaly_at" if per_customer else ""
    extra_out = (
        "first_reading_at, last_reading_at, last_anomaly_at" if per_customer
        else "coalesce(customer_count, 0) AS customer_count"
    )
    query = f"""
        WITH r AS (
            SELECT {select_keys}, count(*) AS reading_count,
                   round(avg(heart_rate), 1) AS avg_bpm, min(heart_rate) AS min_bpm,
                   max(heart_rate) AS max_bpm, round(stddev_samp(heart_rate), 1) AS stddev_bpm,
                   sum(heart_rate) AS bpm_sum,
                   sum(heart_rate::bigint * heart_rate) AS bpm_sum_squares, {extra_readings}
            FROM heartbeat_records GROUP BY {group}
        ), a AS (
            SELECT {select_keys}, count(*) AS anomaly_count,
                   count(*) FILTER (WHERE anomaly_type = 'BRADYCARDIA') AS bradycardia_count,
                   count(*) FILTER (WHERE anomaly_type = 'TACHYCARDIA') AS tachycardia_count,
                   count(*) FILTER (WHERE anomaly_type = 'INVALID') AS invalid_count
                   {extra_anomalies}
            FROM (SELECT DISTINCT customer_id, event_timestamp, anomaly_type
                  FROM heartbeat_anomalies) AS once
            GROUP BY {group}
        )
        SELECT {group}, coalesce(reading_count, 0) AS reading_count, avg_bpm, min_bpm,
               max_bpm, stddev_bpm, coalesce(anomaly_count, 0) AS anomaly_count,
               coalesce(bradycardia_count, 0) AS bradycardia_count,
               coalesce(tachycardia_count, 0) AS tachycardia_count,
               coalesce(invalid_count, 0) AS invalid_count,
               coalesce(bpm_sum, 0) AS bpm_sum, coalesce(bpm_sum_squares, 0) AS bpm_sum_squares,
               {extra_out}
        FROM r FULL OUTER JOIN a USING ({group})
        ORDER BY {group}"""
    return conn.cursor(row_factory=dict_row).execute(query).fetchall()


def direct_customers(conn: psycopg.Connection) -> list[dict]:
    return conn.cursor(row_factory=dict_row).execute(
        """SELECT customer_id, min(first_at) AS first_reading_at,
                  max(last_at) AS last_reading_at, max(anomaly_at) AS last_anomaly_at
           FROM (SELECT customer_id, event_timestamp AS first_at, event_timestamp AS last_at,
                        NULL::timestamptz AS anomaly_at FROM heartbeat_records
                 UNION ALL
                 SELECT customer_id, NULL, NULL, event_timestamp FROM heartbeat_anomalies) AS s
           GROUP BY customer_id ORDER BY customer_id"""
    ).fetchall()


def defined(row: dict) -> dict:
    """The row without its sample deviation where that is undefined (fewer than two
    readings): what it must be there is the subject of its own test."""
    if row.get("reading_count", 2) >= 2:
        return row
    return {k: v for k, v in row.items() if k != "stddev_bpm"}


def exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def rollup_contents(conn: psycopg.Connection, table: str) -> list[dict]:
    """A rollup table's rows in key order, without when they were computed."""
    rows = conn.cursor(row_factory=dict_row).execute(f"SELECT * FROM {table}").fetchall()
    for row in rows:
        row.pop("computed_at", None)
    return sorted(rows, key=lambda row: tuple(str(row[k]) for k in sorted(row)))


def assert_rollups_equal_direct(conn: psycopg.Connection) -> None:
    """Every rollup table holds exactly what a full recompute from the raw rows gives."""
    for table, key, bucket, per_customer in ROLLUP_LEVELS:
        if table in OPTIONAL_LEVELS and not exists(conn, table):
            continue
        want = direct_rollup(conn, key, bucket, per_customer)
        if not want:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
            continue
        stored_columns = {c.name for c in conn.execute(f"SELECT * FROM {table} LIMIT 0")
                          .description}
        columns = [c for c in want[0] if c in stored_columns]
        want = [{c: row[c] for c in columns} for row in want]
        order = f"customer_id, {key}" if per_customer else key
        got = conn.cursor(row_factory=dict_row).execute(
            f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}"
        ).fetchall()
        for stored, direct in zip(got, want, strict=False):  # the first differing row
            assert defined(stored) == defined(direct), (table, stored, direct)
        assert len(got) == len(want), table
    customers = conn.cursor(row_factory=dict_row).execute(
        "SELECT customer_id, first_reading_at, last_reading_at, last_anomaly_at FROM customers "
        "ORDER BY customer_id"
    ).fetchall()
    assert customers == direct_customers(conn)


def rollup_rows(conn: psycopg.Connection, table: str) -> set[tuple]:
    """Every row of a rollup table, computed_at included."""
    return set(conn.execute(f"SELECT * FROM {table}").fetchall())


def table_fingerprint(conn: psycopg.Connection, relation: str, columns: str) -> tuple[int, str]:
    """Row count and a checksum of every row's contents (order independent)."""
    return conn.execute(
        f"SELECT count(*), coalesce(md5(string_agg(r::text, E'\\n' ORDER BY r::text)), '') "
        f"FROM (SELECT {columns} FROM {relation}) AS r"
    ).fetchone()


def view_rows(conn: psycopg.Connection, view: str) -> tuple[list[str], list[tuple]]:
    """A view's column names and rows (the per-customer summary has no order of its own)."""
    cursor = conn.execute(f"SELECT * FROM {view}")
    rows = cursor.fetchall()
    if view == "vw_customer_bpm_summary":
        rows.sort(key=lambda row: row[0])
    return [c.name for c in cursor.description], rows


def write_batch(database_url: str, records: list[Record], anomalies: Iterable[Anomaly] = (),
                partition: int = 0) -> None:
    """Through the consumer's batch writer: rows, progress and rollup marks in one commit
    (once per test database: the progress of its partition is claimed as new)."""
    writer = BatchWriter(database_url, "storage-tests", "storage-topic")
    anomalies = list(anomalies)
    first = max((a[4] for a in anomalies), default=-1) + 1  # records after the anomalies
    offsets = [a[4] for a in anomalies] + [first + i for i in range(len(records))]
    batch = Batch(
        records=[(c, when, bpm, 0, partition, first + i)
                 for i, (c, when, bpm) in enumerate(records)],
        anomalies=[(c, when, bpm, kind, "{}", 0, partition, offset)
                   for c, when, bpm, kind, offset in anomalies],
        progress={partition: (None, PartitionProgress(0, max(offsets, default=0) + 1))},
    )
    try:
        writer.write(batch)
    finally:
        writer.close()


# -- 2. partitions ----------------------------------------------------------------------------
def test_ensure_partitions_creates_every_day_of_the_window_once(database_url: str, db) -> None:
    migrate(database_url)
    policy = RetentionPolicy(raw_retention_days=12, partitions_ahead_days=5)
    now = datetime.now(UTC)
    before = partition_days(db)
    created = ensure_partitions(db, policy, now)
    after = partition_days(db)

    window = days_between(*policy.days_to_create(now))
    assert set(RAW_TABLES) <= set(after)
    for table in after:
        assert set(window) <= set(after[table]), table
    new = sum(len(set(after[t]) - set(before[t])) for t in after)
    assert created == new > 0  # more than the migration's default week

    # each is a partition of its parent for exactly its UTC day
    db.execute("SET TimeZone = 'UTC'")  # how the bounds are spelled below
    bounds = dict(db.execute(
        """SELECT child.relname, pg_get_expr(child.relpartbound, child.oid)
           FROM pg_inherits JOIN pg_class child ON child.oid = inhrelid"""
    ).fetchall())
    for table in after:
        for day in window:
            assert bounds[partition_name(table, day)] == (
                f"FOR VALUES FROM ('{day} 00:00:00+00') TO ('{day + DAY} 00:00:00+00')"
            )

    assert ensure_partitions(db, policy, now) == 0
    assert partition_days(db) == after


def test_concurrent_ensure_partitions_all_succeed_and_create_each_day_once(
    database_url: str, db
) -> None:
    migrate(database_url)
    policy = RetentionPolicy(raw_retention_days=60, partitions_ahead_days=20)
    now = datetime.now(UTC)
    before = partition_days(db)
    workers = 6
    start = threading.Barrier(workers)

    def ensure(_: int) -> int:
        with psycopg.connect(database_url) as conn:
            start.wait(timeout=60)
            return ensure_partitions(conn, policy, now)

    with ThreadPoolExecutor(workers) as pool:
        created = list(pool.map(ensure, range(workers)))  # raises if any call failed

    after = partition_days(db)
    window = days_between(*policy.days_to_create(now))
    for table in after:
        assert set(window) <= set(after[table]), table
    assert sum(created) == sum(len(set(after[t]) - set(before[t])) for t in after) > 0


# -- 3. rows land in their day ------------------------------------------------------------------
def test_readings_land_in_the_partition_of_their_utc_day(database_url: str, db) -> None:
    migrate(database_url)
    now = datetime.now(UTC)
    ensure_partitions(db, RetentionPolicy(), now)
    today = midnight(now.date())
    last_of_yesterday = today - MICROSECOND
    three_days_ago = (now - timedelta(days=3)).replace(hour=12, minute=34)
    write_batch(
        database_url,
        records=[("CUST_00001", last_of_yesterday, 70), ("CUST_00001", today, 71),
                 ("CUST_00002", three_days_ago, 72)],
        anomalies=[("CUST_00003", last_of_yesterday, 30, "BRADYCARDIA", 10),
                   ("CUST_00003", today, 200, "TACHYCARDIA", 11),
                   ("CUST_00004", three_days_ago, 0, "INVALID", 12)],
    )
    for table in ("heartbeat_records", "heartbeat_anomalies"):
        placed = dict(db.execute(
            f"SELECT event_timestamp, tableoid::regclass::text FROM {table}"
        ).fetchall())
        assert placed == {
            last_of_yesterday: partition_name(table, last_of_yesterday.date()),
            today: partition_name(table, today.date()),
            three_days_ago: partition_name(table, three_days_ago.date()),
        }, table


# -- 4. the consumer refuses readings outside the window ----------------------------------------
def test_consumer_turns_readings_outside_the_window_into_dead_letters_with_a_reason(
    settings_factory: Callable, database_url: str, db
) -> None:
    settings = settings_factory(database_url=database_url)  # defaults: 7 days, 300 s
    prepared = readiness.prepare(settings)
    now = datetime.now(UTC)
    fine = (now - timedelta(minutes=10)).replace(microsecond=0)
    eight_days_ago = now - timedelta(days=8)
    an_hour_ahead = now + timedelta(hours=1)
    stored = [fine, fine + timedelta(seconds=75), fine - timedelta(hours=1)]
    events = [  # offsets 0..5 of one partition: refused and stored readings side by side
        ("CUST_00001", 72, eight_days_ago),
        ("CUST_00002", 200, eight_days_ago),  # an anomaly, refused before it is classified
        ("CUST_00003", 72, an_hour_ahead),
        ("CUST_00004", 72, stored[0]),
        ("CUST_00005", 30, stored[1]),
        ("CUST_00006", 75, stored[2]),  # another hour
    ]
    producer = Producer({"bootstrap.servers": prepared.endpoints.bootstrap_servers})
    for customer, bpm, when in events:
        producer.produce(settings.kafka_topic, partition=0, key=customer.encode(),
                         value=orjson.dumps({"customer_id": customer, "heart_rate": bpm,
                                             "timestamp": when.isoformat()}))
    assert producer.flush(10) == 0

    consumer = HeartbeatConsumer(readiness.consumer_config(settings, prepared.endpoints))
    report = consumer.run(stop_when_idle=1.5)

    assert report.stats.messages_consumed == len(events)
    records = db.execute("SELECT kafka_offset FROM heartbeat_records ORDER BY 1").fetchall()
    anomalies = db.execute("SELECT kafka_offset FROM heartbeat_anomalies").fetchall()
    dead = dict(db.execute("SELECT kafka_offset, reason FROM heartbeat_dead_letters").fetchall())
    assert [r[0] for r in records] == [3, 5]
    assert [a[0] for a in anomalies] == [4]
    assert sorted(dead) == [0, 1, 2]
    # nothing lost, nothing doubled
    assert len(records) + len(anomalies) + len(dead) == report.stats.messages_consumed
    assert report.stats.dead_letters == 3
    for offset in (0, 1):
        assert "older than the raw retention window of 7 days" in dead[offset]
        assert "HEARTBEAT_RAW_RETENTION_DAYS" in dead[offset]
    assert "in the future" in dead[2] and "HEARTBEAT_MAX_CLOCK_SKEW_S" in dead[2]
    # the refused tachycardia raised no alert; the stored bradycardia did
    alerts = db.execute(
        "SELECT kafka_offset FROM pipeline_metrics WHERE metric_name LIKE 'alert\\_%'"
    ).fetchall()
    assert alerts == [(4,)]

    # the batch marked the minutes of the stored readings, and only those (their hours
    # are marked with them, or when the minutes are recomputed)
    assert marks_of(db, Rollup.FLEET_MINUTE) == {window_start(Rollup.FLEET_MINUTE, t)
                                                 for t in stored}
    hours = {window_start(Rollup.CUSTOMER_HOURLY, t) for t in stored}
    assert marks_of(db, Rollup.CUSTOMER_HOURLY) <= hours
    assert marks_of(db, Rollup.CUSTOMER_DAILY) == set()
    refresh_pending(db, now + timedelta(days=2))
    hourly = db.execute("SELECT hour, sum(reading_count + anomaly_count) "
                        "FROM customer_hourly_bpm_stats GROUP BY 1").fetchall()
    assert dict(hourly) == {h: sum(window_start(Rollup.CUSTOMER_HOURLY, t) == h for t in stored)
                            for h in hours}


# -- 5. retention -------------------------------------------------------------------------------
def fill_day(conn: psycopg.Connection, day: date, offset: int) -> None:
    """Rows of every raw table on one day (readings at 10:xx and 23:59, UTC)."""
    start = midnight(day)
    records = [(f"CUST_{i:05d}", start + timedelta(hours=10, minutes=i), 60 + i)
               for i in range(1, 4)]
    records.append(("CUST_00001", start + DAY - MICROSECOND, 90))
    anomalies = [("CUST_00002", start + timedelta(hours=10, seconds=30), 30, "BRADYCARDIA",
                  offset), ("CUST_00009", start + timedelta(hours=23, minutes=59), 400,
                            "INVALID", offset + 1)]
    insert_readings(conn, records, anomalies)
    conn.execute(
        "INSERT INTO heartbeat_dead_letters (kafka_partition, kafka_offset, raw_value, reason, "
        "received_at) VALUES (2, %s, 'x', 'not JSON', %s)", (offset, start + timedelta(hours=3))
    )
    conn.execute(
        "INSERT INTO pipeline_metrics (metric_name, metric_value, recorded_at) VALUES "
        "('stats_messages_consumed', %s, %s), ('alert_bradycardia', 1, %s)",
        (offset, start + timedelta(hours=4), start + timedelta(hours=10, seconds=30)),
    )


def partition_fingerprints(conn: psycopg.Connection, days: Iterable[date]) -> dict:
    return {
        (table, day): table_fingerprint(conn, partition_name(table, day), "*")
        for table in partition_days(conn) for day in days
    }


def marks_of(conn: psycopg.Connection, rollup: Rollup) -> set[datetime]:
    """The windows of `rollup` marked pending (by any Kafka partition or job)."""
    return {row[0] for row in conn.execute(
        "SELECT window_start FROM rollup_pending WHERE rollup = %s", (rollup.value,))}


def all_rollups(conn: psycopg.Connection) -> dict[str, set[tuple]]:
    return {table: rollup_rows(conn, table) for table in ROLLUP_TABLES}


def without_computed_at(rollups: dict[str, set[tuple]]) -> dict[str, set[tuple]]:
    """The rollups' contents, not when they were computed (the last column of the stats)."""
    return {table: rows if table == "customers" else {row[:-1] for row in rows}
            for table, rows in rollups.items()}


@pytest.mark.parametrize(
    ("rollup", "at"),
    [("fleet_minute", timedelta(hours=23, minutes=59)),
     ("customer_hourly", timedelta(hours=23)),
     ("customer_daily", timedelta(0))],
)
def test_retention_drops_expired_days_but_not_one_whose_rollups_are_pending(
    database_url: str, db, rollup: str, at: timedelta
) -> None:
    migrate(database_url)
    policy = RetentionPolicy()  # 7 days
    today = migration_day(db)
    now = midnight(today) + timedelta(hours=12)
    ensure_partitions(db, policy, now)
    expired = [today - timedelta(days=10), today - timedelta(days=8)]
    pending_day = today - timedelta(days=9)
    edge_day = today - timedelta(days=7)  # partly inside the window: always kept
    recent = today - timedelta(days=2)
    db.execute("SELECT heartbeat_ensure_partitions(%s, %s)", (expired[0], expired[-1]))
    for n, day in enumerate([*expired, pending_day, edge_day, recent]):
        fill_day(db, day, offset=100 * n)
    mark_all_pending(db)
    refresh_pending(db, now)
    assert db.execute("SELECT count(*) FROM rollup_pending").fetchone()[0] == 0
    rollups_before = all_rollups(db)
    assert all(rollups_before.values())
    # a window of the pending day is out of date again (a late reading, a backfill mark)
    db.execute("INSERT INTO rollup_pending (rollup, window_start) VALUES (%s, %s)",
               (rollup, midnight(pending_day) + at))
    kept = [pending_day, edge_day, recent]
    kept_rows = partition_fingerprints(db, kept)

    report = apply_retention(db, policy, now)

    assert report.kept_for_rollups == [pending_day]
    day_tables = list(partition_days(db))  # the raw tables, and what lives as long
    assert set(RAW_TABLES) <= set(day_tables)
    assert report.dropped == {table: expired for table in day_tables}
    window = days_between(*policy.days_to_create(now))
    for table, days in partition_days(db).items():
        assert days == [pending_day, *window], table
    assert partition_fingerprints(db, kept) == kept_rows  # untouched
    assert all_rollups(db) == rollups_before  # rollups outlive their raw days

    # once its rollups are done, the day goes too
    refresh_pending(db, now)
    report = apply_retention(db, policy, now)
    assert report.kept_for_rollups == []
    assert report.dropped == {table: [pending_day] for table in day_tables}
    for table, days in partition_days(db).items():
        assert days == window, table
    assert partition_fingerprints(db, [edge_day, recent]) == {
        key: value for key, value in kept_rows.items() if key[1] != pending_day
    }
    assert without_computed_at(all_rollups(db)) == without_computed_at(rollups_before)


def expired_day_pending(database_url: str, db) -> tuple[date, datetime]:
    """A day 10 days old holding readings whose rollup windows are marked pending; the day
    and a `now` (noon of the migration's day) at which it is expired."""
    migrate(database_url)
    today = migration_day(db)
    now = midnight(today) + timedelta(hours=12)
    old = today - timedelta(days=10)
    db.execute("SELECT heartbeat_ensure_partitions(%s, %s)", (old, old))
    fill_day(db, old, offset=0)
    mark_all_pending(db)
    return old, now


def rolled_up_and_dropped_day(database_url: str, db) -> tuple[date, datetime]:
    """A day 10 days old whose readings were rolled up, then dropped by retention; the
    day and the `now` of that retention run."""
    old, now = expired_day_pending(database_url, db)
    refresh_pending(db, now)
    assert apply_retention(db, RetentionPolicy(), now).dropped["heartbeat_records"] == [old]
    return old, now


def test_a_backfill_over_a_dropped_day_keeps_its_rollups(database_url: str, db) -> None:
    """Backfills re-run any range (Dagster offers partitions from ROLLUPS_START): over a day
    whose raw partition retention already dropped, there is nothing to recompute from, so
    the rollups kept for months must stay as they are."""
    old, now = rolled_up_and_dropped_day(database_url, db)
    before = without_computed_at(all_rollups(db))
    assert all(before.values())

    for rollup in Rollup:
        refresh(db, rollup, midnight(old), midnight(old) + DAY, pending_only=False)
    refresh_pending(db, now)

    assert without_computed_at(all_rollups(db)) == before


def test_maintain_rolls_up_an_expired_day_and_then_drops_it_in_the_same_pass(
    database_url: str, db, settings_factory
) -> None:
    """`maintain` refreshes the settled windows before retention: a day kept only for its
    pending rollups goes at once, its rollups stay; a window not settled yet is counted."""
    old, now = expired_day_pending(database_url, db)
    mark_pending(db, Rollup.FLEET_MINUTE, [now])  # the minute starting now: not settled

    done = maintenance.maintain(db, settings_factory(database_url=database_url), now)

    assert {r.rollup for r in done.rollups} == set(Rollup)
    assert done.retained.partitions.dropped["heartbeat_records"] == [old]
    assert done.retained.partitions.kept_for_rollups == []
    assert done.windows_not_settled == 1
    assert all(all_rollups(db).values())


def test_a_day_left_detached_is_dropped_when_expired_and_attached_again_when_kept(
    database_url: str, db
) -> None:
    """A retention run that stopped between its DETACH and its DROP leaves a plain table:
    expired, the next run drops it; back inside a (raised) window, it is attached again,
    so a reading of that day still finds its partition."""
    migrate(database_url)
    policy = RetentionPolicy()
    today = migration_day(db)
    now = midnight(today) + timedelta(hours=12)
    old, kept = today - timedelta(days=10), today - timedelta(days=3)
    db.execute("SELECT heartbeat_ensure_partitions(%s, %s)", (old, old))
    for day in (old, kept):
        db.execute(f"ALTER TABLE heartbeat_records DETACH PARTITION "
                   f"{partition_name('heartbeat_records', day)}")

    apply_retention(db, policy, now)

    assert not exists(db, partition_name("heartbeat_records", old))
    assert kept in partition_days(db)["heartbeat_records"]
    insert_readings(db, [("CUST_00001", midnight(kept) + timedelta(hours=1), 70)], [])


def test_retention_gives_up_on_a_day_a_reader_keeps_locked_and_drops_it_next_time(
    database_url: str, db
) -> None:
    """DETACH waits behind any open reader and every writer would queue behind it: after
    the lock timeout the day is reported busy and left for the next run."""
    migrate(database_url)
    policy = RetentionPolicy()
    today = migration_day(db)
    now = midnight(today) + timedelta(hours=12)
    old = today - timedelta(days=10)
    db.execute("SELECT heartbeat_ensure_partitions(%s, %s)", (old, old))
    with psycopg.connect(database_url) as reader:
        reader.execute("SELECT count(*) FROM heartbeat_records").fetchone()  # holds its lock
        report = apply_retention(db, policy, now)
        assert f"heartbeat_records_p{old:%Y%m%d}" in report.busy
        assert "heartbeat_records" not in report.dropped
    report = apply_retention(db, policy, now)
    assert report.dropped["heartbeat_records"] == [old] and report.busy == []


def test_a_backfill_after_retention_was_raised_keeps_the_rollups_of_dropped_days(
    database_url: str, db
) -> None:
    """Raising HEARTBEAT_RAW_RETENTION_DAYS creates empty partitions for days whose readings
    were dropped long ago; a backfill over them must not recompute their rollups from
    nothing."""
    old, now = rolled_up_and_dropped_day(database_url, db)
    before = without_computed_at(all_rollups(db))
    totals = db.execute("SELECT * FROM reading_totals").fetchone()

    ensure_partitions(db, RetentionPolicy(raw_retention_days=30), now)  # old is back, empty
    assert old in partition_days(db)["heartbeat_records"]
    for rollup in Rollup:
        refresh(db, rollup, midnight(old), midnight(old) + DAY, pending_only=False)

    assert without_computed_at(all_rollups(db)) == before
    assert db.execute("SELECT * FROM reading_totals").fetchone() == totals


# -- 6. rollups equal a full recompute ----------------------------------------------------------
SEEDED_START = datetime(2026, 3, 1, 21, 0, tzinfo=UTC)  # six hours across a UTC midnight
SEEDED_HOURS = 6
FAR_AHEAD = datetime(2026, 4, 1, tzinfo=UTC)
readings_strategy = st.lists(
    st.tuples(
        st.integers(1, 4).map(lambda n: f"CUST_{n:05d}"),
        st.builds(
            lambda second, micro: SEEDED_START + timedelta(seconds=second, microseconds=micro),
            st.integers(0, SEEDED_HOURS * 3600 - 1) | st.sampled_from([10799, 10800, 0]),
            st.sampled_from([0, 1, 999_999]),
        ),
        st.integers(40, 180) | st.integers(15, 39) | st.integers(181, 220)
        | st.sampled_from([0, -1, 301, 400]),
    ),
    max_size=60,
)


def clear_storage(conn: psycopg.Connection) -> None:
    """Every reading, mark and rollup gone (the day partitions stay)."""
    conn.execute(
        "TRUNCATE rollup_pending, "
        + ", ".join([*partition_days(conn), *ROLLUP_TABLES])
    )


@pytest.fixture
def seeded_db(database_url: str, db) -> psycopg.Connection:
    migrate(database_url)
    db.execute("SELECT heartbeat_ensure_partitions(%s, %s)",
               (SEEDED_START.date(), SEEDED_START.date() + DAY))
    return db


@hypothesis_settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=readings_strategy, replays=st.lists(st.integers(0, 59), max_size=4))
def test_rollups_equal_a_full_recompute_of_the_raw_rows(
    seeded_db: psycopg.Connection, events: list, replays: list[int]
) -> None:
    db = seeded_db
    clear_storage(db)
    records, anomalies = classified(events, replays)
    insert_readings(db, records, anomalies)
    mark_all_pending(db)
    refresh_pending(db, FAR_AHEAD)
    assert db.execute("SELECT count(*) FROM rollup_pending").fetchone()[0] == 0
    assert_rollups_equal_direct(db)
    # each stored reading counted once, the replayed anomalies not at all
    total = db.execute(
        "SELECT coalesce(sum(reading_count + anomaly_count), 0) FROM fleet_minute_stats"
    ).fetchone()[0]
    assert total == len(records) + len({(c, when) for c, when, *_ in anomalies})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_of_seeded_hours_equal_a_full_recompute(seeded_db, seed: int) -> None:
    events = seeded_events(seed, SEEDED_START, SEEDED_HOURS)
    events += [("CUST_08888", SEEDED_START + timedelta(minutes=5), 77),  # one reading only
               ("CUST_09999", SEEDED_START + timedelta(hours=4), 400)]  # a sensor fault only
    records, anomalies = classified(events, replays=[0, 3])
    insert_readings(seeded_db, records, anomalies)
    mark_all_pending(seeded_db)
    refresh_pending(seeded_db, FAR_AHEAD)
    assert_rollups_equal_direct(seeded_db)


def test_deviation_of_fewer_than_two_readings_is_null_at_every_level(seeded_db) -> None:
    """One reading has no sample deviation: NULL, as stddev_samp and the original design's
    summaries (customer_daily_bpm_stats, vw_customer_bpm_summary) say, never 0.0."""
    db = seeded_db
    hour = SEEDED_START + timedelta(hours=1)
    insert_readings(
        db,
        records=[("CUST_00001", hour + timedelta(seconds=10), 70),  # alone all day
                 ("CUST_00002", hour + timedelta(minutes=5, seconds=1), 70),
                 ("CUST_00002", hour + timedelta(minutes=5, seconds=2), 80)],
        anomalies=[("CUST_00003", hour + timedelta(minutes=9), 400, "INVALID", 0)],
    )
    expected = {"CUST_00001": None, "CUST_00002": Decimal("7.1"), "CUST_00003": None}

    def view() -> dict[str, Decimal | None]:
        return dict(db.execute("SELECT customer_id, stddev_bpm FROM vw_customer_bpm_summary"))

    assert view() == expected  # from the raw rows
    mark_all_pending(db)
    refresh_pending(db, FAR_AHEAD)
    assert view() == expected  # from the rollups
    assert dict(db.execute("SELECT minute, stddev_bpm FROM fleet_minute_stats")) == {
        hour: None, hour + timedelta(minutes=5): Decimal("7.1"), hour + timedelta(minutes=9): None
    }
    for table in ("customer_hourly_bpm_stats", "customer_daily_bpm_stats"):
        stored = dict(db.execute(f"SELECT customer_id, stddev_bpm FROM {table}"))
        assert stored == expected, table


def test_rollup_windows_are_utc_whatever_the_session_time_zone(seeded_db, database_url) -> None:
    """A server (or PGTZ) in a zone with a half-hour offset must still roll up UTC hours."""
    events = seeded_events(4, SEEDED_START, SEEDED_HOURS, per_hour=10)
    records, anomalies = classified(events)
    india = f"{database_url}?options=-c%20TimeZone%3DAsia/Kolkata"
    write_batch(india, records, anomalies)  # the consumer's writer marks the windows
    with psycopg.connect(india, autocommit=True) as conn:
        refresh_pending(conn, FAR_AHEAD)
    hours = {row[0] for row in seeded_db.execute("SELECT hour FROM customer_hourly_bpm_stats")}
    assert hours and all(h.minute == 0 for h in hours), sorted(hours)
    assert_rollups_equal_direct(seeded_db)


# -- 7. backfills and late readings -------------------------------------------------------------
def test_backfill_recomputes_every_window_of_its_range(seeded_db) -> None:
    db = seeded_db
    records, anomalies = classified(seeded_events(5, SEEDED_START, SEEDED_HOURS), [1])
    insert_readings(db, records, anomalies)
    mark_all_pending(db)
    refresh_pending(db, FAR_AHEAD)
    assert db.execute("SELECT count(*) FROM rollup_pending").fetchone()[0] == 0
    before = rollup_contents(db, "fleet_minute_stats")
    start, end = SEEDED_START + timedelta(hours=2), SEEDED_START + timedelta(hours=4)
    deleted = db.execute(
        "DELETE FROM fleet_minute_stats WHERE minute >= %s AND minute < %s", (start, end)
    ).rowcount
    assert deleted > 0

    # nothing is marked: a pending-only refresh of the range does nothing
    assert refresh(db, Rollup.FLEET_MINUTE, start, end).windows == 0
    assert len(rollup_contents(db, "fleet_minute_stats")) == len(before) - deleted

    result = refresh(db, Rollup.FLEET_MINUTE, start, end, pending_only=False)
    assert result.windows == 120  # every minute of the two hours, with readings or not
    assert result.rows == deleted
    assert rollup_contents(db, "fleet_minute_stats") == before

    # the same for a customer hour; the day it belongs to is recomputed after it, unchanged
    hour = SEEDED_START + timedelta(hours=3)
    hourly_before = rollup_rows(db, "customer_hourly_bpm_stats")
    daily_before = {r[:-1] for r in rollup_rows(db, "customer_daily_bpm_stats")}
    db.execute("DELETE FROM customer_hourly_bpm_stats WHERE hour = %s", (hour,))
    result = refresh(db, Rollup.CUSTOMER_HOURLY, hour, hour + timedelta(hours=1),
                     pending_only=False)
    assert result.windows == 1 and result.rows > 0
    refresh_pending(db, FAR_AHEAD)
    hourly_after = rollup_rows(db, "customer_hourly_bpm_stats")
    assert {r[:-1] for r in hourly_after} == {r[:-1] for r in hourly_before}
    assert {r[:-1] for r in rollup_rows(db, "customer_daily_bpm_stats")} == daily_before
    assert_rollups_equal_direct(db)


def test_late_reading_marks_its_window_and_the_next_refresh_changes_exactly_it(
    database_url: str, db
) -> None:
    migrate(database_url)
    now = datetime.now(UTC)
    start = (now - timedelta(days=3)).replace(hour=9, minute=0, second=0, microsecond=0)
    records, anomalies = classified(seeded_events(6, start, 3, per_hour=60), [2])
    insert_readings(db, records, anomalies)
    mark_all_pending(db)
    refresh_pending(db, now)
    assert db.execute("SELECT count(*) FROM rollup_pending").fetchone()[0] == 0
    before = all_rollups(db)

    late = start + timedelta(hours=1, minutes=17, seconds=42)
    minute, hour = late.replace(second=0), late.replace(minute=0, second=0)
    write_batch(database_url, records=[("CUST_00001", late, 101)])  # a known customer
    assert marks_of(db, Rollup.FLEET_MINUTE) == {minute}
    assert marks_of(db, Rollup.CUSTOMER_HOURLY) <= {hour}  # now, or once its minute is done

    refresh_pending(db, now)
    after = all_rollups(db)

    def changed(table: str, key: int) -> set:
        return {row[key] for row in before[table] ^ after[table]}

    assert changed("fleet_minute_stats", 0) == {minute}
    assert changed("customer_hourly_bpm_stats", 1) == {hour}
    assert changed("customer_daily_bpm_stats", 1) == {hour.date()}
    fleet = {row[0]: row for row in after["fleet_minute_stats"]}
    old = {row[0]: row for row in before["fleet_minute_stats"]}
    assert fleet[minute][1] == old.get(minute, (None, 0))[1] + 1  # reading_count
    assert_rollups_equal_direct(db)


# -- 8. migration from the previous schema ------------------------------------------------------
PREVIOUS_COLUMNS = {
    "heartbeat_records": "customer_id, event_timestamp, heart_rate, log_epoch, kafka_partition, "
                         "kafka_offset, ingested_at",
    "heartbeat_anomalies": "id, customer_id, event_timestamp, heart_rate, anomaly_type, "
                           "raw_payload, log_epoch, kafka_partition, kafka_offset, detected_at",
    "heartbeat_dead_letters": "id, log_epoch, kafka_partition, kafka_offset, message_key, "
                              "raw_value, reason, received_at",
    "pipeline_metrics": "id, metric_name, metric_value, customer_id, log_epoch, kafka_partition, "
                        "kafka_offset, labels, recorded_at",
    "consumer_progress": "consumer_group, topic, kafka_partition, log_epoch, next_offset, "
                         "updated_at, topic_id",
}


def previous_schema(database_url: str, directory: Path) -> list[str]:
    """Apply migrations 001..005 only (the schema before day partitions)."""
    directory.mkdir()
    for migration in load_migrations()[:5]:
        (directory / f"{migration.name}.sql").write_text(migration.sql)
    return migrate(database_url, directory)


PREVIOUS_DAYS_AGO = (10, 3, 2, 1)  # one day older than the 7-day retention


def fill_previous_schema(conn: psycopg.Connection, today: date) -> None:
    """Rows as the previous consumer wrote them: 09:00-11:00 UTC of several days."""
    rng = random.Random(8)
    offset = 0
    for days_ago in PREVIOUS_DAYS_AGO:
        start = midnight(today - timedelta(days=days_ago)) + timedelta(hours=9)
        for customer, when, bpm in seeded_events(days_ago, start, 2, per_hour=30):
            offset += 1
            partition, klass = offset % 3, classify_heart_rate(bpm)
            payload = orjson.dumps({"customer_id": customer, "heart_rate": bpm,
                                    "timestamp": when.isoformat()}).decode()
            if klass is HeartbeatClass.NORMAL:
                conn.execute(
                    "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
                    "kafka_partition, kafka_offset, ingested_at) VALUES (%s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (customer, when, bpm, partition, offset, when + timedelta(seconds=1)),
                )
                continue
            conn.execute(
                "INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate, "
                "anomaly_type, raw_payload, kafka_partition, kafka_offset, detected_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (customer, when, bpm, klass.value, payload, partition, offset,
                 when + timedelta(seconds=1)),
            )
            conn.execute(
                "INSERT INTO pipeline_metrics (metric_name, metric_value, customer_id, "
                "log_epoch, kafka_partition, kafka_offset, labels, recorded_at) "
                "VALUES (%s, %s, %s, 0, %s, %s, %s, %s)",
                (f"alert_{klass.value.lower()}", bpm, customer, partition, offset,
                 orjson.dumps({"severity": "CRITICAL"}).decode(), when + timedelta(seconds=1)),
            )
            if rng.random() < 0.2:  # replayed at another offset: the same reading again
                offset += 1
                conn.execute(
                    "INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, "
                    "heart_rate, anomaly_type, raw_payload, kafka_partition, kafka_offset) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (customer, when, bpm, klass.value, payload, partition, offset),
                )
        conn.execute(
            "INSERT INTO heartbeat_dead_letters (kafka_partition, kafka_offset, message_key, "
            "raw_value, reason, received_at) VALUES (0, %s, 'k', '\\x00ff'::bytea, "
            "'not valid JSON', %s)", (offset + 1, start + timedelta(minutes=7)),
        )
        conn.execute(
            "INSERT INTO pipeline_metrics (metric_name, metric_value, labels, recorded_at) "
            "VALUES ('stats_messages_consumed', %s, '{\"consumer\": \"old\"}', %s)",
            (offset, start + timedelta(hours=2)),
        )
        offset += 1
    # gaps in the ids: they must be kept as they are, not renumbered
    conn.execute("DELETE FROM heartbeat_anomalies WHERE id = (SELECT min(id) + 1 "
                 "FROM heartbeat_anomalies)")
    conn.execute("DELETE FROM pipeline_metrics WHERE id = 2")
    conn.execute(
        "INSERT INTO consumer_progress (consumer_group, topic, kafka_partition, next_offset, "
        "topic_id) VALUES ('heartbeat-consumer', 'heartbeat-events', 0, %s, 'abc')", (offset,)
    )


def test_migration_from_the_previous_schema_keeps_every_row(
    database_url: str, db, tmp_path: Path
) -> None:
    names = [m.name for m in load_migrations()]
    assert previous_schema(database_url, tmp_path / "previous") == names[:5]
    now = datetime.now(UTC)
    fill_previous_schema(db, now.date())
    before = {t: table_fingerprint(db, t, cols) for t, cols in PREVIOUS_COLUMNS.items()}
    assert all(count > 0 for count, _ in before.values())
    max_ids = {t: db.execute(f"SELECT max(id) FROM {t}").fetchone()[0]
               for t in ("heartbeat_anomalies", "heartbeat_dead_letters", "pipeline_metrics")}
    db.execute("REFRESH MATERIALIZED VIEW customer_daily_bpm_stats")
    db.execute("REFRESH MATERIALIZED VIEW fleet_minute_stats")
    daily_columns = ("customer_id, day, reading_count, avg_bpm, min_bpm, max_bpm, stddev_bpm, "
                     "anomaly_count, bradycardia_count, tachycardia_count, invalid_count")
    fleet_columns = ("minute, reading_count, customer_count, avg_bpm, min_bpm, max_bpm, "
                     "anomaly_count, bradycardia_count, tachycardia_count, invalid_count")
    old_daily = db.execute(f"SELECT {daily_columns} FROM customer_daily_bpm_stats "
                           "ORDER BY customer_id, day").fetchall()
    old_fleet = db.execute(f"SELECT {fleet_columns} FROM fleet_minute_stats "
                           "ORDER BY minute").fetchall()
    shutil.rmtree(tmp_path / "previous")

    # 001..005 are recorded with the same names and checksums; 006 alone first (007 then
    # keeps one anomaly per reading: tests/integration/test_schema.py)
    through_006 = tmp_path / "through_006"
    through_006.mkdir()
    for migration in load_migrations()[:6]:
        (through_006 / f"{migration.name}.sql").write_text(migration.sql)
    assert migrate(database_url, through_006) == ["006_time_partitioned_storage"]

    after = {t: table_fingerprint(db, t, cols) for t, cols in PREVIOUS_COLUMNS.items()}
    assert after == before  # same rows, same contents, same ids
    assert db.execute("SELECT to_regnamespace('heartbeat_migration_006')").fetchone()[0] is None
    ten_days_ago = now.date() - timedelta(days=10)
    assert db.execute(
        "SELECT DISTINCT tableoid::regclass::text FROM heartbeat_records "
        "WHERE event_timestamp < %s", (midnight(ten_days_ago) + DAY,)
    ).fetchall() == [(partition_name("heartbeat_records", ten_days_ago),)]
    # every minute holding a reading is pending (its hour with it, or once it is done)
    minutes = {row[0] for row in db.execute(
        "SELECT date_trunc('minute', event_timestamp, 'UTC') FROM heartbeat_records "
        "UNION SELECT date_trunc('minute', event_timestamp, 'UTC') FROM heartbeat_anomalies")}
    assert marks_of(db, Rollup.FLEET_MINUTE) == minutes
    assert marks_of(db, Rollup.CUSTOMER_HOURLY) <= {
        window_start(Rollup.CUSTOMER_HOURLY, m) for m in minutes
    }
    assert migrate(database_url) == names[6:]

    refresh_pending(db, now + timedelta(days=2))
    assert_rollups_equal_direct(db)
    # and what the previous schema's summaries said about the same rows
    assert db.execute(f"SELECT {daily_columns} FROM customer_daily_bpm_stats "
                      "ORDER BY customer_id, day").fetchall() == old_daily
    assert db.execute(f"SELECT {fleet_columns} FROM fleet_minute_stats "
                      "ORDER BY minute").fetchall() == old_fleet

    # new rows continue after the old ids
    new_anomaly = db.execute(
        "INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate, "
        "anomaly_type, raw_payload, kafka_partition, kafka_offset) "
        "VALUES ('CUST_00001', now(), 30, 'BRADYCARDIA', '{}', 0, 999999) RETURNING id"
    ).fetchone()[0]
    new_dead = db.execute(
        "INSERT INTO heartbeat_dead_letters (kafka_partition, kafka_offset, reason) "
        "VALUES (0, 999999, 'x') RETURNING id"
    ).fetchone()[0]
    new_metric = db.execute(
        "INSERT INTO pipeline_metrics (metric_name, metric_value) VALUES ('m', 1) RETURNING id"
    ).fetchone()[0]
    assert new_anomaly > max_ids["heartbeat_anomalies"]
    assert new_dead > max_ids["heartbeat_dead_letters"]
    assert new_metric > max_ids["pipeline_metrics"]


TOTALS = ("SELECT total_records, bradycardia_count, tachycardia_count, invalid_count, "
          "latest_reading_at FROM vw_pipeline_summary")
STORED = """
SELECT (SELECT count(*) FROM heartbeat_records),
       (SELECT count(*) FROM heartbeat_anomalies WHERE anomaly_type = 'BRADYCARDIA'),
       (SELECT count(*) FROM heartbeat_anomalies WHERE anomaly_type = 'TACHYCARDIA'),
       (SELECT count(*) FROM heartbeat_anomalies WHERE anomaly_type = 'INVALID'),
       (SELECT max(event_timestamp) FROM heartbeat_records)
"""


OLD_FLEET_ROLLUP = ("""
INSERT INTO fleet_minute_stats (minute, reading_count, customer_count, anomaly_count,
    bradycardia_count, tachycardia_count, invalid_count, bpm_sum, bpm_sum_squares)
SELECT minute, sum(valid), 0, count(kind), count(*) FILTER (WHERE kind = 'BRADYCARDIA'),
       count(*) FILTER (WHERE kind = 'TACHYCARDIA'), count(*) FILTER (WHERE kind = 'INVALID'),
       sum(bpm), 0
FROM (SELECT date_trunc('minute', event_timestamp, 'UTC') AS minute, 1 AS valid,
             heart_rate AS bpm, NULL AS kind FROM heartbeat_records
      UNION ALL
      SELECT date_trunc('minute', event_timestamp, 'UTC'), 0, 0, anomaly_type
      FROM heartbeat_anomalies) AS readings
WHERE minute < %(until)s
GROUP BY minute
""", "DELETE FROM rollup_pending WHERE rollup = 'fleet_minute' AND window_start < %(until)s", """
UPDATE fleet_totals SET (reading_count, anomaly_count, bradycardia_count, tachycardia_count,
                         invalid_count)
    = (SELECT sum(reading_count), sum(anomaly_count), sum(bradycardia_count),
              sum(tachycardia_count), sum(invalid_count) FROM fleet_minute_stats)
""")


def test_migration_011_counts_every_stored_reading_rolled_up_or_not(
    database_url: str, db, tmp_path: Path
) -> None:
    """reading_totals starts from what is stored: the totals the rollups kept before 011
    (fleet_totals), plus what the pending minutes hold beyond their rollup rows, here a
    late reading in a rolled-up minute and the minutes not rolled up yet."""
    through_010 = tmp_path / "through_010"
    through_010.mkdir()
    for migration in load_migrations()[:10]:
        (through_010 / f"{migration.name}.sql").write_text(migration.sql)
    migrate(database_url, through_010)
    now = datetime.now(UTC)
    start = (now - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    records, anomalies = classified(seeded_events(4, start, 2, per_hour=60))
    insert_readings(db, records, anomalies)
    mark_all_pending(db)
    # the first hour rolled up as the rollups did before 011 (today's code needs 011)
    for statement in OLD_FLEET_ROLLUP:
        db.execute(statement, {"until": start + timedelta(hours=1)})
    late = start + timedelta(minutes=10, seconds=1)
    insert_readings(db, [("CUST_00007", late, 99)],
                    [("CUST_00007", late + MICROSECOND, 400, "INVALID", 999)])
    mark_pending(db, Rollup.FLEET_MINUTE, [window_start(Rollup.FLEET_MINUTE, late)])
    stored = db.execute(STORED).fetchone()

    assert migrate(database_url) == [m.name for m in load_migrations()[10:]]  # 011 on
    assert db.execute(TOTALS).fetchone() == stored
    # the minutes not rolled up have their live counts, as if the writer had kept them
    live = db.execute("SELECT minute, reading_count, bpm_sum FROM fleet_minute_live "
                      "WHERE reading_count > 0 ORDER BY minute").fetchall()
    assert live == db.execute(
        "SELECT date_trunc('minute', event_timestamp, 'UTC'), count(*), sum(heart_rate) "
        "FROM heartbeat_records WHERE event_timestamp >= %s GROUP BY 1 ORDER BY 1",
        (start + timedelta(hours=1),)).fetchall()
    refresh_pending(db, now + timedelta(days=2))
    assert db.execute(TOTALS).fetchone() == stored


def schema_shape(conn: psycopg.Connection) -> dict[str, list]:
    """Tables (not their day partitions), columns, keys, indexes, views, functions."""
    return {
        "columns": conn.execute(
            """SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod),
                      a.attnotnull, a.attidentity, pg_get_expr(d.adbin, d.adrelid),
                      coll.collname
               FROM pg_class c
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
               LEFT JOIN pg_collation coll ON coll.oid = a.attcollation
               WHERE c.relnamespace = 'public'::regnamespace AND NOT c.relispartition
                 AND c.relkind IN ('r', 'p', 'v', 'm')
               ORDER BY c.relname, a.attnum"""
        ).fetchall(),
        "indexes": conn.execute(
            """SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
               JOIN pg_class t ON t.oid = i.indrelid
               WHERE t.relnamespace = 'public'::regnamespace AND NOT t.relispartition
               ORDER BY 1"""
        ).fetchall(),
        "constraints": conn.execute(
            """SELECT t.relname, pg_get_constraintdef(k.oid) FROM pg_constraint k
               JOIN pg_class t ON t.oid = k.conrelid
               WHERE t.relnamespace = 'public'::regnamespace AND NOT t.relispartition
               ORDER BY 1, 2"""
        ).fetchall(),
        "views": conn.execute(
            """SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'
               ORDER BY 1"""
        ).fetchall(),
        "functions": conn.execute(
            """SELECT proname, pg_get_functiondef(oid) FROM pg_proc
               WHERE pronamespace = 'public'::regnamespace AND prokind <> 'a' ORDER BY 1"""
        ).fetchall(),
        "aggregates": conn.execute(  # pg_get_functiondef refuses aggregates
            """SELECT p.proname, pg_get_function_arguments(p.oid), a.aggtransfn::text,
                      a.agginitval
               FROM pg_proc p JOIN pg_aggregate a ON a.aggfnoid = p.oid
               WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1"""
        ).fetchall(),
    }


def test_migrated_schema_is_the_schema_of_a_fresh_database(
    database_factory: Callable[[], str], tmp_path: Path
) -> None:
    upgraded, fresh = database_factory(), database_factory()
    previous_schema(upgraded, tmp_path / "previous")
    with psycopg.connect(upgraded, autocommit=True) as conn:
        fill_previous_schema(conn, datetime.now(UTC).date())
    migrate(upgraded)
    migrate(fresh)
    with psycopg.connect(upgraded) as a, psycopg.connect(fresh) as b:
        assert schema_shape(a) == schema_shape(b)


# -- 9. the views -------------------------------------------------------------------------------
def direct_customer_summary(conn: psycopg.Connection) -> list[tuple]:
    """vw_customer_bpm_summary computed straight from the raw rows."""
    return conn.execute(
        """WITH r AS (
               SELECT customer_id, count(*) AS n, round(avg(heart_rate), 1) AS avg_bpm,
                      min(heart_rate) AS min_bpm, max(heart_rate) AS max_bpm,
                      round(stddev_samp(heart_rate), 1) AS sd,
                      min(event_timestamp) AS first_at, max(event_timestamp) AS last_at
               FROM heartbeat_records GROUP BY 1
           ), a AS (
               SELECT customer_id, count(*) AS anomalies,
                      count(*) FILTER (WHERE anomaly_type = 'BRADYCARDIA') AS b,
                      count(*) FILTER (WHERE anomaly_type = 'TACHYCARDIA') AS t,
                      count(*) FILTER (WHERE anomaly_type = 'INVALID') AS i,
                      max(event_timestamp) AS last_anomaly
               FROM (SELECT DISTINCT customer_id, event_timestamp, anomaly_type
                     FROM heartbeat_anomalies) AS once GROUP BY 1
           )
           SELECT customer_id, coalesce(n, 0), avg_bpm, min_bpm, max_bpm, sd, first_at,
                  last_at, coalesce(anomalies, 0), coalesce(b, 0), coalesce(t, 0),
                  coalesce(i, 0), last_anomaly
           FROM r FULL OUTER JOIN a USING (customer_id) ORDER BY customer_id"""
    ).fetchall()


def undefined_deviation_dropped(row: dict[int, object]) -> dict[int, object]:
    """A vw_customer_bpm_summary row (by column position) without stddev_bpm (5) when it
    has fewer than two readings (1): see the test of deviations of single readings."""
    return row if row[1] >= 2 else {k: v for k, v in row.items() if k != 5}


def test_views_answer_the_same_before_and_after_rollups(database_url: str, db) -> None:
    migrate(database_url)
    now = datetime.now(UTC)
    start = (now - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    hours = int((now - timedelta(minutes=30) - start).total_seconds() // 3600)
    events = seeded_events(9, start, hours, per_hour=8)
    events += [
        ("CUST_00001", now - timedelta(seconds=90), 70),  # active in the last five minutes
        ("CUST_00002", now - timedelta(seconds=5), 120),  # in a minute not settled yet
        ("CUST_00002", now - timedelta(seconds=4), 190),
        ("CUST_08888", start + timedelta(minutes=3), 77),  # a single reading
        ("CUST_09999", start + timedelta(hours=30), 0),  # only ever a sensor fault
    ]
    records, anomalies = classified(events, replays=[0, 5])
    # as a consumer leaves them: rows, pending marks, totals and customers first seen
    write_batch(database_url, records, anomalies)
    db.execute("INSERT INTO heartbeat_dead_letters (kafka_partition, kafka_offset, reason) "
               "VALUES (2, 1, 'not JSON'), (2, 2, 'not JSON')")

    def answers() -> dict[str, tuple[list[str], list[tuple]]]:
        return {view: view_rows(db, view) for view in VIEW_COLUMNS}

    def assert_same_answers(state: str) -> None:
        now_answers = answers()
        for view, (columns, rows) in raw_only.items():
            assert now_answers[view][0] == columns, (view, state)
            got = [dict(zip(columns, row, strict=True)) for row in now_answers[view][1]]
            want = [dict(zip(columns, row, strict=True)) for row in rows]
            assert got == want, (view, state)

    raw_only = answers()
    for view, (columns, _) in raw_only.items():
        assert columns == VIEW_COLUMNS[view], view
    by_position = [dict(enumerate(row)) for row in raw_only["vw_customer_bpm_summary"][1]]
    direct = [dict(enumerate(row)) for row in direct_customer_summary(db)]
    assert [undefined_deviation_dropped(r) for r in by_position] == [
        undefined_deviation_dropped(r) for r in direct
    ]
    summary = dict(zip(*[raw_only["vw_pipeline_summary"][0],
                         raw_only["vw_pipeline_summary"][1][0]], strict=True))
    distinct_anomalies = len({(c, when) for c, when, *_ in anomalies})
    assert summary["total_records"] == len(records)
    assert summary["total_anomalies"] == summary["alerts_total"] == distinct_anomalies
    assert summary["dead_letter_count"] == 2
    assert summary["total_customers"] == len({c for c, _, _ in records})
    assert summary["active_customers_5m"] == 2
    assert summary["latest_reading_at"] == max(when for _, when, _ in records)

    # rollups up to what is settled now: days, hours and minutes, plus a raw tail
    refresh_pending(db, now)
    tail = db.execute(
        "SELECT count(*) FROM heartbeat_records "
        "WHERE event_timestamp >= (SELECT max(minute) + interval '1 minute' "
        "FROM fleet_minute_stats)"
    ).fetchone()[0]
    assert tail > 0
    assert db.execute("SELECT count(*) FROM customer_daily_bpm_stats").fetchone()[0] > 0
    assert_same_answers("rollups and a raw tail")

    # everything rolled up, no tail left
    refresh_pending(db, now + timedelta(days=2))
    assert db.execute("SELECT count(*) FROM rollup_pending").fetchone()[0] == 0
    assert_same_answers("rollups only")
