"""The cold tier (sql/012, storage/cold.py) on real PostgreSQL: SQL unpacks what Python
packs and the other way round; compaction moves a day only verified, loses and doubles
nothing when it stops at any step, merges late readings, and leaves counts and rollups
as they were."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg import sql

from heartbeat_platform.domain.cold_pack import ColdReading, hour_of, pack_hours, unpack
from heartbeat_platform.domain.events import classify_heart_rate
from heartbeat_platform.domain.generator import HeartbeatGenerator
from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.storage import cold, maintenance
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.storage.partitions import apply_retention
from heartbeat_platform.storage.rollups import refresh_pending
from tests.integration.test_storage import (
    all_rollups,
    classified,
    insert_readings,
    mark_all_pending,
    midnight,
    migration_day,
    seeded_events,
    without_computed_at,
    write_batch,
)
from tests.unit.test_cold_pack import C, hours_of_readings

DAY = timedelta(days=1)
FIXTURE = [HealthCheck.function_scoped_fixture]  # the module's database, rolled back


@pytest.fixture(scope="module")
def schema(embedded_postgres) -> Iterator[psycopg.Connection]:
    """One migrated database for the module's property tests; each example rolls back."""
    url = embedded_postgres.ensure_database(f"cold_{uuid.uuid4().hex[:12]}")
    migrate(url)
    with psycopg.connect(url) as conn:
        yield conn


def stored(conn: psycopg.Connection, customer: str = "CUST_00001") -> Counter:
    """Every reading of a customer in both tiers, as (time, rate, class, payload): a multiset."""
    return Counter(
        (r.event_timestamp, r.heart_rate, r.reading_class, r.raw_payload)
        for r in cold.readings(conn, customer, datetime(1970, 1, 1, tzinfo=UTC),
                               datetime(2300, 1, 1, tzinfo=UTC))
    )


def everything(conn: psycopg.Connection) -> Counter:
    customers = [c for (c,) in conn.execute(
        "SELECT customer_id FROM heartbeat_records UNION SELECT customer_id FROM "
        "heartbeat_anomalies UNION SELECT customer_id FROM heartbeat_cold")]
    return sum((Counter({(c, *k): n for k, n in stored(conn, c).items()}) for c in customers),
               Counter())


def utc(rows: list[ColdReading]) -> list[ColdReading]:
    """Times in UTC (an ambiguous local time never equals another zone's time: PEP 495)."""
    return [r._replace(when=r.when.astimezone(UTC)) for r in rows]


def tiers(conn: psycopg.Connection) -> tuple[int, int]:
    hot = conn.execute("SELECT (SELECT count(*) FROM heartbeat_records) + "
                       "(SELECT count(*) FROM heartbeat_anomalies)").fetchone()[0]
    return hot, conn.execute("SELECT coalesce(sum(readings), 0) FROM heartbeat_cold").fetchone()[0]


# -- 1. the format: SQL and Python agree -----------------------------------------------------
@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE)
@given(hours_of_readings())
def test_sql_unpacks_what_python_packs_and_reads_it_back_in_order_with_its_class(
        schema, rows: list[ColdReading]) -> None:
    with schema.transaction(force_rollback=True):
        for packed in pack_hours(C, rows):
            cold.write_pack(schema, "CUST_00001", packed)
            assert utc(cold.cold_readings_sql(schema, C, packed.hour)) == unpack(C, packed)
            assert cold.read_pack(schema, "CUST_00001", packed.hour) == packed
        got = cold.readings(schema, "CUST_00001", datetime(1970, 1, 1, tzinfo=UTC),
                            datetime(2300, 1, 1, tzinfo=UTC))
        expected = [r for p in pack_hours(C, rows) for r in unpack(C, p)]
        assert [(r.event_timestamp, r.heart_rate, r.raw_payload) for r in got] == expected
        assert [r.reading_class for r in got] == [classify_heart_rate(r.bpm) for r in expected]
        assert {r.tier for r in got} == {"cold"}


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE)
@given(hours_of_readings(), st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata"]))
def test_sql_packs_what_python_unpacks_in_any_session_time_zone(
        schema, rows: list[ColdReading], zone: str) -> None:
    """Compaction packs in SQL: the packs it writes are the packs Python makes."""
    with schema.transaction(force_rollback=True):
        schema.execute(f"SET LOCAL TimeZone = '{zone}'")
        days = sorted({hour_of(r.when).date() for r in rows})
        schema.execute("SELECT heartbeat_ensure_partitions(%s, %s)", (days[0], days[-1]))
        records = {r.when.astimezone(UTC): r.bpm for r in rows if r.payload is None}
        insert_readings(schema, [("CUST_00001", w, b) for w, b in records.items()], [])
        anomalies = {r.when.astimezone(UTC): r for r in rows if r.payload is not None}
        with schema.cursor() as cur:  # one anomaly per customer and time, as sql/007 keeps
            cur.executemany(
                "INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate, "
                "anomaly_type, raw_payload, kafka_partition, kafka_offset) "
                "VALUES ('CUST_00001', %s, %s, %s, %s, 1, %s)",
                [(w, r.bpm, classify_heart_rate(r.bpm).value, r.payload, n)
                 for n, (w, r) in enumerate(anomalies.items())],
            )
        hot = stored(schema)
        for day in days:
            cold.compact_day(schema, day)
        want = [ColdReading(w.astimezone(UTC), b, p)
                for (w, b, _, p), n in hot.items() for _ in range(n)]
        for packed in pack_hours(C, want):
            sql_packed = cold.read_pack(schema, "CUST_00001", packed.hour)
            assert sql_packed == packed
        assert stored(schema) == hot


# -- 2. compaction ---------------------------------------------------------------------------
@pytest.fixture
def hot_day(database_url: str, db) -> tuple[date, datetime]:
    """A day three days back holding seeded readings of 5 customers, rolled up."""
    migrate(database_url)
    today = migration_day(db)
    day = today - timedelta(days=3)
    records, anomalies = classified(seeded_events(7, midnight(day), hours=24, per_hour=60),
                                    replays=range(5))
    insert_readings(db, records, anomalies)
    mark_all_pending(db)
    now = midnight(today) + timedelta(hours=12)
    refresh_pending(db, now)
    return day, now


def test_compaction_moves_a_day_to_cold_and_every_reading_reads_back_the_same(
        db, hot_day) -> None:
    day, now = hot_day
    before, (hot, _) = everything(db), tiers(db)
    assert cold.due_days(db, now, hot_days=2) == [day]

    report = cold.compact_due(db, now, hot_days=2, cold_retention_days=400)

    assert [c.day for c in report.compacted] == [day]
    assert report.compacted[0].readings == hot
    assert tiers(db) == (0, hot)
    assert everything(db) == before
    assert db.execute("SELECT readings FROM heartbeat_cold_days WHERE day = %s",
                      (day,)).fetchone()[0] == hot
    assert cold.due_days(db, now, hot_days=2) == []


def test_compacting_a_compacted_day_again_changes_nothing(db, hot_day) -> None:
    day, _ = hot_day
    cold.compact_day(db, day)
    packs = db.execute("SELECT * FROM heartbeat_cold ORDER BY 1, 3").fetchall()
    again = cold.compact_day(db, day)
    assert (again.readings, again.packs) == (0, 0)
    assert db.execute("SELECT * FROM heartbeat_cold ORDER BY 1, 3").fetchall() == packs


@pytest.mark.parametrize("step", cold.STEPS)
def test_a_crash_after_any_step_leaves_the_day_hot_and_whole(db, hot_day, step) -> None:
    day, _ = hot_day
    before, counts = everything(db), tiers(db)

    def crash(name: str) -> None:
        if name == step:
            raise RuntimeError(f"crash after {name}")

    with pytest.raises(RuntimeError, match="crash"):
        cold.compact_day(db, day, after_step=crash)
    assert tiers(db) == counts  # nothing moved, nothing doubled
    assert everything(db) == before
    cold.compact_day(db, day)  # and the next run does it
    assert tiers(db) == (0, counts[0])
    assert everything(db) == before


def test_a_connection_killed_mid_compaction_loses_nothing(database_url, db, hot_day) -> None:
    day, _ = hot_day
    before, counts = everything(db), tiers(db)
    with psycopg.connect(database_url, autocommit=True) as victim:
        pid = victim.info.backend_pid

        def kill(name: str) -> None:
            if name == "verified":
                db.execute("SELECT pg_terminate_backend(%s)", (pid,))

        with pytest.raises(psycopg.OperationalError):
            cold.compact_day(victim, day, after_step=kill)
    assert tiers(db) == counts
    assert everything(db) == before


def test_a_second_compaction_of_a_day_being_compacted_gives_up_and_changes_nothing(
        database_url, db, hot_day) -> None:
    day, _ = hot_day
    before, counts = everything(db), tiers(db)
    refused: list[BaseException] = []

    def compact_again(name: str) -> None:
        if name == "gathered":
            with psycopg.connect(database_url, autocommit=True) as other:
                try:
                    cold.compact_day(other, day)
                except psycopg.errors.LockNotAvailable as exc:
                    refused.append(exc)

    cold.compact_day(db, day, after_step=compact_again)
    assert len(refused) == 1
    assert tiers(db) == (0, counts[0]) and everything(db) == before


def test_a_wrong_cold_copy_is_refused_and_the_day_stays_hot(db, hot_day) -> None:
    """The verification compares the copy with the hot rows: a pack that lost a reading
    (here: a rate changed between packing and checking) stops the compaction."""
    day, now = hot_day
    before, counts = everything(db), tiers(db)

    def corrupt(name: str) -> None:
        if name == "packed":
            db.execute("UPDATE heartbeat_cold SET bpm = set_byte(bpm, 0, get_byte(bpm, 0) # 1) "
                       "WHERE ctid = (SELECT min(ctid) FROM heartbeat_cold)")

    with pytest.raises(cold.ColdCopyMismatch, match="differs"):
        cold.compact_day(db, day, after_step=corrupt)
    assert tiers(db) == counts and everything(db) == before


def test_late_readings_for_a_compacted_day_are_merged_never_lost_or_doubled(
        database_url, db, hot_day) -> None:
    day, now = hot_day
    cold.compact_day(db, day)
    before = everything(db)
    old_record = db.execute(
        "SELECT 'CUST_00001', event_timestamp, heart_rate FROM heartbeat_readings("
        "'CUST_00001', %s, %s) WHERE reading_class = 'NORMAL' LIMIT 1",
        (midnight(day), midnight(day) + DAY)).fetchone()
    late = [("CUST_00001", midnight(day) + timedelta(hours=5, microseconds=17), 99),
            ("CUST_00042", midnight(day) + timedelta(hours=23, minutes=59, seconds=59), 60)]
    write_batch(database_url, [*late, tuple(old_record)],
                [("CUST_00002", midnight(day) + timedelta(hours=1), 30, "BRADYCARDIA", 500)])
    merged = cold.compact_day(db, day)

    assert merged.duplicates_dropped == 1  # the record already cold, as ON CONFLICT would
    assert merged.readings == 3
    after = everything(db)
    added = after - before
    assert sum(added.values()) == 3 and not (before - after)
    assert ("CUST_00001", late[0][1], 99, "NORMAL", None) in added
    assert tiers(db)[0] == 0


def test_reading_in_python_gives_the_sql_function_s_rows_in_its_order_over_both_tiers(
        database_url, db, hot_day) -> None:
    """`cold.readings` unpacks packs in Python; heartbeat_readings (sql/012) does it in SQL:
    the same rows in the same order, for windows that cut hours, with hot and cold mixed."""
    day, _ = hot_day
    cold.compact_day(db, day)
    start = midnight(day)
    write_batch(database_url, [("CUST_00001", start + timedelta(hours=5, seconds=1), 99),
                               ("CUST_00001", start + timedelta(hours=5, seconds=1), 98)],
                [("CUST_00001", start + timedelta(hours=5, seconds=1), 200, "TACHYCARDIA", 900)])
    windows = [(start, start + DAY),
               (start + timedelta(hours=4, minutes=59, seconds=30, microseconds=5),
                start + timedelta(hours=5, minutes=7)),
               (start + timedelta(hours=22, minutes=30), start + DAY + timedelta(hours=1))]
    for a, b in windows:
        want = [(w.astimezone(UTC), *rest) for w, *rest in db.execute(
            "SELECT * FROM heartbeat_readings('CUST_00001', %s, %s)", (a, b))]
        got = cold.readings(db, "CUST_00001", a, b)
        assert [tuple(r) for r in got] == want
        tiers_read = {"hot", "cold"} if a.hour in (0, 4) else {"cold"}
        assert {r.tier for r in got} == tiers_read, a


def test_a_reading_written_while_its_day_is_compacted_waits_then_lands_hot_and_is_merged(
        database_url, db, hot_day) -> None:
    """The consumer writes a late reading into the day being compacted: its batch waits for
    the compaction's commit (the day is locked against writers), lands in the emptied hot
    day, and the next compaction merges it."""
    day, _ = hot_day
    before = everything(db)
    late = ("CUST_00003", midnight(day) + timedelta(hours=7, microseconds=3), 88)
    writer: threading.Thread | None = None

    def write_meanwhile(name: str) -> None:
        nonlocal writer
        if name == "gathered":
            writer = threading.Thread(target=write_batch, args=(database_url, [late]))
            writer.start()
            writer.join(timeout=1.5)
            assert writer.is_alive()  # waiting for the compaction's lock

    first = cold.compact_day(db, day, after_step=write_meanwhile)
    assert writer is not None
    writer.join(timeout=60)
    assert not writer.is_alive()
    assert first.readings == sum(before.values())
    assert tiers(db)[0] == 1  # the late reading, hot
    cold.compact_day(db, day)
    assert everything(db) - before == Counter({(*late, "NORMAL", None): 1})
    assert tiers(db)[0] == 0


def test_compaction_leaves_the_totals_and_the_rollups_as_they_were_and_a_late_reading_is_rolled_up(
        database_url, db, hot_day) -> None:
    day, now = hot_day
    totals = "SELECT total_records, total_anomalies FROM vw_pipeline_summary"
    summary = db.execute(totals).fetchone()
    rollups = without_computed_at(all_rollups(db))
    cold.compact_day(db, day)
    assert db.execute(totals).fetchone() == summary
    assert without_computed_at(all_rollups(db)) == rollups

    # a late reading marks its minute; the minute is recomputed from both tiers
    when = midnight(day) + timedelta(hours=10, seconds=1, microseconds=5)
    minute = when.replace(second=0, microsecond=0)
    count_before = db.execute("SELECT reading_count FROM fleet_minute_stats WHERE minute = %s",
                              (minute,)).fetchone()
    write_batch(database_url, [("CUST_00003", when, 77)])
    refresh_pending(db, now)
    count_after = db.execute("SELECT reading_count FROM fleet_minute_stats WHERE minute = %s",
                             (minute,)).fetchone()[0]
    assert count_after == (count_before[0] if count_before else 0) + 1
    rollups_now = without_computed_at(all_rollups(db))
    assert rollups_now["customer_daily_bpm_stats"] != rollups["customer_daily_bpm_stats"]
    daily = db.execute("SELECT sum(reading_count + anomaly_count) FROM customer_daily_bpm_stats "
                       "WHERE day = %s", (day,)).fetchone()[0]
    distinct = db.execute(
        "SELECT count(*) FROM (SELECT DISTINCT customer_id, event_timestamp, heart_rate > 0 "
        "AND heartbeat_class(heart_rate) = 'NORMAL' FROM heartbeat_cold_rows("
        "ARRAY(SELECT generate_series(%s::timestamptz, %s, interval '1 hour'))) "
        "UNION ALL SELECT DISTINCT customer_id, event_timestamp, true FROM heartbeat_records"
        ") d", (midnight(day), midnight(day) + DAY - timedelta(hours=1))).fetchone()[0]
    assert daily == distinct


def test_retention_drops_the_emptied_hot_day_and_the_cold_day_only_once_expired(
        db, hot_day) -> None:
    day, now = hot_day
    cold.compact_day(db, day)
    hot_before = everything(db)
    apply_retention(db, RetentionPolicy(raw_retention_days=2), now)  # the hot day goes
    assert everything(db) == hot_before  # its readings are cold
    assert cold.drop_expired_cold_days(db, now, retention_days=4) == []
    assert cold.drop_expired_cold_days(db, now + 2 * DAY, retention_days=4) == [day]
    assert everything(db) == Counter()


def test_retention_keeps_an_expired_day_the_cold_tier_has_not_taken_and_drops_it_once_it_has(
        settings_factory, db, hot_day) -> None:
    """With a cold tier, the hourly retention never drops readings that are only hot: the
    expired day waits (and is named) until compaction has moved it, then goes."""
    day, now = hot_day
    settings = settings_factory(heartbeat_raw_retention_days=2,  # the day expired already
                                heartbeat_hot_days=1)
    before = everything(db)
    kept = maintenance.retain(db, settings, now)
    assert kept.partitions.kept_for_compaction == [day]
    assert everything(db) == before and tiers(db)[1] == 0
    cold.compact_day(db, day)
    dropped = maintenance.retain(db, settings, now)
    assert day in dropped.partitions.dropped["heartbeat_records"]
    assert everything(db) == before  # from cold now


def test_the_pipeline_role_compacts_reads_and_drops_cold_days(database_url, db, hot_day) -> None:
    """`maintain` and Dagster run as the pipeline role (README, "Two roles"): compaction's
    lock, scratch tables, TRUNCATE (a SECURITY DEFINER function) and cold retention work
    with its rights alone."""
    day, now = hot_day
    before = everything(db)
    role, password = f"pipeline_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    db.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE heartbeat_pipeline").format(
        sql.Identifier(role), sql.Literal(password)))
    url = urlsplit(database_url)
    pipeline = url._replace(netloc=f"{role}:{password}@{url.hostname}:{url.port}").geturl()
    with psycopg.connect(pipeline, autocommit=True) as conn:
        report = cold.compact_due(conn, now, hot_days=2, cold_retention_days=400)
        assert [c.day for c in report.compacted] == [day]
        assert everything(conn) == before
        assert cold.drop_expired_cold_days(conn, now + 10 * DAY, retention_days=1) == [day]
    assert tiers(db) == (0, 0)


# -- 3. size on the generator's data ---------------------------------------------------------
def test_cold_bytes_per_reading_on_the_generator_s_data(database_url, db) -> None:
    """Not a target (bench measures that): the size is reported, and a pack is far smaller
    than a hot row (about 170 bytes with its indexes)."""
    migrate(database_url)
    day = migration_day(db) - timedelta(days=3)
    start = midnight(day)
    rng = random.Random(3)
    generator = HeartbeatGenerator(customer_count=20, seed=3,
                                   clock=lambda: start + timedelta(seconds=rng.random()))
    events = []
    for second in range(3600):  # an hour of 20 customers at one reading a second each
        for c in range(20):
            bpm = generator.generate_heart_rate()
            events.append((f"CUST_{c + 1:05d}",
                           start + timedelta(seconds=second, microseconds=rng.randrange(10**6)),
                           bpm))
    records, anomalies = classified(events)
    insert_readings(db, records, anomalies)
    cold.compact_day(db, day)
    size, readings = db.execute(
        "SELECT sum(pg_total_relation_size(c.oid)), (SELECT sum(readings) FROM heartbeat_cold) "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'heartbeat_cold'::regclass").fetchone()
    per_reading = size / readings
    print(f"cold: {per_reading:.2f} bytes a reading ({readings} readings, {size} bytes)")
    assert per_reading < 20


# -- 4. the commands -------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heartbeat_platform", *args],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_maintain_compacts_the_due_days_and_readings_reads_them_back_from_cold(
        db, hot_day, cli_env, tmp_path) -> None:
    day, _ = hot_day
    before = stored(db)
    maintain = _cli("maintain", "--json", env=cli_env, cwd=tmp_path)
    assert maintain.returncode == 0, maintain.stderr
    compaction = json.loads(maintain.stdout)["cold_tier"]
    assert [d["day"] for d in compaction["days_compacted"]] == [str(day)]
    assert tiers(db)[0] == 0

    start, end = midnight(day).isoformat(), (midnight(day) + DAY).isoformat()
    shown = _cli("readings", "CUST_00001", "--from", start, "--to", end, "--json",
                 env=cli_env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert Counter((datetime.fromisoformat(r["timestamp"]), r["heart_rate"], r["class"],
                    r["raw_payload"]) for r in rows) == before
    assert {r["tier"] for r in rows} == {"cold"}
    assert [r["timestamp"] for r in rows] == sorted(r["timestamp"] for r in rows)

    table = _cli("readings", "CUST_00001", "--from", start[:10], "--to", end[:10],
                 env=cli_env, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert f"{len(rows):,} readings of CUST_00001" in table.stdout
    refused = _cli("readings", "nobody", "--from", start, "--to", end, env=cli_env, cwd=tmp_path)
    assert refused.returncode == 2 and "no customer id" in refused.stderr
