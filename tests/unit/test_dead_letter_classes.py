"""A dead letter's class travels with it as data: each source names it, the metric counts it,
and no reason text is parsed back (a reason may quote anything a sender wrote)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import orjson
from prometheus_client import CollectorRegistry

from heartbeat_platform.domain.alerts import AlertManager
from heartbeat_platform.domain.dead_letters import DeadLetterClass
from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.metrics import ConsumerMetrics, ConsumerSnapshot
from heartbeat_platform.storage.progress import KafkaLog
from heartbeat_platform.storage.writer import WriteResult
from heartbeat_platform.streaming.batch_builder import BatchBuilder, Cursor

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
LIMIT = 2_000


def message(offset: int, value: bytes) -> SimpleNamespace:
    """What the builder reads of a consumed message, on partition 0."""
    return SimpleNamespace(error=lambda: None, partition=lambda: 0, offset=lambda: offset,
                           leader_epoch=lambda: 0,
                           key=lambda: None, value=lambda: value)


def event(customer: str = "CUST_00001", when: datetime = NOW) -> bytes:
    return orjson.dumps({"customer_id": customer, "heart_rate": 70,
                         "timestamp": when.isoformat()})


def dead_letters():
    """Offset 0: oversized; 1: not JSON; 2: a customer id that names the size setting (an
    old reason parser took it for oversized); 3: older than the retention window."""
    messages = [
        message(0, event() + b" " * LIMIT),
        message(1, b"not json"),
        message(2, event(customer="HEARTBEAT_MAX_MESSAGE_BYTES")),
        message(3, event(when=NOW - timedelta(days=30))),
    ]
    builder = BatchBuilder(AlertManager(banner_limit=0), RetentionPolicy(), LIMIT)
    built = builder.build(messages, {0: Cursor(None, 0, [KafkaLog(1, "A", 0)])}, NOW)
    return built.batch


def test_each_dead_letter_carries_the_class_of_its_source() -> None:
    batch = dead_letters()
    assert [(d[2], d[6]) for d in batch.dead_letters] == [
        (0, DeadLetterClass.OVERSIZED),
        (1, DeadLetterClass.INVALID),
        (2, DeadLetterClass.INVALID),
        (3, DeadLetterClass.OUT_OF_WINDOW),
    ]
    assert "HEARTBEAT_MAX_MESSAGE_BYTES" in batch.dead_letters[2][5]  # the reason quotes it


def test_a_message_the_database_refuses_becomes_a_refused_dead_letter() -> None:
    batch = dead_letters()
    batch.raw = lambda position: (None, b"{}")
    (refused,) = batch.refused({(0, 9): "value too long (SQLSTATE 22001)"}).dead_letters[4:]
    assert refused[5:] == ("the database refused it: value too long (SQLSTATE 22001)",
                           DeadLetterClass.REFUSED)


def test_the_metric_counts_dead_letters_by_the_class_they_carry() -> None:
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry, ConsumerSnapshot)
    result = WriteResult(records=0, duplicates=0, anomalies=0, dead_letters=4, metrics=0,
                         refused=2)
    metrics.batch_committed(dead_letters(), result, 0.01)
    counted = {klass.value: registry.get_sample_value(
        "heartbeat_consumer_dead_letters_total", {"reason": klass.value})
        for klass in DeadLetterClass}
    assert counted == {"invalid": 2, "out_of_window": 1, "oversized": 1, "refused": 2}
