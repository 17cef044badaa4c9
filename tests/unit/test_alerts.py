"""Alert banners, their rate limit, metric rows and consumer statistics."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from heartbeat_platform.domain import (
    AlertManager,
    HeartbeatClass,
    MetricRow,
    PipelineStats,
    Reading,
)

BRADY, TACHY, INVALID = (
    HeartbeatClass.BRADYCARDIA,
    HeartbeatClass.TACHYCARDIA,
    HeartbeatClass.INVALID,
)
LOGGER_NAME = "tests.alerts"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reading(bpm: int, customer: str = "CUST_00042") -> Reading:
    return Reading(customer, bpm, datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manager(clock: FakeClock) -> AlertManager:
    return AlertManager(
        banner_limit=3, window_seconds=1.0, clock=clock, logger=logging.getLogger(LOGGER_NAME)
    )


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture):
    """Messages logged by the alert manager under test, in order."""
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)

    def messages() -> list[str]:
        records = [r for r in caplog.records if r.name == LOGGER_NAME]
        assert all(r.levelno == logging.WARNING for r in records)
        return [r.getMessage() for r in records]

    return messages


def test_banners_name_severity_customer_rate_and_running_count(manager, logged) -> None:
    manager.trigger_alert(reading(195), TACHY)
    manager.trigger_alert(reading(30, "CUST_00007"), BRADY)
    manager.trigger_alert(reading(201), TACHY)
    assert logged() == [
        "ALERT [CRITICAL] TACHYCARDIA customer=CUST_00042 bpm=195 (tachycardia #1)",
        "ALERT [CRITICAL] BRADYCARDIA customer=CUST_00007 bpm=30 (bradycardia #1)",
        "ALERT [CRITICAL] TACHYCARDIA customer=CUST_00042 bpm=201 (tachycardia #2)",
    ]


def test_sensor_faults_are_warnings(manager, logged) -> None:
    manager.trigger_alert(reading(0), INVALID)
    assert logged() == ["ALERT [WARNING] SENSOR FAULT customer=CUST_00042 bpm=0 (invalid #1)"]


def test_metric_rows_are_returned_for_every_alert(manager) -> None:
    rows = [
        manager.trigger_alert(reading(bpm), klass, kafka_partition=2, kafka_offset=offset)
        for offset, (bpm, klass) in enumerate(
            [(190, TACHY), (20, BRADY), (185, TACHY), (-1, INVALID), (300, TACHY), (39, BRADY)]
        )
    ]
    assert rows == [
        MetricRow("alert_tachycardia", 190.0, "CUST_00042", 2, 0, None, {"count": 1}),
        MetricRow("alert_bradycardia", 20.0, "CUST_00042", 2, 1, None, {"count": 1}),
        MetricRow("alert_tachycardia", 185.0, "CUST_00042", 2, 2, None, {"count": 2}),
        MetricRow("alert_invalid", -1.0, "CUST_00042", 2, 3, None, {"count": 1}),
        MetricRow("alert_tachycardia", 300.0, "CUST_00042", 2, 4, None, {"count": 3}),
        MetricRow("alert_bradycardia", 39.0, "CUST_00042", 2, 5, None, {"count": 2}),
    ]
    assert all(type(row.metric_value) is float for row in rows)
    assert manager.counts == {BRADY: 2, TACHY: 3, INVALID: 1}


def test_kafka_coordinates_default_to_none(manager) -> None:
    row = manager.trigger_alert(reading(190), TACHY)
    assert (row.kafka_partition, row.kafka_offset) == (None, None)


def test_banners_are_limited_per_window_but_rows_are_not(manager, clock, logged) -> None:
    rows = [manager.trigger_alert(reading(190), TACHY) for _ in range(10)]
    rows += [manager.trigger_alert(reading(20), BRADY) for _ in range(2)]
    assert len(logged()) == 3
    assert [row.labels["count"] for row in rows] == [*range(1, 11), 1, 2]
    assert manager.counts == {BRADY: 2, TACHY: 10, INVALID: 0}

    clock.now += 0.999  # still the same window
    manager.trigger_alert(reading(0), INVALID)
    assert len(logged()) == 3

    clock.now += 0.001  # next window: one summary, then banners again
    manager.trigger_alert(reading(191), TACHY)
    assert logged()[3:] == [
        "suppressed 10 alert banners in the last 1.0s (bradycardia=2, tachycardia=7, invalid=1)",
        "ALERT [CRITICAL] TACHYCARDIA customer=CUST_00042 bpm=191 (tachycardia #11)",
    ]


def test_a_quiet_window_logs_no_summary(manager, clock, logged) -> None:
    for _ in range(3):
        manager.trigger_alert(reading(190), TACHY)
    clock.now += 5
    manager.trigger_alert(reading(190), TACHY)
    manager.flush_banners()
    assert len(logged()) == 4
    assert not any(m.startswith("suppressed") for m in logged())


def test_flush_banners_reports_pending_suppressions_once(manager, clock, logged) -> None:
    for _ in range(8):
        manager.trigger_alert(reading(25), BRADY)
    clock.now += 0.5
    manager.flush_banners()
    manager.flush_banners()
    assert logged()[3:] == ["suppressed 5 alert banners in the last 0.5s (bradycardia=5)"]

    clock.now += 0.2  # same window: still suppressed, summarised from the last flush
    manager.trigger_alert(reading(25), BRADY)
    clock.now += 3
    manager.flush_banners()
    assert logged()[4:] == ["suppressed 1 alert banners in the last 0.5s (bradycardia=1)"]


def test_zero_banner_limit_suppresses_every_banner(clock, logged) -> None:
    manager = AlertManager(banner_limit=0, clock=clock, logger=logging.getLogger(LOGGER_NAME))
    row = manager.trigger_alert(reading(200), TACHY)
    assert row.metric_name == "alert_tachycardia"
    manager.flush_banners()
    assert logged() == ["suppressed 1 alert banners in the last 0.0s (tachycardia=1)"]


def test_normal_readings_do_not_alert(manager, logged) -> None:
    with pytest.raises(ValueError, match="NORMAL"):
        manager.trigger_alert(reading(72), HeartbeatClass.NORMAL)
    assert manager.counts == {BRADY: 0, TACHY: 0, INVALID: 0}
    assert logged() == []


def test_counts_is_a_copy(manager) -> None:
    manager.counts[TACHY] = 99
    assert manager.counts[TACHY] == 0
    assert manager.counts["TACHYCARDIA"] == 0  # str enum keys also answer to their value


def test_default_logger_and_clock(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="heartbeat_platform.alerts")
    AlertManager().trigger_alert(reading(222), TACHY)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        (
            "heartbeat_platform.alerts",
            "ALERT [CRITICAL] TACHYCARDIA customer=CUST_00042 bpm=222 (tachycardia #1)",
        )
    ]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"banner_limit": -1}, "banner_limit"),
        ({"banner_limit": 2.5}, "banner_limit"),
        ({"window_seconds": 0}, "window_seconds"),
        ({"window_seconds": -1.0}, "window_seconds"),
        ({"window_seconds": float("nan")}, "window_seconds"),
    ],
)
def test_invalid_alert_manager_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        AlertManager(**kwargs)


def test_metric_row_defaults() -> None:
    row = MetricRow("m", 1.5)
    assert (row.customer_id, row.kafka_partition, row.kafka_offset, row.labels) == (
        None,
        None,
        None,
        {},
    )
    assert MetricRow("m", 1.5).labels is not row.labels


# --- PipelineStats --------------------------------------------------------------------

STAT_NAMES = [
    "stats_messages_consumed",
    "stats_records_written",
    "stats_anomalies_bradycardia",
    "stats_anomalies_tachycardia",
    "stats_anomalies_invalid",
    "stats_dead_letters",
    "stats_duplicates_dropped",
    "stats_alerts_triggered",
    "stats_batches",
]


def test_stats_accumulate_batches() -> None:
    stats = PipelineStats()
    stats.record_batch(
        messages_consumed=100,
        records_written=90,
        anomalies_bradycardia=3,
        anomalies_tachycardia=2,
        anomalies_invalid=1,
        dead_letters=4,
        duplicates_dropped=5,
        alerts_triggered=6,
    )
    stats.record_batch(messages_consumed=10, records_written=10)
    assert stats == PipelineStats(110, 100, 3, 2, 1, 4, 5, 6, 2)


def test_flush_stats_snapshots_every_counter_with_shared_labels() -> None:
    stats = PipelineStats()
    stats.record_batch(messages_consumed=7, records_written=5, anomalies_invalid=1, dead_letters=1)
    labels = {"consumer": "c-1", "partition_set": "0,1"}
    rows = stats.flush_stats(labels)
    assert [row.metric_name for row in rows] == STAT_NAMES
    assert [row.metric_value for row in rows] == [7.0, 5.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert all(row.labels == labels for row in rows)
    assert all(row.customer_id is None and row.kafka_offset is None for row in rows)
    labels["consumer"] = "changed"
    assert rows[0].labels["consumer"] == "c-1"  # rows do not alias the caller's dict


def test_flush_stats_is_cumulative_and_labels_default_to_empty() -> None:
    stats = PipelineStats()
    stats.record_batch(messages_consumed=3)
    stats.flush_stats()
    stats.record_batch(messages_consumed=4)
    rows = stats.flush_stats()
    assert rows[0].metric_value == 7.0
    assert rows[-1].metric_value == 2.0
    assert all(row.labels == {} for row in rows)


def test_should_flush_after_enough_messages_since_the_last_snapshot() -> None:
    stats = PipelineStats()
    assert stats.should_flush() is False
    stats.record_batch(messages_consumed=99)
    assert stats.should_flush() is False
    stats.record_batch(messages_consumed=1)
    assert stats.should_flush() is True
    stats.flush_stats()
    assert stats.should_flush() is False
    stats.record_batch(messages_consumed=60)
    assert stats.should_flush(every=50) is True
    assert stats.should_flush(every=61) is False


def test_negative_batch_counts_are_refused() -> None:
    stats = PipelineStats()
    with pytest.raises(ValueError, match="negative"):
        stats.record_batch(messages_consumed=5, dead_letters=-1)
    assert stats == PipelineStats()
