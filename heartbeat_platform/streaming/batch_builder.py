"""Consumed messages in, the rows of one batch and each partition's progress out.

No client and no database: the consumer hands over what `Consumer.consume()` returned and
the cursors of its assigned partitions; anything with the message methods it uses
(`error`, `partition`, `offset`, `key`, `value`) will do, which is how the unit tests drive it.
Each message ends in exactly one list: a record, an anomaly (with its alert row) or a dead
letter with the reason; a message already behind its partition's cursor (re-fetched after a
rewind, or of a partition revoked meanwhile) is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from confluent_kafka import KafkaError

from heartbeat_platform.domain.alerts import AlertManager
from heartbeat_platform.domain.dead_letters import DeadLetterClass
from heartbeat_platform.domain.events import (
    HeartbeatClass,
    InvalidMessage,
    classify_heart_rate,
    validate_message,
)
from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.storage.progress import KafkaLog, PartitionProgress, epoch_at
from heartbeat_platform.storage.writer import Batch, Position, RawMessage
from heartbeat_platform.streaming.consumer_config import DEFAULT_MAX_MESSAGE_BYTES

KEPT_BYTES = 1_024  # of a message over the limit, what its dead letter keeps

_NORMAL = HeartbeatClass.NORMAL
_INVALID = DeadLetterClass.INVALID
_OUT_OF_WINDOW = DeadLetterClass.OUT_OF_WINDOW
_OVERSIZED = DeadLetterClass.OVERSIZED
ANOMALY_STATS = {
    HeartbeatClass.BRADYCARDIA: "anomalies_bradycardia",
    HeartbeatClass.TACHYCARDIA: "anomalies_tachycardia",
    HeartbeatClass.INVALID: "anomalies_invalid",
}


class ConsumedMessage(Protocol):
    def error(self) -> KafkaError | None: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def leader_epoch(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


@dataclass(slots=True)
class Cursor:
    """One assigned partition: the progress this consumer expects in the table (None: never
    stored), the next offset to read, the logs whose epochs its offsets belong to, and the
    topic id those are known under (None: not known, e.g. progress from a broker without)."""

    stored: PartitionProgress | None
    next_offset: int
    logs: list[KafkaLog]
    topic_id: str | None = None

    def epoch_at(self, offset: int) -> tuple[int, int | None]:
        return epoch_at(self.logs, offset)


@dataclass(slots=True)
class BuiltBatch:
    batch: Batch
    counts: dict[str, int]  # anomalies per stats field of PipelineStats
    out_of_range: set[int] = field(default_factory=set)  # partitions the client reported
    resets: dict[int, str] = field(default_factory=dict)  # their reports' text (last one)
    errors: list[KafkaError] = field(default_factory=list)  # other client errors, to log


class BatchBuilder:
    """Validates, classifies and sorts messages into a `Batch` (see the module docstring)."""

    def __init__(
        self,
        alerts: AlertManager,
        retention: RetentionPolicy,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        self.alerts = alerts
        self.retention = retention
        self.max_message_bytes = max_message_bytes

    def build(
        self, messages: Sequence[ConsumedMessage], cursors: dict[int, Cursor], now: datetime
    ) -> BuiltBatch:
        """The batch of `messages`; moves each cursor past them, as if the batch commits (a
        failed write rewinds the cursors from the stored progress)."""
        batch = Batch(raw=_raw_lookup(messages))
        records, anomalies, dead, metrics = (
            batch.records, batch.anomalies, batch.dead_letters, batch.metrics,
        )
        built = BuiltBatch(batch, dict.fromkeys(ANOMALY_STATS.values(), 0))
        counts = built.counts
        trigger = self.alerts.trigger_alert
        classify = classify_heart_rate
        limit = self.max_message_bytes
        window = self.retention.admissible(now)
        oldest, newest = window.oldest, window.newest
        started = {p: c.next_offset for p, c in cursors.items()}
        leader_epochs: dict[int, int | None] = {}  # of each partition's last message
        spans: dict[int, tuple[int, int | None]] = {}  # partition -> (epoch, next log's start)
        for message in messages:
            error = message.error()
            partition = message.partition()
            if error is not None:
                if error.code() == KafkaError._AUTO_OFFSET_RESET:
                    if partition in cursors:
                        built.out_of_range.add(partition)
                        built.resets[partition] = error.str()
                elif error.code() != KafkaError._PARTITION_EOF:
                    built.errors.append(error)
                continue
            cursor = cursors.get(partition)
            offset = message.offset()
            if cursor is None or offset < cursor.next_offset:
                continue  # revoked meanwhile, or already written (after a rewind)
            span = spans.get(partition)
            if span is None or (span[1] is not None and offset >= span[1]):
                span = spans[partition] = cursor.epoch_at(offset)
            epoch = span[0]
            raw = message.value()
            if raw is not None and len(raw) > limit:
                dead.append((epoch, partition, offset, message.key(), raw[:KEPT_BYTES],
                             f"message of {len(raw)} bytes is over the limit of {limit} "
                             f"(HEARTBEAT_MAX_MESSAGE_BYTES); its first {KEPT_BYTES} are kept",
                             _OVERSIZED))
                cursor.next_offset = offset + 1
                leader_epochs[partition] = message.leader_epoch()
                continue
            try:
                reading = validate_message(raw)
            except InvalidMessage as exc:
                dead.append((epoch, partition, offset, message.key(), raw, exc.reason, _INVALID))
            else:
                customer, bpm, when = reading
                if not oldest <= when <= newest:  # could not be kept, or claims the future
                    refused = window.reason(when)
                    assert refused is not None  # `when` is outside the window
                    dead.append(
                        (epoch, partition, offset, message.key(), raw, refused, _OUT_OF_WINDOW)
                    )
                elif (klass := classify(bpm)) is _NORMAL:
                    records.append((customer, when, bpm, epoch, partition, offset))
                else:
                    assert raw is not None  # validate_message refuses None
                    anomalies.append(
                        (customer, when, bpm, klass.value, raw.decode(), epoch, partition, offset)
                    )
                    counts[ANOMALY_STATS[klass]] += 1
                    metrics.append(trigger(reading, klass, partition, offset, epoch))
            cursor.next_offset = offset + 1
            leader_epochs[partition] = message.leader_epoch()
        for partition, cursor in cursors.items():
            if cursor.next_offset != started.get(partition):
                next_offset = cursor.next_offset
                after = PartitionProgress(cursor.epoch_at(next_offset)[0], next_offset,
                                          leader_epochs.get(partition))
                batch.progress[partition] = (cursor.stored, after)
                cursor.stored = after
        return built


def _raw_lookup(messages: Sequence[ConsumedMessage]) -> Callable[[Position], RawMessage]:
    """(key, value) by position, indexed only when asked (a message the database refused)."""
    index: dict[Position, RawMessage] | None = None

    def raw(position: Position) -> RawMessage:
        nonlocal index
        if index is None:
            index = {
                (m.partition(), m.offset()): (m.key(), m.value())
                for m in messages if m.error() is None
            }
        return index[position]

    return raw
