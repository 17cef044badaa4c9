"""Summaries, the health snapshot and the data-quality checks on a real PostgreSQL."""

from __future__ import annotations

import dagster as dg
import pytest

from heartbeat_platform.orchestration.assets import health_metrics
from heartbeat_platform.orchestration.definitions import defs
from heartbeat_platform.streaming.lag import PartitionLag

SUMMARIES = {"customer_daily_bpm_stats", "fleet_minute_stats"}
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


def refresh() -> dg.ExecuteInProcessResult:
    return defs.get_job_def("refresh_summaries").execute_in_process(raise_on_error=False)


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
    assert defs.get_job_def("heartbeat_consumer").execute_in_process(
        run_config={"ops": {"consume_heartbeats": {"config": {"stop_when_idle": 1.5}}}}
    ).success


def test_real_data_passes_the_checks_and_feeds_the_summaries(produce, db) -> None:
    """Readings that went through the real pipeline are clean; summaries add up to them."""
    produce(1_500)
    run_consumer()
    result = refresh()
    assert len(result.get_asset_check_evaluations()) == 6
    assert failed_checks(result) == set()
    done = materialized(result)
    assert set(done) == SUMMARIES
    records, anomalies = db.execute(
        "SELECT (SELECT count(*) FROM heartbeat_records), "
        "(SELECT count(*) FROM heartbeat_anomalies)"
    ).fetchone()
    fleet = db.execute(
        "SELECT count(*), sum(reading_count), sum(anomaly_count) FROM fleet_minute_stats"
    ).fetchone()
    assert done["fleet_minute_stats"]["dagster/row_count"] == fleet[0]
    assert (fleet[1], fleet[2]) == (records, anomalies)
    daily = db.execute("SELECT count(*), sum(reading_count) FROM customer_daily_bpm_stats")
    count, readings = daily.fetchone()
    assert done["customer_daily_bpm_stats"]["dagster/row_count"] == count and readings == records
    assert done["customer_daily_bpm_stats"]["preview"].startswith("| customer_id | day |")


@pytest.mark.parametrize(
    ("plant", "fails", "summaries"),
    [
        pytest.param(
            f"{ANOMALY} VALUES ('CUST_00001', now(), 75, 'TACHYCARDIA', '{{}}', 2, 1)",
            "heartbeat_anomalies.anomaly_type_matches_heart_rate", set(),
            id="type contradicts heart rate: blocks summaries",
        ),
        pytest.param(
            f"{ANOMALY} VALUES ('bogus', now(), 30, 'BRADYCARDIA', '{{}}', 2, 1)",
            "heartbeat_anomalies.required_values_present", set(),
            id="malformed customer_id in anomalies: blocks summaries",
        ),
        pytest.param(
            "INSERT INTO heartbeat_records (customer_id, event_timestamp, heart_rate, "
            "kafka_partition, kafka_offset) VALUES ('', now(), 70, 2, 1)",
            "heartbeat_records.required_values_present", set(),
            id="blank customer_id in records: blocks summaries",
        ),
        pytest.param(
            f"{ANOMALY} SELECT customer_id, event_timestamp, heart_rate, anomaly_type, "
            "raw_payload, 2, kafka_offset FROM heartbeat_anomalies LIMIT 1",
            "heartbeat_anomalies.no_duplicate_readings", SUMMARIES,
            id="a reading stored twice: warns only",
        ),
        pytest.param(
            f"{ANOMALY} SELECT 'CUST_00001', now() - i * interval '1 ms', 200, 'TACHYCARDIA', "
            "'{}', 2, i FROM generate_series(1, 300) AS i",
            "heartbeat_anomalies.anomaly_share_within_bounds", SUMMARIES,
            id="anomaly storm: warns only",
        ),
        pytest.param(
            "UPDATE heartbeat_records SET event_timestamp = event_timestamp - interval '1 hour'",
            "heartbeat_records.latest_reading_is_fresh", SUMMARIES,
            id="no recent reading: warns only",
        ),
    ],
)
def test_a_planted_bad_row_fails_its_check(
    platform_settings, db, plant: str, fails: str, summaries: set[str]
) -> None:
    """Each check catches its own problem and only that; blocking ones stop the summaries."""
    db.execute(CLEAN_ROWS)
    db.execute(plant)
    result = refresh()
    assert failed_checks(result) == {fails}
    assert set(materialized(result)) == summaries


def test_clean_rows_pass_every_check(platform_settings, db) -> None:
    """The baseline of the planted-row tests is clean, so each failure above is the plant's."""
    db.execute(CLEAN_ROWS)
    result = refresh()
    assert failed_checks(result) == set() and set(materialized(result)) == SUMMARIES


def test_health_snapshot_records_metrics_and_plottable_metadata(produce, db) -> None:
    """health_* rows land in pipeline_metrics (lag per partition) and as numeric metadata."""
    produce(900)
    run_consumer()
    result = defs.get_job_def("pipeline_health").execute_in_process(
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
