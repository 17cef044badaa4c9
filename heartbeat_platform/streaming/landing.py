"""Batches into PostgreSQL: hand a built batch to the writer's thread, and account for it
once it committed.

At most one batch is in flight (`inflight`). The batches built and not committed yet are
kept, so that when the database goes away the cursors go back to where the table stands
and nothing fetched is passed over. No Kafka client here: what the client must do next
(seek back, commit offsets) is left to the loop. A database error that waiting can fix
is raised as `DatabaseUnavailable`; this step never waits for the database itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import psycopg

from heartbeat_platform.domain.alerts import PipelineStats
from heartbeat_platform.storage import db_errors
from heartbeat_platform.storage.progress import ProgressMove, StaleProgress
from heartbeat_platform.storage.writer import Batch, BatchWriter, WriteResult
from heartbeat_platform.streaming.batch_builder import BuiltBatch
from heartbeat_platform.streaming.cursors import Cursors
from heartbeat_platform.streaming.inflight import InflightWrite
from heartbeat_platform.streaming.offset_commits import OffsetCommitPolicy
from heartbeat_platform.streaming.outage import DatabaseUnavailable, needs_database, retry_later

log = logging.getLogger(__name__)

BatchObserver = Callable[[Batch, WriteResult, float], None]  # batch, result, seconds written


class Landing:
    def __init__(
        self, writer: BatchWriter, cursors: Cursors, stats_every: int, consumer_name: str,
        observer: BatchObserver,
        on_batch: Callable[[WriteResult, PipelineStats], None] | None = None,
    ):
        self.cursors = cursors
        self.inflight = InflightWrite(writer, stats_every, consumer_name)
        self.offsets = OffsetCommitPolicy()  # what PostgreSQL holds, to tell Kafka
        self.last_reading_at: datetime | None = None  # event time of the last row committed
        self._observer = observer
        self._on_batch = on_batch
        self._unsettled: list[dict[int, ProgressMove]] = []  # built, not committed yet

    def take(self, built: BuiltBatch) -> bool:
        """Write `built` once the batch before it committed. False when another consumer
        moved a partition on: the cursors are back at the stored progress (seek there)."""
        batch = built.batch
        if not batch.progress:
            return True
        self._unsettled.append(batch.progress)
        batch.encode()  # here, while the writer thread still waits on PostgreSQL (see Batch)
        if not self.settle():
            return False
        self.inflight.submit(batch, built.counts)
        return True

    def settle(self) -> bool:
        """Wait for the in-flight batch; True when it committed (or none was in flight).

        False when another consumer moved a partition on: every cursor is back at the
        stored progress. Raises DatabaseUnavailable for what waiting can fix; errors no
        wait can fix (missing schema or rights) end the consumer.
        """
        messages = self.inflight.messages
        try:
            done = self.inflight.wait()
        except StaleProgress as exc:
            log.warning("%s; re-reading from the stored progress", exc)
            with needs_database("reload progress"):
                self.cursors.reload(list(self.cursors))
            self._unsettled.clear()
            return False
        except psycopg.Error as exc:
            if not retry_later(exc):
                log.error("batch of %d cannot be written and no retry can fix it: %s",
                          messages, db_errors.describe(exc))
                raise
            raise DatabaseUnavailable(f"batch of {messages} rolled back", exc) from exc
        if done is None:
            return True
        batch, result = done
        self._unsettled = [moves for moves in self._unsettled if moves is not batch.progress]
        self._observer(batch, result, self.inflight.last_write_seconds)
        last_rows = [rows[-1][1] for rows in (batch.records, batch.anomalies) if rows]
        if last_rows:
            self.last_reading_at = max(last_rows)
        for partition, (_, after) in batch.progress.items():
            self.offsets.stored(partition, after.next_offset)
        if self._on_batch:
            self._on_batch(result, self.inflight.committed)
        return True

    def abandon(self) -> None:
        """The database went away: put the cursors back to before every batch built and
        not committed (nothing is in flight: `settle` raised)."""
        for moves in reversed(self._unsettled):  # the oldest batch's "before" wins
            self.cursors.revert(moves)
        self._unsettled.clear()

    def close(self) -> None:
        self.inflight.close()
