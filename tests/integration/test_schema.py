"""The schema: migrations apply once, in order, safely in parallel; views have their columns."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from heartbeat_platform.storage.migrations import (
    MigrationError,
    load_migrations,
    migrate,
    schema_version,
)

EXPECTED_TABLES = {
    "heartbeat_records",
    "heartbeat_anomalies",
    "heartbeat_dead_letters",
    "pipeline_metrics",
    "consumer_progress",
    "kafka_logs",
    "schema_migrations",
    "rollup_pending",
    "customer_minute_stats",
    "fleet_minute_stats",
    "customer_hourly_bpm_stats",
    "customer_daily_bpm_stats",
    "customers",
    "reading_totals",
    "fleet_minute_live",
    "alert_episodes",
    "alert_episode_epoch",
    "alert_outbox",
    "alert_overrides",
    "alert_receivers",
    "heartbeat_cold",
    "heartbeat_cold_days",
}
PARTITIONED = {"heartbeat_records", "heartbeat_anomalies", "heartbeat_dead_letters",
               "pipeline_metrics", "customer_minute_stats", "heartbeat_cold"}

VIEW_COLUMNS = {
    "vw_customer_bpm_summary": [
        "customer_id", "reading_count", "avg_bpm", "min_bpm", "max_bpm", "stddev_bpm",
        "first_reading_at", "last_reading_at", "anomaly_count", "bradycardia_count",
        "tachycardia_count", "invalid_count", "last_anomaly_at",
    ],
    "vw_recent_anomalies": [
        "id", "customer_id", "heart_rate", "anomaly_type", "severity", "event_timestamp",
        "detected_at", "kafka_partition", "kafka_offset",
    ],
    "vw_pipeline_summary": [
        "total_records", "total_anomalies", "bradycardia_count", "tachycardia_count",
        "invalid_count", "anomalies_last_5m", "dead_letter_count", "active_customers_5m",
        "total_customers", "latest_reading_at", "alerts_total",
    ],
}


def schema_snapshot(conn: psycopg.Connection) -> list[tuple]:
    """Every column, constraint and index of the public schema."""
    columns = conn.execute(
        """SELECT table_name, column_name, data_type, is_nullable, column_default
           FROM information_schema.columns WHERE table_schema = 'public'
           ORDER BY table_name, ordinal_position"""
    ).fetchall()
    indexes = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
    ).fetchall()
    constraints = conn.execute(
        """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
           WHERE connamespace = 'public'::regnamespace ORDER BY 1"""
    ).fetchall()
    return columns + indexes + constraints


def test_schema_applies_once_and_twice_changes_nothing(database_url: str, db) -> None:
    files = [m.name for m in load_migrations()]
    assert migrate(database_url) == files
    before = schema_snapshot(db)
    assert migrate(database_url) == []
    assert schema_snapshot(db) == before
    assert schema_version(database_url) == load_migrations()[-1].version

    tables = dict(
        db.execute(  # tables, not their day partitions
            "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relkind IN ('r', 'p') AND NOT relispartition"
        ).fetchall()
    )
    assert set(tables) == EXPECTED_TABLES
    assert {name for name, kind in tables.items() if kind == "p"} == PARTITIONED


def test_schema_version_of_an_empty_database_is_none(database_url: str) -> None:
    assert schema_version(database_url) is None


def test_concurrent_migrations_apply_each_file_exactly_once(database_url: str, db) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: migrate(database_url), range(6)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(m.name for m in load_migrations())
    rows = db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [m.version for m in load_migrations()]


def test_concurrent_init_db_processes(database_url, services, topic_name, db, tmp_path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap_servers,
        "KAFKA_TOPIC": topic_name,
        "HEARTBEAT_STATE_DIR": str(tmp_path / "state"),
    }
    cli = [sys.executable, "-m", "heartbeat_platform", "init-db"]
    procs = [
        subprocess.Popen(cli, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    assert db.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(
        load_migrations()
    )
    # configured services: nothing embedded was started
    assert not (tmp_path / "state" / "postgres").exists()
    assert not (tmp_path / "state" / "broker").exists()
    stdout = b"".join(out for out, _ in outputs).decode()
    assert stdout.count("schema applied") == 1
    assert stdout.count("schema up to date") == 3


def test_changed_migration_file_is_refused(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "001_first.sql").write_text("CREATE TABLE t (a int);")
    assert migrate(database_url, tmp_path) == ["001_first"]
    (tmp_path / "001_first.sql").write_text("CREATE TABLE t (a bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(database_url, tmp_path)


def test_badly_named_migration_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "schema.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNN_what_it_does.sql"):
        load_migrations(tmp_path)


@pytest.mark.parametrize("view", sorted(VIEW_COLUMNS))
def test_views_return_documented_columns(database_url: str, db, view: str) -> None:
    migrate(database_url)
    cursor = db.execute(f"SELECT * FROM {view} LIMIT 0")
    assert [c.name for c in cursor.description] == VIEW_COLUMNS[view]


def test_views_summarise_rows(database_url: str, db) -> None:
    migrate(database_url)
    now = datetime.now(UTC)
    db.execute(
        """INSERT INTO heartbeat_records
               (customer_id, event_timestamp, heart_rate, kafka_partition, kafka_offset)
           VALUES ('CUST_00001', %(t)s, 70, 0, 0), ('CUST_00001', %(t1)s, 80, 0, 1),
                  ('CUST_00002', %(t)s, 100, 1, 0)""",
        {"t": now, "t1": now + timedelta(seconds=1)},
    )
    db.execute(
        """INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate,
               anomaly_type, raw_payload, kafka_partition, kafka_offset)
           VALUES ('CUST_00001', %(t)s, 30, 'BRADYCARDIA', '{}', 0, 2),
                  ('CUST_00003', %(t)s, 400, 'INVALID', '{}', 2, 0)""",
        {"t": now},
    )
    db.execute(
        "INSERT INTO heartbeat_dead_letters (kafka_partition, kafka_offset, raw_value, reason) "
        "VALUES (2, 1, 'x', 'not JSON')"
    )
    # what the writer adds in the batch's transaction (sql/011): 3 records, 1 + 0 + 1
    # anomalies, two customers with valid readings
    db.execute("SELECT heartbeat_count_readings(0, %s, '{3}', '{250}', '{1}', '{0}', '{1}', %s)",
               ([now.replace(second=0, microsecond=0)], now + timedelta(seconds=1)))
    db.execute("SELECT heartbeat_note_customers('{CUST_00001,CUST_00002}', %s, %s)",
               ([now, now], [now + timedelta(seconds=1), now]))
    summary = db.execute("SELECT * FROM vw_pipeline_summary").fetchone()
    assert summary[:9] == (3, 2, 1, 0, 1, 2, 1, 2, 2)
    assert summary[9] == now + timedelta(seconds=1)

    by_customer = {
        row[0]: row
        for row in db.execute(
            "SELECT customer_id, reading_count, avg_bpm, anomaly_count FROM vw_customer_bpm_summary"
        )
    }
    assert by_customer["CUST_00001"][1:] == (2, 75, 1)
    assert by_customer["CUST_00003"][1:] == (0, None, 1)

    recent = db.execute("SELECT anomaly_type, severity FROM vw_recent_anomalies").fetchall()
    assert sorted(recent) == [("BRADYCARDIA", "CRITICAL"), ("INVALID", "SENSOR_FAULT")]


def test_replayed_rows_are_rejected_by_keys(database_url: str, db) -> None:
    migrate(database_url)
    insert = (
        "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
        "kafka_partition, kafka_offset) VALUES ('CUST_00001', %s, 70, 0, %s) "
        "ON CONFLICT DO NOTHING"
    )
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert db.execute(insert, (hour_ago, 0)).rowcount == 1
    assert db.execute(insert, (hour_ago, 7)).rowcount == 0  # same reading at another offset
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
            "kafka_partition, kafka_offset) VALUES ('CUST_00002', now(), 300, 0, 9)"
        )


def test_message_identities_migration_keeps_one_anomaly_per_reading(
    database_url: str, db, tmp_path: Path
) -> None:
    """007 on rows the previous consumer wrote: repeats of a reading leave with their alert
    rows, the logs read so far are registered, and new epochs start above every old one."""
    before_007 = [m for m in load_migrations() if m.version < 7]
    for migration in before_007:
        (tmp_path / f"{migration.name}.sql").write_text(migration.sql)
    migrate(database_url, tmp_path)
    db.execute("SELECT heartbeat_ensure_partitions(current_date, current_date + 1)")
    db.execute(
        "INSERT INTO consumer_progress (consumer_group, topic, kafka_partition, log_epoch, "
        "next_offset, topic_id) VALUES ('g', 'heartbeat-events', 0, 2, 20, 'abc')"
    )
    anomaly = ("INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate, "
               "anomaly_type, raw_payload, log_epoch, kafka_partition, kafka_offset) "
               "VALUES (%s, %s, 30, 'BRADYCARDIA', '{}', 2, 0, %s)")
    alert = ("INSERT INTO pipeline_metrics (metric_name, metric_value, customer_id, log_epoch, "
             "kafka_partition, kafka_offset) VALUES ('alert_bradycardia', 1, %s, 2, 0, %s)")
    when = datetime.now(UTC).replace(microsecond=0)
    for customer, offset in (("CUST_00001", 5), ("CUST_00001", 9), ("CUST_00002", 11)):
        db.execute(anomaly, (customer, when, offset))
        db.execute(alert, (customer, offset))
    db.execute("INSERT INTO heartbeat_dead_letters (log_epoch, kafka_partition, kafka_offset, "
               "reason) VALUES (3, 0, 12, 'x')")

    assert migrate(database_url) == [m.name for m in load_migrations() if m.version >= 7]
    assert db.execute("SELECT kafka_offset FROM heartbeat_anomalies ORDER BY 1").fetchall() == [
        (5,), (11,)]
    assert db.execute("SELECT kafka_offset FROM pipeline_metrics "
                      "WHERE metric_name LIKE 'alert%' ORDER BY 1").fetchall() == [(5,), (11,)]
    assert db.execute(
        "SELECT topic, kafka_partition, log_epoch, topic_id, start_offset FROM kafka_logs"
    ).fetchall() == [("heartbeat-events", 0, 2, "abc", 0)]
    assert db.execute("SELECT nextval('kafka_log_epochs')").fetchone()[0] == 4
