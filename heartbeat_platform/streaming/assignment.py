"""The Kafka client's side of the consumer: its assignment, positions, pauses and commits.

Eager assignment (`assign`/`unassign` of everything) and incremental assignment
(cooperative-sticky, KIP-848: `incremental_assign`/`incremental_unassign` of what moved)
differ only here. A seek to a partition that is not fetching yet fails in librdkafka; such
a partition is assigned again at the offset instead, and paused again when it must be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from heartbeat_platform.streaming.quiet_log import QuietLog

log = logging.getLogger(__name__)

UNKNOWN_WATERMARK = -1001
LIST_OFFSETS_TIMEOUT_S = 5.0


class Assignment:
    def __init__(
        self, client: Consumer, topic: str, incremental: bool,
        positions: Callable[[], dict[int, int]],
    ):
        """`positions`: where every assigned partition is to be read from (an eager
        re-assignment gives all of them)."""
        self.client = client
        self.topic = topic
        self.incremental = incremental
        self._positions = positions
        self._quiet = QuietLog(log)

    def _tps(
        self, offsets: dict[int, int], epochs: dict[int, int] | None = None
    ) -> list[TopicPartition]:
        epochs = epochs or {}
        return [self._tp(p, offset, epochs.get(p)) for p, offset in offsets.items()]

    def _tp(self, partition: int, offset: int, epoch: int | None) -> TopicPartition:
        if epoch is None or offset < 0:
            return TopicPartition(self.topic, partition, offset)
        return TopicPartition(self.topic, partition, offset, leader_epoch=epoch)

    def add(self, partitions: list[TopicPartition]) -> None:
        """Take the partitions the group gave (at the offsets they carry)."""
        if not self.incremental:
            self.client.assign(partitions)
        elif partitions:
            self.client.incremental_assign(partitions)

    def remove(self, partitions: list[TopicPartition]) -> None:
        if self.incremental:
            self.client.incremental_unassign(partitions)
        else:
            self.client.unassign()

    def seek(
        self, offsets: dict[int, int], paused: bool, epochs: dict[int, int] | None = None
    ) -> None:
        """Read each partition next from its offset; `paused`: keep them paused. A partition
        with a leader epoch in `epochs` (of the message before its offset) is validated by
        the client first (see `validate`); one assigned again instead is not."""
        failed = {}
        for tp in self._tps(offsets, epochs):
            try:
                self.client.seek(tp)
            except KafkaException:  # not fetching yet: assign it again at that offset
                failed[tp.partition] = tp.offset
        if not failed:
            return
        if self.incremental:
            moved = self._tps(failed)
            self.client.incremental_unassign([TopicPartition(self.topic, p) for p in failed])
            self.client.incremental_assign(moved)
        else:
            moved = self._tps(self._positions())
            self.client.assign(moved)
        if paused:
            self.client.pause(moved)

    def validate(self, partition: int, offset: int, epoch: int) -> bool:
        """Seek to `offset` with the leader epoch of the message before it (KIP-320): before
        fetching, librdkafka asks the leader where that epoch ends (OffsetForLeaderEpoch)
        and reports a log truncated below `offset` as an offset reset whose text gives the
        divergence point; a seek or an assign without an epoch skips that. False: the
        partition is not fetching yet (try again later)."""
        try:
            self.client.seek(self._tp(partition, offset, epoch))
        except KafkaException:
            return False
        return True

    def pause_all(self) -> None:
        self.client.pause(self.client.assignment())

    def resume(self, partitions: list[TopicPartition] | None = None) -> None:
        """Resume `partitions` (all assigned ones when None)."""
        self.client.resume(self.client.assignment() if partitions is None else partitions)

    def cached_end(self, partition: int) -> int:
        """The log end the latest fetch response carried (UNKNOWN_WATERMARK: none yet)."""
        try:
            return self.client.get_watermark_offsets(
                TopicPartition(self.topic, partition), cached=True
            )[1]
        except KafkaException:
            return UNKNOWN_WATERMARK

    def listed_offsets(self, partition: int) -> tuple[int, int]:
        """The log's start and end, asked of the broker now; raises KafkaException."""
        low, high = self.client.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=LIST_OFFSETS_TIMEOUT_S
        )
        return low, high

    def commit(self, offsets: dict[int, int], wait: bool) -> None:
        """Commit offsets to Kafka (for lag tools); `wait` for the broker's answer. A
        failure is logged, never raised: a lag commit must not stop ingestion (PostgreSQL
        holds the progress)."""
        if not offsets:
            return
        try:
            if wait:
                self.client.commit(offsets=self._tps(offsets), asynchronous=False)
            else:
                self.client.commit(offsets=self._tps(offsets), asynchronous=True)
        except Exception as exc:  # noqa: BLE001 - see above
            self._quiet.warning("commit", "could not commit offsets to Kafka: %s", exc)
