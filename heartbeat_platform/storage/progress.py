"""Where each consumer group stands in each log, and which logs there are.

`consumer_progress` holds the next offset to read per (group, topic, partition), moved in
the same transaction as the rows it covers; `kafka_logs` (sql/007) holds every log a
consumer has read, each under an epoch no other log ever gets. Everything that reads or
moves progress (the consumer and its writer, lag, the benchmark, the demo) goes through
this module, so the compare-and-set and the epoch rules live in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

from heartbeat_platform.storage.database import connect, one_row


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """Where a partition stands: the epoch of its log and the next offset to read, and
    Kafka's leader epoch of the message before it (KIP-320; None: not known), for the
    client to validate the offset with (sql/014)."""

    log_epoch: int
    next_offset: int
    leader_epoch: int | None = None


@dataclass(frozen=True, slots=True)
class StoredProgress:
    progress: PartitionProgress
    topic_id: str | None  # the topic's id when it was stored; None: the broker gave none


@dataclass(frozen=True, slots=True)
class KafkaLog:
    """One log of a topic partition: its offsets from `start_offset` on are its messages."""

    log_epoch: int
    topic_id: str | None
    start_offset: int


class StaleProgress(RuntimeError):
    """Another consumer moved these partitions on; the transaction was rolled back."""

    def __init__(self, partitions: Iterable[int]):
        self.partitions = sorted(partitions)
        super().__init__(f"progress of partitions {self.partitions} moved on elsewhere")


ProgressMove = tuple[PartitionProgress | None, PartitionProgress]
"""(progress this consumer expects in the table, or None if never stored; progress after)"""

_ADVANCE = """
UPDATE consumer_progress
SET next_offset = %(next_offset)s, log_epoch = %(new_epoch)s, updated_at = now(),
    topic_id = coalesce(%(topic_id)s, topic_id), leader_epoch = %(leader_epoch)s
WHERE consumer_group = %(group)s AND topic = %(topic)s AND kafka_partition = %(partition)s
  AND next_offset = %(expected_offset)s AND log_epoch = %(expected_epoch)s
"""

_CLAIM = """
INSERT INTO consumer_progress
    (consumer_group, topic, kafka_partition, log_epoch, next_offset, topic_id, leader_epoch)
VALUES (%(group)s, %(topic)s, %(partition)s, %(new_epoch)s, %(next_offset)s, %(topic_id)s,
        %(leader_epoch)s)
ON CONFLICT DO NOTHING
"""


class ProgressStore:
    """Progress of one (consumer group, topic); every method runs on the caller's connection."""

    def __init__(self, group: str, topic: str):
        self.group = group
        self.topic = topic

    def load(
        self, conn: psycopg.Connection, partitions: Iterable[int]
    ) -> dict[int, StoredProgress]:
        """Stored progress of these partitions; missing ones were never consumed."""
        rows = conn.execute(
            "SELECT kafka_partition, log_epoch, next_offset, topic_id, leader_epoch "
            "FROM consumer_progress "
            "WHERE consumer_group = %s AND topic = %s AND kafka_partition = ANY(%s)",
            (self.group, self.topic, list(partitions)),
        ).fetchall()
        return {p: StoredProgress(PartitionProgress(e, o, le), tid)
                for p, e, o, tid, le in rows}

    def advance(
        self, conn: psycopg.Connection, moves: dict[int, ProgressMove], topic_id: str | None
    ) -> None:
        """Move each partition from what this consumer expects to its new place (a
        compare-and-set); raises StaleProgress, for the caller to roll back, when another
        consumer got there first."""
        stale = []
        for partition, (expected, new) in moves.items():
            params = {
                "group": self.group, "topic": self.topic, "partition": partition,
                "next_offset": new.next_offset, "new_epoch": new.log_epoch, "topic_id": topic_id,
                "leader_epoch": new.leader_epoch,
            }
            if expected is None:
                moved = conn.execute(_CLAIM, params).rowcount
            else:
                params["expected_offset"] = expected.next_offset
                params["expected_epoch"] = expected.log_epoch
                moved = conn.execute(_ADVANCE, params).rowcount
            if moved != 1:
                stale.append(partition)
        if stale:
            raise StaleProgress(stale)

    def logs(
        self, conn: psycopg.Connection, partitions: Iterable[int]
    ) -> dict[int, list[KafkaLog]]:
        """The known logs of these partitions, oldest first."""
        rows = conn.execute(
            "SELECT kafka_partition, log_epoch, topic_id, start_offset FROM kafka_logs "
            "WHERE topic = %s AND kafka_partition = ANY(%s) ORDER BY created_at, log_epoch",
            (self.topic, list(partitions)),
        ).fetchall()
        found: dict[int, list[KafkaLog]] = {}
        for partition, epoch, topic_id, start in rows:
            found.setdefault(partition, []).append(KafkaLog(epoch, topic_id, start))
        return found

    def register_log(
        self, conn: psycopg.Connection, partition: int, topic_id: str | None, start_offset: int,
        reason: str,
    ) -> KafkaLog:
        """Record a log this consumer found, under an epoch never used before."""
        (epoch,) = one_row(
            conn.execute(
                "INSERT INTO kafka_logs (topic, kafka_partition, topic_id, start_offset, reason) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING log_epoch",
                (self.topic, partition, topic_id, start_offset, reason),
            )
        )
        return KafkaLog(epoch, topic_id, start_offset)


    def current_or_first_log(
        self, conn: psycopg.Connection, partition: int, topic_id: str | None
    ) -> list[KafkaLog]:
        """The partition's current logs, registering its first when there is none; once,
        even when consumers of several groups meet a new log at the same moment."""
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s), %s)", (self.topic, partition))
        logs = current_logs(self.logs(conn, [partition]).get(partition, []), topic_id)
        return logs or [self.register_log(
            conn, partition, topic_id, 0, "first read of this topic partition's log"
        )]


def current_logs(logs: list[KafkaLog], topic_id: str | None) -> list[KafkaLog]:
    """The logs whose offsets the topic's current log shares, oldest first.

    With a topic id, those registered under it. Without one (a broker that gives none, or
    it did not answer), the newest log and the truncations after it: nothing better is known.
    """
    if topic_id is not None:
        return [log for log in logs if log.topic_id == topic_id]
    if not logs:
        return []
    start = max(i for i, log in enumerate(logs) if log.start_offset == 0 or i == 0)
    return logs[start:]


def epoch_at(logs: list[KafkaLog], offset: int) -> tuple[int, int | None]:
    """The epoch of the message at `offset` in these logs (oldest first), and the offset
    where the next log takes over (None: this one goes on)."""
    chosen, until = logs[0], None
    for i, log in enumerate(logs):
        if log.start_offset <= offset:
            chosen = log
            until = min(
                (later.start_offset for later in logs[i + 1:] if later.start_offset > offset),
                default=None,
            )
    return chosen.log_epoch, until


def load_progress(
    database_url: str, group: str, topic: str, partitions: Iterable[int]
) -> dict[int, PartitionProgress]:
    """Stored progress of a group's partitions, on a short connection (lag, bench, demo)."""
    with connect(database_url, autocommit=True) as conn:
        stored = ProgressStore(group, topic).load(conn, partitions)
    return {p: s.progress for p, s in stored.items()}


def load_all_progress(database_url: str, group: str, topic: str) -> dict[int, PartitionProgress]:
    """Stored progress of every partition the group has consumed."""
    with connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT kafka_partition, log_epoch, next_offset FROM consumer_progress "
            "WHERE consumer_group = %s AND topic = %s",
            (group, topic),
        ).fetchall()
    return {p: PartitionProgress(e, o) for p, e, o in rows}
