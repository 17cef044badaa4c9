"""The assigned partitions' cursors, and the progress bookkeeping behind them.

A cursor says where a partition's next message is and what the table is expected to hold
(`batch_builder.Cursor`). This module opens cursors from the stored progress, rewinds
them, and moves progress without rows (a new log, messages retention deleted). It talks
to PostgreSQL through the writer and to nobody else: where the client must seek is
returned to the caller (`position`), which alone talks to the Kafka client. Database
errors are raised as they come; the caller decides whether to wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING

from heartbeat_platform.storage.progress import (
    PartitionProgress,
    ProgressMove,
    StaleProgress,
    current_logs,
)
from heartbeat_platform.storage.writer import BatchWriter
from heartbeat_platform.streaming.batch_builder import Cursor
from heartbeat_platform.streaming.log_decisions import (
    Continue,
    NewLog,
    Observation,
    decide,
    topic_id_to_decide,
)

log = logging.getLogger(__name__)

TOPIC_ID_RETRY_WAITS_S = (1.0, 2.0, 4.0)  # the id decides a partition's log: worth 3 retries


def position(cursor: Cursor) -> int:
    """Where the client reads this partition next: the cursor, or the log's start when
    nothing was ever stored."""
    return cursor.next_offset if cursor.stored else OFFSET_BEGINNING


class Cursors(dict[int, Cursor]):
    """partition -> cursor of the assigned partitions, with their bookkeeping."""

    def __init__(
        self, writer: BatchWriter, topic: str, topic_id: Callable[[], str | None],
        wait: Callable[[float], bool],
    ):
        super().__init__()
        self.writer = writer
        self.topic = topic
        self.topic_id = topic_id  # asks the broker for the topic's id now
        self._wait = wait  # sleeps; True when stopping
        self.lost_at_source: dict[int, int] = {}  # per partition: lost before consumed
        self.truncated_stored: dict[int, int] = {}  # per partition: stored, then truncated

    def open(self, partitions: list[int]) -> dict[int, Cursor]:
        """Cursors at the stored progress, each with the logs its offsets belong to; a
        partition whose topic was created again starts a new log here (its new log can
        already be longer than the stored offset, which no log-end check would notice).
        Adds them to the assigned cursors and returns them."""
        stored = self.writer.load(partitions)
        known = self.writer.logs(partitions)
        under_id = any(s.topic_id for s in stored.values()) or any(
            found.topic_id for logs in known.values() for found in logs
        )
        current_id = topic_id_to_decide(self.topic_id, under_id, TOPIC_ID_RETRY_WAITS_S,
                                        self._wait)
        if current_id is None and under_id:
            log.warning("the id of topic %s is not known: a topic created again since the "
                        "progress was stored is not recognised until the id is", self.topic)
        self.writer.topic_id = current_id
        opened = {}
        for partition in partitions:
            found = stored.get(partition)
            every = known.get(partition, [])
            if found is None:
                known_id, logs = current_id, current_logs(every, current_id)
            else:  # the id the stored progress is known under: its own, or its log's
                its_log = [lg for lg in every if lg.log_epoch == found.progress.log_epoch]
                known_id = found.topic_id or next((lg.topic_id for lg in its_log), None)
                if known_id is None:  # go on in that log until evidence says otherwise
                    logs = current_logs([lg for lg in every if lg.topic_id is None], None)
                    logs = logs or its_log
                else:
                    logs = current_logs(every, current_id)
            cursor = Cursor(found.progress if found else None,
                            found.progress.next_offset if found else 0, logs, known_id)
            action = Continue() if found is None else decide(
                Observation(found.progress.next_offset, known_id, current_id)
            )
            if isinstance(action, NewLog):
                self.new_log(partition, cursor, action, current_id)
            elif not cursor.logs:
                cursor.logs = self.writer.current_or_first_log(partition, current_id)
            opened[partition] = cursor
        self.update(opened)
        return opened

    def reload(self, partitions: Iterable[int]) -> None:
        """Back to the stored progress (after a rollback, or another consumer's write)."""
        partitions = [p for p in partitions if p in self]
        stored = self.writer.load_progress(partitions)
        for partition in partitions:
            progress = stored.get(partition)
            cursor = self[partition]
            cursor.stored = progress
            cursor.next_offset = progress.next_offset if progress else 0

    def revert(self, moves: dict[int, ProgressMove]) -> None:
        """Undo what building a batch did to the cursors (it never committed); without a
        database, so the client can be sought back at once."""
        for partition, (before, _) in moves.items():
            cursor = self.get(partition)
            if cursor is not None:
                cursor.stored = before
                cursor.next_offset = before.next_offset if before else 0

    def new_log(
        self, partition: int, cursor: Cursor, action: NewLog, current_id: str | None
    ) -> None:
        """Register the new log and move the cursor and the stored progress into it (or to
        what another consumer of the group stored first)."""
        if current_id is not None:
            self.writer.topic_id = current_id
        registered = self.writer.register_log(partition, current_id, action.start_offset,
                                              action.reason)
        known = self.writer.logs([partition]).get(partition, [registered])
        cursor.logs = current_logs(known, current_id) or [registered]
        cursor.topic_id = current_id
        start = action.read_from
        log.warning(
            "partition %d: %s. Reading it as log epoch %d from offset %d; rows of the "
            "previous log keep their epoch.",
            partition, action.reason, registered.log_epoch, start,
        )
        new = PartitionProgress(registered.log_epoch, start)
        if cursor.stored is None or self.move_progress(partition, cursor, new):
            cursor.next_offset = start
            self._count_truncation(partition, action)

    def _count_truncation(self, partition: int, action: NewLog) -> None:
        """What an unclean leader election took from the broker's log, counted once (by the
        consumer whose move of the progress won)."""
        if action.stored_lost:
            self.truncated_stored[partition] = (
                self.truncated_stored.get(partition, 0) + action.stored_lost)
        if action.unread_lost:
            log.error("partition %d: %d readings are lost at the source: the broker lost "
                      "them in an unclean leader election before they were consumed",
                      partition, action.unread_lost)
            self.lost_at_source[partition] = (
                self.lost_at_source.get(partition, 0) + action.unread_lost)

    def skip_deleted(self, partition: int, cursor: Cursor, offset: int, lost: int) -> int:
        """Read on from `offset`; retention deleted the `lost` messages before it that were
        never stored: say so and store the progress past them (or take what another
        consumer stored first). Returns where the client must read next."""
        if lost:
            log.error(
                "partition %d: messages at offsets %d..%d were deleted by the broker before "
                "they were consumed (retention); %d readings are lost at the source. "
                "Resuming at offset %d.", partition, offset - lost, offset - 1, lost, offset,
            )
            new = PartitionProgress(cursor.epoch_at(offset)[0], offset)
            if not self.move_progress(partition, cursor, new):
                return position(cursor)
            self.lost_at_source[partition] = self.lost_at_source.get(partition, 0) + lost
        cursor.next_offset = offset
        return offset

    def move_progress(self, partition: int, cursor: Cursor, new: PartitionProgress) -> bool:
        """Store `new` as the partition's progress; False (and the cursor at the stored
        progress) when another consumer of the group moved it first."""
        try:
            self.writer.move_progress(partition, cursor.stored, new)
        except StaleProgress:
            stored = self.writer.load_progress([partition]).get(partition)
            cursor.stored = stored
            cursor.next_offset = stored.next_offset if stored else 0
            return False
        cursor.stored = new
        return True
