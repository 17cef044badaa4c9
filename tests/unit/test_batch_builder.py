"""Messages in, rows and progress out: the batch builder without a broker or a database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from confluent_kafka import KafkaError

from heartbeat_platform.domain.alerts import AlertManager
from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.storage.progress import KafkaLog, PartitionProgress
from heartbeat_platform.streaming.batch_builder import BatchBuilder, Cursor

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@dataclass
class Message:
    partition_: int
    offset_: int
    value_: bytes | None
    error_: KafkaError | None = None
    key_: bytes | None = b"CUST_00001"
    leader_epoch_: int | None = None

    def error(self):
        return self.error_

    def leader_epoch(self):
        return self.leader_epoch_

    def partition(self):
        return self.partition_

    def offset(self):
        return self.offset_

    def key(self):
        return self.key_

    def value(self):
        return self.value_


def reading(bpm: int, when: datetime = NOW, customer: str = "CUST_00001") -> bytes:
    return orjson.dumps({"customer_id": customer, "heart_rate": bpm,
                         "timestamp": when.isoformat()})


def builder(max_bytes: int = 1_048_576) -> BatchBuilder:
    return BatchBuilder(AlertManager(banner_limit=0), RetentionPolicy(), max_bytes)


def test_each_message_lands_in_exactly_one_list_and_progress_moves() -> None:
    cursors = {0: Cursor(PartitionProgress(7, 10), 10, [KafkaLog(7, "A", 0)])}
    messages = [
        Message(0, 9, reading(70)),  # behind the cursor: already written
        Message(0, 10, reading(70)),
        Message(0, 11, reading(20)),
        Message(0, 12, b"not json"),
        Message(0, 13, reading(301)),
        Message(1, 0, reading(70)),  # a partition not assigned (revoked meanwhile)
    ]
    built = builder().build(messages, cursors, NOW)
    batch = built.batch
    assert [r[5] for r in batch.records] == [10]
    assert [(a[3], a[7]) for a in batch.anomalies] == [("BRADYCARDIA", 11), ("INVALID", 13)]
    assert [d[2] for d in batch.dead_letters] == [12]
    assert [m.kafka_offset for m in batch.metrics] == [11, 13]
    assert built.counts["anomalies_bradycardia"] == 1 and built.counts["anomalies_invalid"] == 1
    assert {r[3] for r in batch.records} == {7}
    assert batch.progress == {0: (PartitionProgress(7, 10), PartitionProgress(7, 14))}
    assert cursors[0].stored == PartitionProgress(7, 14) and cursors[0].next_offset == 14
    assert batch.raw((0, 12)) == (b"CUST_00001", b"not json")


def test_a_message_over_the_size_limit_is_a_dead_letter_keeping_its_first_bytes() -> None:
    cursors = {0: Cursor(None, 0, [KafkaLog(1, "A", 0)])}
    big = reading(70) + b" " * 5_000
    built = builder(max_bytes=2_000).build([Message(0, 0, big)], cursors, NOW)
    (dead,) = built.batch.dead_letters
    assert len(dead[4]) == 1_024 and dead[4] == big[:1_024]
    assert "5" in dead[5] and "2000" in dead[5] and "HEARTBEAT_MAX_MESSAGE_BYTES" in dead[5]
    assert built.batch.progress == {0: (None, PartitionProgress(1, 1))}


def test_offsets_past_a_truncation_take_the_new_epoch() -> None:
    logs = [KafkaLog(1, "A", 0), KafkaLog(4, "A", 101)]
    cursors = {0: Cursor(PartitionProgress(1, 99), 99, logs)}
    built = builder().build([Message(0, o, reading(70 + o - 99)) for o in (99, 100, 101, 102)],
                            cursors, NOW)
    assert [(r[3], r[5]) for r in built.batch.records] == [(1, 99), (1, 100), (4, 101), (4, 102)]
    assert built.batch.progress[0][1] == PartitionProgress(4, 103)


def test_progress_keeps_the_leader_epoch_of_the_partitions_last_message() -> None:
    """A later seek validates the stored offset with it (KIP-320)."""
    cursors = {0: Cursor(PartitionProgress(1, 10), 10, [KafkaLog(1, "A", 0)]),
               1: Cursor(PartitionProgress(1, 0), 0, [KafkaLog(1, "A", 0)])}
    built = builder().build([Message(0, 10, reading(70), leader_epoch_=3),
                             Message(0, 11, b"not json", leader_epoch_=4),
                             Message(1, 0, reading(71), leader_epoch_=None)], cursors, NOW)
    assert built.batch.progress[0][1] == PartitionProgress(1, 12, leader_epoch=4)
    assert built.batch.progress[1][1] == PartitionProgress(1, 1, leader_epoch=None)


def test_out_of_range_is_reported_for_assigned_partitions_even_before_a_first_batch() -> None:
    cursors = {0: Cursor(None, 0, [KafkaLog(1, "A", 0)])}
    error = KafkaError(KafkaError._AUTO_OFFSET_RESET)
    built = builder().build([Message(0, -1, None, error), Message(5, -1, None, error)],
                            cursors, NOW)
    assert built.out_of_range == {0}  # partition 5 is not ours
    assert built.resets == {0: error.str()}  # its text, for a divergence point in it
    assert not built.batch.progress


def test_other_client_errors_are_handed_back_to_log() -> None:
    cursors = {0: Cursor(None, 0, [KafkaLog(1, "A", 0)])}
    eof = KafkaError(KafkaError._PARTITION_EOF)
    broken = KafkaError(KafkaError._TRANSPORT)
    built = builder().build([Message(0, 0, None, eof), Message(0, 0, None, broken)],
                            cursors, NOW)
    assert [e.code() for e in built.errors] == [KafkaError._TRANSPORT]
