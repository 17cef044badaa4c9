"""Where each assigned partition is read from, and which ones wait paused before reading.

A partition is read from its cursor (`cursors.position`). Two kinds wait paused:
- one assigned while the database was away (`unopened`): its progress is not known, so it
  is read from nowhere until the database is back and its cursor opened;
- one assigned at a stored leader epoch (`unvalidated`): an assign does not validate an
  offset with its leader epoch, a seek does (KIP-320), and only once the client fetches
  the partition. That seek is how a log an unclean leader election truncated below the
  stored offset is found, with where it diverged (tests/integration/test_unclean_election.py).
The client is the loop's: it is handed in (`Assignment`), never kept.
"""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from heartbeat_platform.streaming.assignment import Assignment
from heartbeat_platform.streaming.batch_builder import Cursor
from heartbeat_platform.streaming.cursors import Cursors, position


class Positions:
    def __init__(self, cursors: Cursors, topic: str):
        self.cursors = cursors
        self.topic = topic
        self.unopened: set[int] = set()  # assigned while the database was away: paused
        self.unvalidated: set[int] = set()  # assigned at a stored leader epoch: paused

    def offsets(self) -> dict[int, int]:
        """Where each assigned partition is read next (a partition not opened yet: from the
        log's start, paused until its progress is known)."""
        offsets = {p: position(cursor) for p, cursor in self.cursors.items()}
        return offsets | dict.fromkeys(self.unopened, OFFSET_BEGINNING)

    def epochs(self) -> dict[int, int]:
        """The leader epoch of the message before each cursor's offset, where it is known
        (stored with the progress, sql/014): a seek with it lets the client find a log
        truncated below the offset (an unclean leader election), and where it diverged."""
        return {p: c.stored.leader_epoch for p, c in self.cursors.items()
                if c.stored is not None and c.stored.leader_epoch is not None
                and c.stored.next_offset == c.next_offset}

    def assigned(
        self, partitions: list[TopicPartition], opened: dict[int, Cursor] | None
    ) -> None:
        """Give each partition the group assigns the offset it is read from: its cursor's;
        with no cursors (`opened` None: the database is away) the log's start, and it
        waits unopened."""
        for tp in partitions:
            tp.offset = position(opened[tp.partition]) if opened else OFFSET_BEGINNING
        if opened is None:
            self.unopened.update(tp.partition for tp in partitions)

    def hold_for_validation(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The partitions just assigned at a stored leader epoch: to be paused by the caller
        until `validate` has sought them with it."""
        epochs = self.epochs()
        held = [tp for tp in partitions if tp.partition in epochs]
        self.unvalidated.update(tp.partition for tp in held)
        return held

    def seek_all(self, kafka: Assignment, paused: bool) -> None:
        """Every partition back to its cursor, with the stored leader epochs (validated by
        the client); `paused`: keep them paused."""
        kafka.seek({p: position(c) for p, c in self.cursors.items()}, paused=paused,
                   epochs=self.epochs())

    def recovered(self, kafka: Assignment, paused: bool) -> None:
        """The database is back and the unopened partitions have cursors: every partition
        is sought to its cursor with its stored leader epoch, so none waits any more."""
        self.unopened.clear()
        self.seek_all(kafka, paused)
        self.unvalidated.clear()

    def validate(self, kafka: Assignment) -> None:
        """Seek each partition assigned at a stored leader epoch with it, and read it."""
        if not self.unvalidated:
            return
        epochs = self.epochs()
        for partition in sorted(self.unvalidated):
            cursor, epoch = self.cursors.get(partition), epochs.get(partition)
            if cursor is not None and epoch is not None and not kafka.validate(
                    partition, cursor.next_offset, epoch):
                continue  # not fetching yet: next round
            self.unvalidated.discard(partition)
            kafka.resume([TopicPartition(self.topic, partition)])

    def forget(self, partition: int) -> None:
        """The partition was revoked or lost."""
        self.unopened.discard(partition)
        self.unvalidated.discard(partition)
