"""Acting on what the client says about each partition's log (`log_decisions`).

`LogWatch` says which partitions need a decision; `LogChecks.check` asks the broker for
their log start and end (through the function it is given) and applies the decision to
the cursors and the stored progress, returning where the client must read next. No client
here: the loop does the seeking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from confluent_kafka import KafkaException

from heartbeat_platform.streaming.batch_builder import Cursor
from heartbeat_platform.streaming.cursors import Cursors, position
from heartbeat_platform.streaming.log_decisions import (
    AskBroker,
    Continue,
    LogWatch,
    Observation,
    Resume,
    decide,
)
from heartbeat_platform.streaming.outage import needs_database
from heartbeat_platform.streaming.quiet_log import QuietLog

log = logging.getLogger(__name__)

UNKNOWN_END = -1  # no fetch watermark yet


@dataclass(frozen=True)
class Suspect:
    """A partition whose log needs the broker's answer before reading on."""

    partition: int
    cached_end: int  # the fetch watermark that made it suspect
    seen: Observation


class LogChecks:
    def __init__(self, cursors: Cursors):
        self.cursors = cursors
        self.watch = LogWatch()
        self._quiet = QuietLog(log)

    def survey(self, cached_end: Callable[[int], int]) -> tuple[dict[int, int], list[Suspect]]:
        """Per assigned partition the lag (log end minus stored progress), and the
        partitions to ask the broker about. `cached_end`: the client's cached watermark."""
        lag, suspects = {}, []
        for partition, cursor in self.cursors.items():
            high = cached_end(partition)
            stored = cursor.stored.next_offset if cursor.stored else None
            if high >= 0:
                lag[partition] = max(0, high - (stored or 0))
            seen = self.watch.observe(partition, stored, cursor.topic_id, high)
            if not isinstance(decide(seen), Continue):
                suspects.append(Suspect(partition, high, seen))
        return lag, suspects

    def first_reads(self, opened: dict[int, Cursor]) -> list[Suspect]:
        """The partitions the group never stored progress for: the broker is asked where
        their log starts before they are read, so what retention deleted before the
        group's first read is counted lost, not passed over in silence."""
        return [
            Suspect(partition, UNKNOWN_END, Observation(None, cursor.topic_id, cursor.topic_id,
                                                        first_read=True))
            for partition, cursor in opened.items() if cursor.stored is None
        ]

    def check(
        self, suspect: Suspect, listed_offsets: Callable[[int], tuple[int, int]],
        topic_id: Callable[[], str | None] | None = None,
    ) -> int | None:
        """Ask the broker where the suspect partition's log starts and ends, and act on it:
        where to read next, or None (nothing to do, or no answer yet: asked next round).
        `topic_id` asks the topic's id now (None: the one the suspect was seen under).
        Raises `DatabaseUnavailable` when the decision could not be stored."""
        try:
            listed = listed_offsets(suspect.partition)
        except KafkaException as exc:
            self.retry(suspect.partition)
            self._quiet.warning(("list", suspect.partition), "partition %d: log start/end "
                                "not known yet (%s); retrying", suspect.partition, exc)
            return None
        with needs_database("log check"):
            return self.act(suspect, listed, topic_id() if topic_id else suspect.seen.topic_id)

    def act(
        self, suspect: Suspect, listed: tuple[int, int], topic_id: str | None
    ) -> int | None:
        """Decide with the broker's answer and apply it; where the client must read next
        (None: nothing to do). A database error leaves the partition suspect, to be
        decided again on a later round."""
        partition = suspect.partition
        cursor = self.cursors.get(partition)
        if cursor is None:  # revoked meanwhile
            return None
        action = decide(replace(
            suspect.seen, next_offset=cursor.stored.next_offset if cursor.stored else None,
            stored_topic_id=cursor.topic_id, topic_id=topic_id, listed=listed,
        ))
        if isinstance(action, AskBroker | Continue):  # cannot happen with `listed`
            return None
        try:
            if isinstance(action, Resume):
                offset = self.cursors.skip_deleted(partition, cursor, action.offset, action.lost)
            else:
                self.cursors.new_log(partition, cursor, action, topic_id)
                offset = position(cursor)
        except BaseException:
            self.watch.retry(partition)
            raise
        self.watch.decided(partition, suspect.cached_end)
        return offset

    def retry(self, partition: int) -> None:
        """The broker did not answer: look again on the next round."""
        self.watch.retry(partition)
