"""Consumer lag per partition: the log's end minus the progress stored in PostgreSQL.

The log end comes from a short-lived consumer's cached watermarks after a poll, not from a
broker watermark query: the embedded broker under-reports the latter after batched
writes (README, "The embedded broker: what it keeps"), while the watermarks carried by
fetch responses are right on both it and real Kafka.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from heartbeat_platform.storage.progress import load_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    log_end_offset: int
    next_offset: int  # what the group has stored in PostgreSQL (0: never consumed)

    @property
    def lag(self) -> int:
        return max(0, self.log_end_offset - self.next_offset)


def log_end_offsets(
    bootstrap_servers: str, topic: str, timeout: float = 5.0, kafka_overrides: dict | None = None
) -> dict[int, int]:
    """High watermark per partition, read from fetch responses of a throwaway consumer.

    A partition that answers neither way in `timeout` is left out (and logged), not fatal:
    the next probe asks again.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"heartbeat-lag-probe-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            **(kafka_overrides or {}),
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        partitions = sorted(metadata.topics[topic].partitions)
        # A fetch at the end returns no message but carries the high watermark.
        consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
        ends: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(ends) < len(partitions):
            consumer.poll(0.2)
            for p in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                if high >= 0:
                    ends[p] = high
        for p in partitions:  # partitions that never answered: ask the broker
            if p not in ends:
                try:
                    ends[p] = consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=timeout
                    )[1]
                except KafkaException as exc:
                    log.warning("log end of %s[%d] not known: %s", topic, p, exc)
        return ends
    finally:
        consumer.close()


def consumer_lag(
    bootstrap_servers: str, database_url: str, topic: str, group_id: str,
    kafka_overrides: dict | None = None,
) -> list[PartitionLag]:
    ends = log_end_offsets(bootstrap_servers, topic, kafka_overrides=kafka_overrides)
    stored = load_progress(database_url, group_id, topic, ends)
    return [
        PartitionLag(p, end, stored[p].next_offset if p in stored else 0)
        for p, end in sorted(ends.items())
    ]
