"""One batch written on its own thread while the consumer builds the next.

PostgreSQL and Python then work at the same time instead of taking turns. At most one
batch is in flight: the consumer waits for it before handing over the next, and before
anything that must see the database as it will be (a rebalance, a log check, a stop). The
stats go with it: those of the committed batches, and those the in-flight one will make
when it commits (its stats snapshot is written in its own transaction).
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import Future, ThreadPoolExecutor

from heartbeat_platform.domain.alerts import MetricRow, PipelineStats
from heartbeat_platform.storage.writer import Batch, BatchWriter, WriteResult


class InflightWrite:
    def __init__(self, writer: BatchWriter, stats_every: int, consumer_name: str):
        self.writer = writer
        self.committed = PipelineStats()
        self.last_commit_at: float | None = None
        self.last_write_seconds = 0.0  # the last committed batch's time in PostgreSQL
        self._stats_every = stats_every
        self._labels = {"consumer": consumer_name}
        self._projected = self.committed  # the stats once the in-flight batch commits
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="heartbeat-writer")
        self._inflight: tuple[Future, Batch, PipelineStats] | None = None

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    @property
    def messages(self) -> int:
        """Messages in the batch in flight (0: none)."""
        return self._inflight[1].message_count if self._inflight else 0

    def submit(self, batch: Batch, counts: dict[str, int]) -> None:
        """Start writing `batch` (call `wait` first: one batch in flight at a time)."""
        if self._inflight is not None:
            raise RuntimeError("a batch is still in flight: wait for it first")
        pending = copy.copy(self._projected)

        def snapshot(result: WriteResult) -> list[MetricRow]:
            pending.record_batch(
                messages_consumed=batch.message_count,
                records_written=result.records,
                duplicates_dropped=result.duplicates,
                dead_letters=len(batch.dead_letters) + result.refused,
                alerts_triggered=result.metrics,
                **counts,
            )
            if pending.should_flush(self._stats_every):
                return pending.flush_stats(self._labels)
            return []

        self._projected = pending
        self._inflight = (self._thread.submit(self._write, batch, snapshot), batch, pending)

    def _write(self, batch: Batch, snapshot) -> tuple[WriteResult, float]:
        started = time.perf_counter()
        result = self.writer.write(batch, snapshot)
        return result, time.perf_counter() - started

    def wait(self) -> tuple[Batch, WriteResult] | None:
        """The in-flight batch and its result once committed; None when none was in flight.

        Raises what the write raised; the stats then stay those of the committed batches.
        """
        if self._inflight is None:
            return None
        future, batch, pending = self._inflight
        self._inflight = None
        try:
            result, self.last_write_seconds = future.result()
        except BaseException:
            self._projected = self.committed
            raise
        self.committed = pending
        self.last_commit_at = time.monotonic()
        return batch, result

    def close(self) -> None:
        self._thread.shutdown()
        self.writer.close()
