"""Rollups, retention, the health snapshot and the data-quality checks on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from heartbeat_platform.definitions import defs
from heartbeat_platform.defs.monitoring.health import health_metrics
from heartbeat_platform.defs.monitoring.retention import (
    raw_partitions,
    storage_retention_first_run,
)
from heartbeat_platform.defs.resources import PostgresResource
from heartbeat_platform.defs.serving.rollups import (
    ROLLUPS_FIRST_PARTITION,
    rollup_run_key,
    rollup_sensor,
)
from heartbeat_platform.storage.rollups import Rollup, mark_pending
from heartbeat_platform.streaming.lag import PartitionLag

CLEAN_ROWS = """
INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, kafka_partition,
                               kafka_offset)
SELECT format('CUST_%s', lpad(i::text, 5, '0')), now() - i * interval '1 second', 60 + i % 60,
       0, i
FROM generate_series(1, 950) AS i;
INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate, anomaly_type,
                                 raw_payload, kafka_partition, kafka_offset)
SELECT format('CUST_%s', lpad(i::text, 5, '0')), now() - i * interval '1.5 second', 30,
       'BRADYCARDIA', '{}', 1, i
FROM generate_series(1, 50) AS i;
"""
ANOMALY = """INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate,
                 anomaly_type, raw_payload, kafka_partition, kafka_offset)"""


def check() -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("data_quality").execute_in_process(raise_on_error=False)


def materialize_rollup(job: str, partition: str, pending_only: bool = False):
    asset = {"fleet_minute_rollup": "fleet_minute_stats",
             "customer_hourly_rollup": "customer_hourly_bpm_stats",
             "customer_daily_rollup": "customer_daily_bpm_stats"}[job]
    result = defs.resolve_job_def(job).execute_in_process(
        partition_key=partition,
        run_config={"ops": {asset: {"config": {"pending_only": pending_only}}}},
    )
    assert result.success
    return materialized(result)[asset]


def failed_checks(result: dg.ExecuteInProcessResult) -> set[str]:
    return {
        f"{e.asset_key.to_user_string()}.{e.check_name}"
        for e in result.get_asset_check_evaluations()
        if not e.passed
    }


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        e.asset_key.to_user_string(): {
            k: v.value for k, v in e.step_materialization_data.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
    }


def run_consumer() -> None:
    assert defs.resolve_job_def("heartbeat_consumer").execute_in_process(
        run_config={"ops": {"consume_heartbeats": {"config": {"stop_when_idle": 1.5}}}}
    ).success


def test_real_data_passes_the_checks_and_feeds_the_rollups(produce, db) -> None:
    """Readings that went through the real pipeline are clean; the rollups add up to them."""
    produce(1_500)
    run_consumer()
    result = check()
    assert len(result.get_asset_check_evaluations()) == 6
    assert failed_checks(result) == set()
    records, anomalies = db.execute(
        "SELECT (SELECT count(*) FROM heartbeat_records), "
        "(SELECT count(*) FROM (SELECT DISTINCT customer_id, event_timestamp "
        "                       FROM heartbeat_anomalies) AS a)"
    ).fetchone()
    hours = [row[0] for row in db.execute(
        "SELECT DISTINCT date_trunc('hour', event_timestamp, 'UTC') FROM heartbeat_records"
    )]
    for hour in hours:
        key = hour.astimezone(UTC).strftime("%Y-%m-%d-%H:%M")
        fleet = materialize_rollup("fleet_minute_rollup", key)
        assert fleet["windows_recomputed"] == 60  # a backfill run: every minute of its hour
        materialize_rollup("customer_hourly_rollup", key)
    for day in {hour.astimezone(UTC).strftime("%Y-%m-%d") for hour in hours}:
        daily = materialize_rollup("customer_daily_rollup", day)
        assert daily["preview"].startswith("| customer_id | day |")
    for table in ("fleet_minute_stats", "customer_hourly_bpm_stats", "customer_daily_bpm_stats"):
        totals = db.execute(
            f"SELECT sum(reading_count), sum(anomaly_count) FROM {table}"
        ).fetchone()
        assert totals == (records, anomalies), table
    summary = db.execute("SELECT total_records, total_anomalies FROM vw_pipeline_summary")
    assert summary.fetchone() == (records, anomalies)


def test_a_backfill_run_over_a_partition_range_recomputes_every_window_of_it(
    platform_settings, db
) -> None:
    """What the UI's backfill launches (a day of hourly partitions per run): every minute of
    the range is recomputed from its raw rows, pending or not."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    db.execute(
        "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
        "kafka_partition, kafka_offset) SELECT 'CUST_00001', %s + i * interval '1 minute', 70, "
        "0, i FROM generate_series(0, 119) AS i",
        (start,),
    )
    first, last = (t.strftime("%Y-%m-%d-%H:%M") for t in (start, start + timedelta(hours=1)))
    result = defs.resolve_job_def("fleet_minute_rollup").execute_in_process(
        tags={"dagster/asset_partition_range_start": first,
              "dagster/asset_partition_range_end": last},
        run_config={"ops": {"fleet_minute_stats": {"config": {"pending_only": False}}}},
    )
    assert result.success
    assert materialized(result)["fleet_minute_stats"]["windows_recomputed"] == 120
    minutes, readings = db.execute(
        "SELECT count(*) FILTER (WHERE reading_count > 0), sum(reading_count) "
        "FROM fleet_minute_stats"
    ).fetchone()
    assert (minutes, readings) == (120, 120)


def test_rollup_sensor_requests_exactly_the_settled_pending_partitions(
    platform_settings, db
) -> None:
    """Two old hours pending -> one fleet run each, keyed by their marks; nothing else.

    The database's sessions default to India's time zone: partition keys are UTC hours."""
    db.execute(f"ALTER DATABASE \"{db.info.dbname}\" SET timezone TO 'Asia/Kolkata'")
    old = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    mark_pending(db, Rollup.FLEET_MINUTE, [old + timedelta(minutes=5), old + timedelta(hours=1)])
    mark_pending(db, Rollup.CUSTOMER_HOURLY, [old])
    # before the first Dagster partition: left to `maintain`, and must not fail the tick
    mark_pending(db, Rollup.FLEET_MINUTE, [datetime(2025, 12, 31, 10, tzinfo=UTC)])
    postgres = PostgresResource(database_url=platform_settings.database_url)
    context = dg.build_sensor_context(resources={"postgres": postgres},
                                      instance=dg.DagsterInstance.ephemeral())
    requests = rollup_sensor(context).run_requests
    got = sorted((r.job_name, r.partition_key) for r in requests)
    key = old.strftime("%Y-%m-%d-%H:%M")
    next_key = (old + timedelta(hours=1)).strftime("%Y-%m-%d-%H:%M")
    assert got == [("customer_hourly_rollup", key), ("fleet_minute_rollup", key),
                   ("fleet_minute_rollup", next_key)]
    assert len({r.run_key for r in requests}) == 3
    for request in requests:
        (config,) = request.run_config["ops"].values()
        assert config == {"config": {"pending_only": True}}
    # the same marks give the same run keys (Dagster skips them); a new mark, a new key
    again = {r.run_key for r in rollup_sensor(context).run_requests}
    assert again == {r.run_key for r in requests}
    mark_pending(db, Rollup.FLEET_MINUTE, [old + timedelta(minutes=6)])
    assert len({r.run_key for r in rollup_sensor(context).run_requests} - again) == 1


def test_rollup_partitions_before_the_first_reading_are_reported_empty_once(
    platform_settings, db
) -> None:
    """A fresh install's first reading 3 h ago: every hourly and daily partition that ends
    before it is reported materialized with 0 readings, none from its hour on, and a
    second tick reports nothing again."""
    hour_of_first = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=3)
    first = hour_of_first + timedelta(minutes=5)
    mark_pending(db, Rollup.FLEET_MINUTE, [first])
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(
        resources={"postgres": PostgresResource(database_url=platform_settings.database_url)},
        instance=instance,
    )
    events = rollup_sensor(context).asset_events
    reported: dict[str, set[str]] = {}
    for event in events:
        assert event.metadata["readings_summarised"].value == 0
        reported.setdefault(event.asset_key.to_user_string(), set()).add(event.partition)
    hours, hour = set(), ROLLUPS_FIRST_PARTITION
    while hour < hour_of_first:  # each hour that ends before the first reading
        hours.add(hour.strftime("%Y-%m-%d-%H:%M"))
        hour += timedelta(hours=1)
    days, day = set(), ROLLUPS_FIRST_PARTITION
    while day + timedelta(days=1) <= first:
        days.add(day.strftime("%Y-%m-%d"))
        day += timedelta(days=1)
    assert reported == {"fleet_minute_stats": hours, "customer_hourly_bpm_stats": hours,
                        **({"customer_daily_bpm_stats": days} if days else {})}
    assert hour_of_first.strftime("%Y-%m-%d-%H:%M") not in hours
    for event in events:
        instance.report_runless_asset_event(event)
    assert rollup_sensor(context).asset_events == []


def test_rollup_run_key_is_stable_for_the_same_marks_and_retries_stale_ones() -> None:
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    fresh, stale = now - timedelta(minutes=1), now - timedelta(minutes=25)
    key = rollup_run_key(Rollup.FLEET_MINUTE, "2026-12-02-11:00", fresh, now)
    assert key == rollup_run_key(Rollup.FLEET_MINUTE, "2026-12-02-11:00", fresh, now)
    retried = {  # a failed run's marks are back unchanged: a new key every ten minutes
        rollup_run_key(Rollup.FLEET_MINUTE, "2026-12-02-11:00", stale, now + timedelta(minutes=m))
        for m in (0, 5, 10, 20)
    }
    assert len(retried) == 3


def test_retention_runs_once_on_a_fresh_install_then_leaves_it_to_the_schedule() -> None:
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(instance=instance)
    request = storage_retention_first_run(context)
    assert isinstance(request, dg.RunRequest) and request.run_key == "first"
    instance.report_runless_asset_event(dg.AssetMaterialization(raw_partitions.key))
    assert isinstance(storage_retention_first_run(context), dg.SkipReason)


def test_retention_asset_reports_what_it_did(platform_settings, db) -> None:
    """An expired day with its rollups done is dropped and named in the metadata."""
    old = (datetime.now(UTC) - timedelta(days=30)).date()
    db.execute("SELECT heartbeat_ensure_partitions(%s, %s)", (old, old))
    result = defs.resolve_job_def("storage_retention").execute_in_process()
    assert result.success
    metadata = materialized(result)["raw_partitions"]
    assert metadata["days_dropped"] == [str(old)]
    assert metadata["partitions_dropped"] == 5  # four raw tables and the customer minutes
    assert (metadata["resolved_episodes_deleted"], metadata["delivered_notifications_deleted"]) \
        == (0, 0)
    assert db.execute(
        "SELECT to_regclass(%s)", (f"heartbeat_records_p{old:%Y%m%d}",)
    ).fetchone()[0] is None


def test_cold_tier_asset_compacts_a_due_day_and_leaves_a_recent_one_hot(
        platform_settings, db) -> None:
    """A day over for HEARTBEAT_HOT_DAYS moves to cold (the metadata says so and counts
    it); today's partition stays hot; the nightly schedule asks for due days only."""
    old = (datetime.now(UTC) - timedelta(days=4)).date()
    today = datetime.now(UTC).date()
    db.execute(
        "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
        "kafka_partition, kafka_offset) SELECT 'CUST_00001', %s + i * interval '1 s', 70, 0, i "
        "FROM generate_series(0, 99) AS i", (datetime(old.year, old.month, old.day, tzinfo=UTC),))
    schedule = next(s for s in defs.schedules if s.name == "cold_tier_daily")
    with dg.build_schedule_context(
            resources={"postgres": PostgresResource()}) as context:
        requests = schedule(context)
    assert [r.partition_key for r in requests] == [str(old)]
    job = defs.resolve_job_def("cold_tier_compaction")
    done = materialized(job.execute_in_process(partition_key=str(old)))["heartbeat_cold"]
    assert (done["tier"], done["readings_moved"], done["cold_readings"]) == ("cold", 100, 100)
    assert db.execute("SELECT count(*) FROM heartbeat_records").fetchone()[0] == 0
    hot = materialized(job.execute_in_process(partition_key=str(today)))["heartbeat_cold"]
    assert hot["tier"] == "hot"


@pytest.mark.parametrize(
    ("plant", "fails"),
    [
        pytest.param(
            f"{ANOMALY} VALUES ('CUST_00001', now(), 75, 'TACHYCARDIA', '{{}}', 2, 1)",
            "heartbeat_anomalies.anomaly_type_matches_heart_rate",
            id="type contradicts heart rate",
        ),
        pytest.param(
            f"{ANOMALY} VALUES ('bogus', now(), 30, 'BRADYCARDIA', '{{}}', 2, 1)",
            "heartbeat_anomalies.required_values_present",
            id="malformed customer_id in anomalies",
        ),
        pytest.param(
            "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
            "kafka_partition, kafka_offset) VALUES ('', now(), 70, 2, 1)",
            "heartbeat_records.required_values_present",
            id="blank customer_id in records",
        ),
        pytest.param(
            "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
            "kafka_partition, kafka_offset) SELECT customer_id, event_timestamp, 70, 2, "
            "kafka_offset FROM heartbeat_anomalies LIMIT 1",
            "heartbeat_anomalies.no_duplicate_readings",
            id="a reading stored as a record and an anomaly",
        ),
        pytest.param(
            f"{ANOMALY} SELECT 'CUST_00001', now() - i * interval '1 ms', 200, 'TACHYCARDIA', "
            "'{}', 2, i FROM generate_series(1, 300) AS i",
            "heartbeat_anomalies.anomaly_share_within_bounds",
            id="anomaly storm",
        ),
        pytest.param(
            "UPDATE heartbeat_records SET event_timestamp = event_timestamp - interval '1 hour'",
            "heartbeat_records.latest_reading_is_fresh",
            id="no recent reading",
        ),
    ],
)
def test_a_planted_bad_row_fails_its_check(platform_settings, db, plant: str, fails: str) -> None:
    """Each check catches its own problem and only that."""
    db.execute(CLEAN_ROWS)
    db.execute(plant)
    assert failed_checks(check()) == {fails}


def test_clean_rows_pass_every_check(platform_settings, db) -> None:
    """The baseline of the planted-row tests is clean, so each failure above is the plant's."""
    db.execute(CLEAN_ROWS)
    assert failed_checks(check()) == set()


def test_health_snapshot_records_metrics_and_plottable_metadata(produce, db) -> None:
    """health_* rows land in pipeline_metrics (lag per partition) and as numeric metadata."""
    produce(900)
    run_consumer()
    result = defs.resolve_job_def("pipeline_health").execute_in_process(
        run_config={"ops": {"pipeline_health_snapshot": {"config": {"window_s": 600}}}}
    )
    assert result.success
    rows = db.execute(
        "SELECT metric_name, metric_value, labels FROM pipeline_metrics "
        "WHERE metric_name LIKE 'health\\_%' ORDER BY id"
    ).fetchall()
    values = {name: value for name, value, labels in rows if "partition" not in labels}
    lags = {labels["partition"]: value for name, value, labels in rows if "partition" in labels}
    assert values["health_throughput_per_s"] == pytest.approx(900 / 600)
    dead = db.execute("SELECT count(*) FROM heartbeat_dead_letters").fetchone()[0]
    assert values["health_dead_letters"] == dead
    assert 0 < values["health_anomaly_rate"] < 0.2
    assert lags == {0: 0.0, 1: 0.0, 2: 0.0}  # everything produced was consumed
    metadata = materialized(result)["pipeline_health_snapshot"]
    assert metadata["throughput_per_s"] == pytest.approx(values["health_throughput_per_s"])
    assert metadata["consumer_lag_partition_1"] == 0.0
    assert all(isinstance(v, float) for v in metadata.values())  # plottable


def test_health_metrics_with_the_embedded_broker_add_its_memory_and_log_size() -> None:
    lags = [PartitionLag(0, 15, 5), PartitionLag(1, 3, 7)]
    rows = health_metrics(90, 9, 1, 10, lags, broker_memory_bytes=64 * 1_048_576)
    by_name = {r.metric_name: r.metric_value for r in rows if "partition" not in r.labels}
    assert by_name["health_broker_memory_mb"] == 64.0
    assert by_name["health_broker_log_messages"] == 18.0  # the log ends, summed


def test_health_metrics_arithmetic() -> None:
    rows = health_metrics(90, 9, 1, 10, [PartitionLag(0, 15, 5), PartitionLag(1, 3, 7)])
    by_name = {(r.metric_name, r.labels.get("partition")): r.metric_value for r in rows}
    assert by_name == {
        ("health_throughput_per_s", None): 10.0,
        ("health_error_rate", None): 0.01,
        ("health_anomaly_rate", None): 9 / 99,
        ("health_dead_letters", None): 1.0,
        ("health_consumer_lag", 0): 10.0,
        ("health_consumer_lag", 1): 0.0,
    }
