"""The batch consumer: Kafka -> validate/classify -> PostgreSQL, with an exactly-once effect.

Guarantees (what survives what):
- Progress lives in PostgreSQL (`consumer_progress`), written in the same transaction as
  the rows of the batch; on assignment the consumer seeks to it. A kill -9 at any instant
  therefore neither loses nor doubles a reading. Kafka's committed offsets are updated
  after the database commit, for lag tools only.
- A batch is written whole or not at all. When the database goes away the batch is
  abandoned, the partitions are rewound to the stored progress and paused, and the
  consumer retries with backoff until the database is back; it never exits for that.
- A rebalance can only happen inside `consume()`, between batches, so nothing is in
  flight when partitions are revoked. A consumer that lost a partition without noticing
  cannot overwrite another's work: progress moves by compare-and-set (see the writer).
- A stored offset the broker's log no longer has is never skipped silently: below the
  log start (retention deleted unread messages) is logged as an error and consumption
  resumes at the log start; beyond the log end (the log was reset, e.g. the memory-only
  embedded broker restarted) starts a new log epoch from the beginning of the new log.
  So does a topic whose id differs from the one stored with the progress (it was created
  again), which also catches a new log that already grew past the stored offset.
- A reading whose time is outside the admissible window (older than the raw retention, or
  further ahead than the allowed clock skew) is a dead letter with the reason; the day
  partitions of the window are ensured at start and every hour, so a reading never
  fails for lack of one.
"""

from __future__ import annotations

import copy
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from heartbeat_platform.domain.alerts import AlertManager, MetricRow, PipelineStats
from heartbeat_platform.domain.events import (
    HeartbeatClass,
    InvalidMessage,
    classify_heart_rate,
    validate_message,
)
from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.storage.writer import (
    Batch,
    BatchWriter,
    PartitionProgress,
    StaleProgress,
    WriteResult,
)
from heartbeat_platform.streaming.gc_tuning import fewer_gc_pauses
from heartbeat_platform.streaming.topics import topic_id

log = logging.getLogger(__name__)

_NORMAL = HeartbeatClass.NORMAL
_ANOMALY_STAT = {
    HeartbeatClass.BRADYCARDIA: "anomalies_bradycardia",
    HeartbeatClass.TACHYCARDIA: "anomalies_tachycardia",
    HeartbeatClass.INVALID: "anomalies_invalid",
}
_UNKNOWN_WATERMARK = -1001
_PARTITION_CHECK_EVERY_S = 3600.0


@dataclass
class ConsumerConfig:
    bootstrap_servers: str
    database_url: str
    topic: str
    group_id: str
    batch_size: int = 20_000
    max_wait_s: float = 0.1  # how long a partial batch waits: bounds end-to-end latency
    stats_every: int = 100
    session_timeout_ms: int = 6_000  # the embedded broker's group join waits half of this
    kafka_overrides: dict = field(default_factory=dict)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{threading.get_ident()}")


@dataclass
class ConsumerReport:
    stats: PipelineStats
    partitions_seen: set[int]
    seconds: float
    busy_seconds: float  # first message received -> last batch committed

    @property
    def rate(self) -> float:
        """Messages committed per second while there was work."""
        return self.stats.messages_consumed / self.busy_seconds if self.busy_seconds else 0.0

    def as_dict(self) -> dict:
        stats = self.stats
        return {
            "messages": stats.messages_consumed,
            "records": stats.records_written,
            "anomalies": stats.anomalies_bradycardia + stats.anomalies_tachycardia
            + stats.anomalies_invalid,
            "dead_letters": stats.dead_letters,
            "duplicates_dropped": stats.duplicates_dropped,
            "batches": stats.batches,
            "seconds": round(self.seconds, 3),
            "busy_seconds": round(self.busy_seconds, 3),
            "messages_per_s": round(self.rate, 1),
        }


class HeartbeatConsumer:
    def __init__(
        self,
        config: ConsumerConfig,
        alerts: AlertManager | None = None,
        on_batch: Callable[[WriteResult, PipelineStats], None] | None = None,
    ):
        self.config = config
        self.alerts = alerts or AlertManager()
        self.stats = PipelineStats()
        self.writer = BatchWriter(config.database_url, config.group_id, config.topic)
        self._on_batch = on_batch
        self._stop = threading.Event()
        self.assigned = threading.Event()  # set once the group gave this consumer partitions
        self._positions: dict[int, PartitionProgress | None] = {}  # None: never consumed
        self._next: dict[int, int] = {}  # next offset to read, per assigned partition
        self._watermark_at_assign: dict[int, int] = {}
        self._partitions_seen: set[int] = set()
        self._last_activity = time.monotonic()
        self._error_logged_at: dict[int, float] = {}
        self._consumer: Consumer | None = None
        # One batch is written by this thread while the next is consumed and classified:
        # PostgreSQL and Python then work at the same time instead of taking turns.
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="heartbeat-writer")
        self._inflight: tuple[Future, Batch, PipelineStats] | None = None
        self._projected = self.stats  # the stats once the in-flight batch commits
        self._first_message_at: float | None = None
        self._uncommitted: dict[int, int] = {}  # committed to PostgreSQL, not yet to Kafka
        self._kafka_committed_at = 0.0
        self._last_commit_at: float | None = None
        self._partitions_checked_at: float | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the current batch and stop; safe from a signal handler or another thread."""
        self._stop.set()

    @fewer_gc_pauses()
    def run(self, stop_when_idle: float | None = None) -> ConsumerReport:
        started = time.monotonic()
        c = self.config
        self._consumer = consumer = Consumer(
            {
                "bootstrap.servers": c.bootstrap_servers,
                "group.id": c.group_id,
                "client.id": c.name,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "error",  # out-of-range must reach us, not be papered over
                "session.timeout.ms": c.session_timeout_ms,
                "heartbeat.interval.ms": max(1000, c.session_timeout_ms // 3),
                # A fetch that finds no new data returns after 100 ms, not the default 500:
                # it bounds how long a reading waits at the broker when the stream is slow.
                "fetch.wait.max.ms": 100,
                "error_cb": self._on_kafka_error,
                **c.kafka_overrides,
            }
        )
        consumer.subscribe(
            [c.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        log.info("consumer %s subscribed to %s in group %s", c.name, c.topic, c.group_id)
        try:
            while not self._stop.is_set():
                self._ensure_partitions()
                messages = consumer.consume(c.batch_size, timeout=c.max_wait_s)
                self._check_for_log_reset()
                if messages:
                    self._last_activity = time.monotonic()
                    if self._first_message_at is None:
                        self._first_message_at = self._last_activity
                    self._process(messages)
                    continue
                self._settle()  # nothing new: let the in-flight batch finish now
                if (
                    stop_when_idle is not None
                    and self._partitions_seen
                    and time.monotonic() - self._last_activity >= stop_when_idle
                ):
                    log.info("no new message for %.1fs: stopping", stop_when_idle)
                    break
        finally:
            try:
                self._settle(recover=False)  # the last batch commits (or is abandoned) first
                self._commit_kafka_offsets(force=True)
            finally:
                self.alerts.flush_banners()
                try:
                    consumer.close()  # leaves the group; nothing is in flight any more
                finally:
                    self._writer_thread.shutdown()
                    self.writer.close()
                    self._consumer = None
        busy = (
            self._last_commit_at - self._first_message_at
            if self._first_message_at is not None and self._last_commit_at is not None
            else 0.0
        )
        return ConsumerReport(
            self.stats, set(self._partitions_seen), time.monotonic() - started, busy
        )

    # -- rebalance ------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle(recover=False)
        ids = [tp.partition for tp in partitions]
        current_id = topic_id(self.config.bootstrap_servers, self.config.topic)
        self.writer.topic_id = current_id
        loaded = self._with_database(
            lambda: self.writer.load_progress_and_topic_ids(ids), "load progress"
        )
        if loaded is None:  # stopping while the database was down
            consumer.assign([])
            return
        stored, stored_ids = loaded
        for tp in partitions:
            progress = stored.get(tp.partition)
            stored_id = stored_ids.get(tp.partition)
            if progress is not None and current_id and stored_id and stored_id != current_id:
                # Checked here because the log-end check below cannot see a new log that
                # has already grown past the stored offset.
                progress = self._start_new_epoch(
                    tp.partition, progress, 0,
                    f"the topic's id is now {current_id}, progress was stored under {stored_id}",
                )
                if progress is None:
                    consumer.assign([])
                    return
            self._positions[tp.partition] = progress
            self._next[tp.partition] = progress.next_offset if progress else 0
            tp.offset = progress.next_offset if progress else OFFSET_BEGINNING
        consumer.assign(partitions)
        for tp in partitions:
            self._watermark_at_assign[tp.partition] = self._cached_watermarks(tp.partition)[1]
        self._partitions_seen.update(ids)
        self._last_activity = time.monotonic()
        self.assigned.set()
        log.info("assigned at offsets %s", {tp.partition: tp.offset for tp in partitions})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle(recover=False)  # in-flight work commits or is abandoned, whole, first
        self._commit_kafka_offsets(force=True)
        for tp in partitions:
            self._positions.pop(tp.partition, None)
            self._next.pop(tp.partition, None)
            self._watermark_at_assign.pop(tp.partition, None)
        consumer.unassign()
        log.info("revoked partitions %s", [tp.partition for tp in partitions])

    # -- one batch ------------------------------------------------------------------------
    def _process(self, messages: list[Message]) -> None:
        batch, counts, out_of_range = self._build_batch(messages)
        for partition in out_of_range:
            self._handle_out_of_range(partition)
        if not batch.progress:
            return
        for partition, (_, after) in batch.progress.items():
            self._positions[partition] = after  # the next batch continues from here
        batch.encode()  # here, while the writer thread still waits on PostgreSQL (see Batch)
        if not self._settle():
            return  # the previous batch failed: this one followed it and is abandoned too
        pending = copy.copy(self._projected)  # complete now that the previous write is done

        def snapshot(result: WriteResult) -> list[MetricRow]:
            pending.record_batch(
                messages_consumed=batch.message_count,
                records_written=result.records,
                duplicates_dropped=result.duplicates,
                dead_letters=len(batch.dead_letters),
                alerts_triggered=len(batch.anomalies),
                **counts,
            )
            if pending.should_flush(self.config.stats_every):
                return pending.flush_stats({"consumer": self.config.name})
            return []

        self._projected = pending
        future = self._writer_thread.submit(self.writer.write, batch, snapshot)
        self._inflight = (future, batch, pending)

    def _settle(self, recover: bool = True) -> bool:
        """Wait for the in-flight batch; True when it committed (or none was in flight).

        On failure every assigned partition is rewound to its stored progress (after the
        database is back), unless `recover` is off because the partitions are going away.
        """
        if self._inflight is None:
            return True
        future, batch, pending = self._inflight
        self._inflight = None
        try:
            result = future.result()
        except psycopg.OperationalError as exc:
            log.error("database unavailable, batch of %d rolled back: %s",
                      batch.message_count, str(exc).strip())
            self._projected = self.stats
            if recover:
                self._rewind_and_wait_for_database()
            return False
        except StaleProgress as exc:
            log.warning("%s; re-reading from the stored progress", exc)
            self._projected = self.stats
            if recover:
                self._rewind(list(self._positions))
            return False
        self.stats = pending
        self._last_commit_at = time.monotonic()
        for partition, (_, after) in batch.progress.items():
            self._uncommitted[partition] = after.next_offset
        self._commit_kafka_offsets()
        if self._on_batch:
            self._on_batch(result, self.stats)
        return True

    def _build_batch(self, messages: list[Message]) -> tuple[Batch, dict[str, int], set[int]]:
        batch = Batch()
        records, anomalies, dead, metrics = (
            batch.records, batch.anomalies, batch.dead_letters, batch.metrics,
        )
        counts = dict.fromkeys(_ANOMALY_STAT.values(), 0)
        out_of_range: set[int] = set()
        nxt = self._next
        positions = self._positions
        started_at = dict(nxt)
        epochs = {p: progress.log_epoch if progress else 0 for p, progress in positions.items()}
        trigger = self.alerts.trigger_alert
        classify = classify_heart_rate
        window = self.config.retention.admissible(datetime.now(UTC))
        oldest, newest = window.oldest, window.newest
        for message in messages:
            error = message.error()
            partition = message.partition()
            if error is not None:
                if error.code() == KafkaError._AUTO_OFFSET_RESET and partition in positions:
                    out_of_range.add(partition)
                elif error.code() != KafkaError._PARTITION_EOF:
                    self._log_rate_limited(error.code(), "Kafka error: %s", error)
                continue
            offset = message.offset()
            expected = nxt.get(partition)
            if expected is None or offset < expected:
                continue  # revoked meanwhile, or already written (after a rewind)
            epoch = epochs[partition]
            raw = message.value()
            try:
                reading = validate_message(raw)
            except InvalidMessage as exc:
                dead.append((epoch, partition, offset, message.key(), raw, exc.reason))
            else:
                customer, bpm, when = reading
                if not oldest <= when <= newest:  # could not be kept, or claims the future
                    dead.append((epoch, partition, offset, message.key(), raw,
                                 window.reason(when)))
                elif (klass := classify(bpm)) is _NORMAL:
                    records.append((customer, when, bpm, epoch, partition, offset))
                else:
                    anomalies.append(
                        (customer, when, bpm, klass.value, raw.decode(), epoch, partition, offset)
                    )
                    counts[_ANOMALY_STAT[klass]] += 1
                    metrics.append(trigger(reading, klass, partition, offset, epoch))
            nxt[partition] = offset + 1
        for partition, next_offset in nxt.items():
            if next_offset != started_at.get(partition):
                batch.progress[partition] = (
                    positions[partition], PartitionProgress(epochs[partition], next_offset)
                )
        return batch, counts, out_of_range

    def _commit_kafka_offsets(self, force: bool = False) -> None:
        """Tell Kafka too, so lag tools see progress; the database stays the truth.

        At most once a second (and when partitions go away): an offset commit per batch
        cut fetch throughput by two thirds on the embedded broker, and lag tools do not
        need more.
        """
        now = time.monotonic()
        if not self._uncommitted or (not force and now - self._kafka_committed_at < 1.0):
            return
        offsets = [
            TopicPartition(self.config.topic, p, offset) for p, offset in self._uncommitted.items()
        ]
        self._uncommitted.clear()
        self._kafka_committed_at = now
        try:
            self._consumer.commit(offsets=offsets, asynchronous=not force)
        except Exception as exc:  # noqa: BLE001 - a failed lag commit must not stop ingestion
            self._log_rate_limited(-1, "could not commit offsets to Kafka: %s", exc)

    def _ensure_partitions(self) -> None:
        """The day partitions of the admissible window exist (at start, then hourly).

        The scheduled Dagster job does the same; doing it here too means a consumer never
        depends on the scheduler to be able to write tomorrow's readings.
        """
        now = time.monotonic()
        checked = self._partitions_checked_at
        if checked is not None and now - checked < _PARTITION_CHECK_EVERY_S:
            return
        self._settle()
        created = self._with_database(
            lambda: self.writer.ensure_partitions(self.config.retention), "ensure partitions"
        )
        if created is not None:
            self._partitions_checked_at = now
        elif not self._stop.is_set():  # tables locked by a reader: again in a minute
            log.warning("day partitions not checked: the tables are locked; retrying in 60 s")
            self._partitions_checked_at = now - _PARTITION_CHECK_EVERY_S + 60

    # -- recovery -------------------------------------------------------------------------
    def _rewind(self, partitions: list[int]) -> None:
        """Seek partitions back to their stored progress (after a rollback or a stale write)."""
        stored = self._with_database(lambda: self.writer.load_progress(partitions), "reload")
        if stored is None:
            return
        for p in partitions:
            if p not in self._positions:
                continue
            progress = stored.get(p)
            self._positions[p] = progress
            self._next[p] = progress.next_offset if progress else 0
            self._seek(p, progress.next_offset if progress else OFFSET_BEGINNING)

    def _rewind_and_wait_for_database(self) -> None:
        self._consumer.pause(self._consumer.assignment())
        self._with_database(self.writer.ping, "reconnect")
        self._rewind(list(self._positions))
        self._consumer.resume(self._consumer.assignment())
        self._last_activity = time.monotonic()  # the outage is not idleness
        log.info("database is back: resuming from the stored progress")

    def _with_database(self, action: Callable, what: str):
        """Run `action`, retrying with backoff while the database is unavailable."""
        delay = 0.5
        while True:
            try:
                return action()
            except psycopg.OperationalError as exc:
                if self._stop.is_set():
                    return None
                log.error("database unavailable (%s), retrying in %.1fs: %s", what, delay,
                          str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not self._stop.is_set():
                    if self._consumer is not None:
                        self._consumer.poll(0.2)  # keeps group membership; partitions paused
                    else:
                        time.sleep(0.2)
                delay = min(delay * 2, 10.0)

    def _seek(self, partition: int, offset: int) -> None:
        tp = TopicPartition(self.config.topic, partition, offset)
        try:
            self._consumer.seek(tp)
        except Exception:  # noqa: BLE001 - not fetched yet: assign-level offset applies
            self._consumer.assign(
                [TopicPartition(self.config.topic, p, self._next[p] or OFFSET_BEGINNING)
                 for p in self._positions]
            )

    # -- log reset / truncation -------------------------------------------------------------
    def _cached_watermarks(self, partition: int) -> tuple[int, int]:
        try:
            return self._consumer.get_watermark_offsets(
                TopicPartition(self.config.topic, partition), cached=True
            )
        except Exception:  # noqa: BLE001
            return (_UNKNOWN_WATERMARK, _UNKNOWN_WATERMARK)

    def _check_for_log_reset(self) -> None:
        """Catch a log that ends before our stored offset, which some brokers never report.

        Uses the watermarks of the latest fetch response (cached), and only once one arrived
        after the assignment: a broker query can lag behind (the embedded broker's does).
        """
        for partition, progress in list(self._positions.items()):
            if progress is None:
                continue
            low, high = self._cached_watermarks(partition)
            fresh = high >= 0 and high != self._watermark_at_assign.get(partition)
            if fresh and high < progress.next_offset:
                self._handle_out_of_range(partition, (low, high))

    def _handle_out_of_range(self, partition: int, watermarks: tuple[int, int] | None = None):
        if not self._settle():
            return
        progress = self._positions.get(partition)
        if progress is None:
            return
        if watermarks is None:
            watermarks = self._consumer.get_watermark_offsets(
                TopicPartition(self.config.topic, partition), timeout=10
            )
        low, high = watermarks
        low = max(low, 0)
        if progress.next_offset < low:
            log.error(
                "partition %d: messages at offsets %d..%d were deleted by the broker before "
                "they were consumed (retention); %d readings are lost at the source. "
                "Resuming at offset %d.",
                partition, progress.next_offset, low - 1, low - progress.next_offset, low,
            )
            new = self._move_progress(
                partition, progress, PartitionProgress(progress.log_epoch, low)
            )
        else:
            new = self._start_new_epoch(
                partition, progress, low,
                f"the broker's log ends at offset {high} but {progress.next_offset} were "
                "already stored",
            )
        if new is None:
            return
        self._positions[partition] = new
        self._next[partition] = new.next_offset
        self._watermark_at_assign[partition] = high
        self._seek(partition, new.next_offset)

    def _start_new_epoch(
        self, partition: int, progress: PartitionProgress, start: int, why: str
    ) -> PartitionProgress | None:
        """Store that `partition` goes on with a new log epoch from offset `start`; returns
        what `_move_progress` returns."""
        epoch = self._with_database(lambda: self.writer.next_epoch(partition), "new epoch")
        if epoch is None:
            return None
        new = PartitionProgress(epoch, start)
        log.warning(
            "partition %d: %s: the log was reset (the broker lost its data, or the topic was "
            "created again). Starting log epoch %d from offset %d; rows of the old log keep "
            "epoch %d.",
            partition, why, epoch, start, progress.log_epoch,
        )
        return self._move_progress(partition, progress, new)

    def _move_progress(
        self, partition: int, progress: PartitionProgress, new: PartitionProgress
    ) -> PartitionProgress | None:
        """Store `new` as the partition's progress and return it; the stored progress instead
        when another consumer of the group moved it first; None when stopping while the
        database is down."""
        try:
            self._with_database(
                lambda: self.writer.move_progress(partition, progress, new), "move progress"
            )
        except StaleProgress:
            stored = self._with_database(lambda: self.writer.load_progress([partition]), "reload")
            return None if stored is None else stored.get(partition)
        return new

    # -- logging --------------------------------------------------------------------------
    def _on_kafka_error(self, error: KafkaError) -> None:
        self._log_rate_limited(error.code(), "Kafka: %s (retrying)", error.str())

    def _log_rate_limited(self, key: int, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._error_logged_at.get(key, 0.0) >= 10.0:
            self._error_logged_at[key] = now
            log.warning(message, *args)
