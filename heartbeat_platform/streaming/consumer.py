"""The batch consumer: Kafka -> validate/classify -> PostgreSQL, with an exactly-once effect.

The loop and the rebalance callbacks live here; each step they call has one job elsewhere:
`batch_builder` (messages in, rows and progress out), the writer on its own thread
(`storage.writer`), `log_decisions` (is the stored offset still right for the broker's
log?), `offset_commits` (when to tell Kafka) and `storage.progress` (progress and logs).

Guarantees (what survives what):
- Progress lives in PostgreSQL, written in the same transaction as the rows of the batch;
  on assignment the consumer seeks to it. A kill -9 at any instant therefore neither loses
  nor doubles a reading. Kafka's committed offsets are updated after the database commit,
  for lag tools only.
- A batch is written whole or not at all. When the database goes away the batch is
  abandoned, the partitions are rewound to the stored progress and paused, and the
  consumer retries with backoff until the database is back; it never exits for that. A
  message the database refuses becomes a dead letter with the database's error; the rest
  of its batch lands.
- A rebalance can only happen inside `consume()`, between batches: the callbacks first let
  the in-flight batch commit, so nothing is in flight when partitions go. Eager, cooperative
  (`cooperative-sticky`) and KIP-848 (`group.protocol=consumer`) assignment all work: the
  callbacks add or remove only the partitions they are given when assignment is incremental.
  A consumer that lost a partition without noticing cannot overwrite another's work:
  progress moves by compare-and-set.
- A stored offset the broker's log no longer has is never skipped silently, and a leader
  change is never taken for a reset log (`log_decisions`): retention that deleted unread
  messages is logged as an error with the count; a truncated log goes on under a new epoch
  from its new end; a new log (another topic id) under a new epoch from its start.
- A reading whose time is outside the admissible window, or a message over the size limit,
  is a dead letter with the reason; the day partitions of the window are ensured at start
  and every hour, so a reading never fails for lack of one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from heartbeat_platform.alerting.delivery import AlertDelivery
from heartbeat_platform.domain.alerts import AlertManager, PipelineStats
from heartbeat_platform.metrics import ConsumerCollector, ConsumerMetrics
from heartbeat_platform.storage import db_errors
from heartbeat_platform.storage.progress import (
    PartitionProgress,
    StaleProgress,
    current_logs,
)
from heartbeat_platform.storage.writer import BatchWriter, WriteResult
from heartbeat_platform.streaming.batch_builder import BatchBuilder, Cursor
from heartbeat_platform.streaming.consumer_config import (
    ConsumerConfig,
    assigns_incrementally,
    client_settings,
)
from heartbeat_platform.streaming.gc_tuning import fewer_gc_pauses
from heartbeat_platform.streaming.inflight import InflightWrite
from heartbeat_platform.streaming.log_decisions import (
    AskBroker,
    Continue,
    LogWatch,
    NewLog,
    Observation,
    Resume,
    decide,
    topic_id_to_decide,
)
from heartbeat_platform.streaming.offset_commits import OffsetCommitPolicy
from heartbeat_platform.streaming.topics import topic_id

log = logging.getLogger(__name__)

_UNKNOWN_WATERMARK = -1001
_PARTITION_CHECK_EVERY_S = 3600.0
_LIST_OFFSETS_TIMEOUT_S = 5.0
_NO_ASSIGNMENT_WARNING_S = 30.0
_TOPIC_ID_RETRY_WAITS_S = (1.0, 2.0, 4.0)  # the id decides a partition's log: worth 3 retries


@dataclass
class ConsumerReport:
    stats: PipelineStats
    partitions_seen: set[int]
    seconds: float
    busy_seconds: float  # first message received -> last batch committed
    rebalance_callbacks: int = 0  # partitions assigned, revoked or lost
    settled_in_rebalance: int = 0  # batches in flight when partitions moved, committed first

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
            "rebalance_callbacks": self.rebalance_callbacks,
            "settled_in_rebalance": self.settled_in_rebalance,
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
        metrics: CollectorRegistry | None = None,
    ):
        """`metrics`: a Prometheus registry to report to (see `heartbeat_platform.metrics`)."""
        self.config = config
        self.alerts = alerts or AlertManager()
        alerting = config.alerting
        self.writer = BatchWriter(
            config.database_url, config.group_id, config.topic,
            episode_rules=alerting.rules if alerting else None,
        )
        self.delivery = AlertDelivery(config.database_url, alerting) if alerting else None
        self.inflight = InflightWrite(self.writer, config.stats_every, config.name)
        self.builder = BatchBuilder(self.alerts, config.retention, config.max_message_bytes)
        self.commits = OffsetCommitPolicy()
        self._settings = client_settings(config, self._on_kafka_error)
        self._incremental = assigns_incrementally(self._settings)
        self._on_batch = on_batch
        self._stop = threading.Event()
        self.assigned = threading.Event()  # set once the group gave this consumer partitions
        self._cursors: dict[int, Cursor] = {}  # the assigned partitions
        self._logs = LogWatch()
        self._partitions_seen: set[int] = set()
        self._last_activity = time.monotonic()
        self._error_logged_at: dict[object, float] = {}
        self._consumer: Consumer | None = None
        self._first_message_at: float | None = None
        self._partitions_checked_at: float | None = None
        self._rebalance_callbacks = 0
        self._settled_in_rebalance = 0
        self.database_unavailable = False
        self.kafka_errors = 0
        self._lag: dict[int, int] = {}
        self.last_reading_at: datetime | None = None  # event time of the last row committed
        self.metrics = ConsumerMetrics(metrics or CollectorRegistry())
        if metrics is not None:
            metrics.register(ConsumerCollector(self))

    @property
    def stats(self) -> PipelineStats:
        """The counters of every batch committed so far."""
        return self.inflight.committed

    @property
    def _client(self) -> Consumer:
        """The Kafka consumer, which exists while `run` runs."""
        if self._consumer is None:
            raise RuntimeError("the Kafka consumer is not running")
        return self._consumer

    # -- lifecycle ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the current batch and stop; safe from a signal handler or another thread."""
        self._stop.set()

    @fewer_gc_pauses()
    def run(self, stop_when_idle: float | None = None) -> ConsumerReport:
        started = time.monotonic()
        c = self.config
        self._consumer = consumer = Consumer(self._settings)
        consumer.subscribe(
            [c.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("consumer %s subscribed to %s in group %s (%s assignment)", c.name, c.topic,
                 c.group_id, "incremental" if self._incremental else "eager")
        if self.delivery is not None:
            self.delivery.start()
        try:
            waiting_warned = False
            while not self._stop.is_set():
                self._ensure_partitions()
                messages = consumer.consume(c.batch_size, timeout=c.max_wait_s)
                if not waiting_warned and not self.assigned.is_set() and (
                    time.monotonic() - started > _NO_ASSIGNMENT_WARNING_S
                ):
                    waiting_warned = True
                    self._warn_no_assignment()
                if messages:
                    self._last_activity = time.monotonic()
                    if self._first_message_at is None:
                        self._first_message_at = self._last_activity
                    self._process(messages)
                else:
                    self._settle()  # nothing new: let the in-flight batch finish now
                self._check_logs()
                if (
                    not messages
                    and stop_when_idle is not None
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
                    self.inflight.close()
                    self._consumer = None
                    if self.delivery is not None:
                        self.delivery.stop()  # what it did not send goes out after a restart
        last_commit_at = self.inflight.last_commit_at
        busy = (
            last_commit_at - self._first_message_at
            if self._first_message_at is not None and last_commit_at is not None
            else 0.0
        )
        return ConsumerReport(
            self.stats, set(self._partitions_seen), time.monotonic() - started, busy,
            self._rebalance_callbacks, self._settled_in_rebalance,
        )

    # -- rebalance ------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle_for_rebalance()
        ids = [tp.partition for tp in partitions]
        cursors = self._with_database(lambda: self._open_cursors(ids), "load progress")
        if cursors is None:  # stopping while the database was down
            self._change_assignment(consumer, add=[])
            return
        for tp in partitions:
            cursor = cursors[tp.partition]
            tp.offset = cursor.next_offset if cursor.stored else OFFSET_BEGINNING
        self._cursors.update(cursors)
        self._change_assignment(consumer, add=partitions)
        for tp in partitions:
            self._logs.assigned(tp.partition, self._cached_watermarks(tp.partition)[1])
        self._partitions_seen.update(ids)
        self._last_activity = time.monotonic()
        self.assigned.set()
        log.info("assigned at offsets %s", {tp.partition: tp.offset for tp in partitions})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle_for_rebalance()  # in-flight work commits or is abandoned, whole, first
        self._commit_kafka_offsets(force=True)
        self._drop(consumer, partitions)
        log.info("revoked partitions %s", [tp.partition for tp in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Another member may own them already: no commit; the compare-and-set refuses any
        write of ours that comes late."""
        self._settle_for_rebalance()
        self.commits.forget([tp.partition for tp in partitions])
        self._drop(consumer, partitions)
        log.warning("lost partitions %s (session expired)", [tp.partition for tp in partitions])

    def _settle_for_rebalance(self) -> None:
        self._rebalance_callbacks += 1
        if self.inflight.busy:
            self._settled_in_rebalance += 1
        self._settle(recover=False)

    def _drop(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._cursors.pop(tp.partition, None)
            self._logs.forget(tp.partition)
        if self._incremental:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()

    def _change_assignment(self, consumer: Consumer, add: list[TopicPartition]) -> None:
        if self._incremental:
            if add:
                consumer.incremental_assign(add)
        else:
            consumer.assign(add)

    def _open_cursors(self, partitions: list[int]) -> dict[int, Cursor]:
        """Cursors at the stored progress, each with the logs its offsets belong to; a
        partition whose topic was created again starts a new log here (its new log can
        already be longer than the stored offset, which no log-end check would notice)."""
        stored = self.writer.load(partitions)
        known = self.writer.logs(partitions)
        under_id = any(s.topic_id for s in stored.values()) or any(
            log.topic_id for logs in known.values() for log in logs
        )
        current_id = topic_id_to_decide(
            self._topic_id, under_id, _TOPIC_ID_RETRY_WAITS_S, self._stop.wait
        )
        if current_id is None and under_id and not self._stop.is_set():
            log.warning("the id of topic %s is not known: a topic created again since the "
                        "progress was stored is not recognised until the id is", self.config.topic)
        self.writer.topic_id = current_id
        cursors = {}
        for partition in partitions:
            found = stored.get(partition)
            every = known.get(partition, [])
            if found is None:
                known_id, logs = current_id, current_logs(every, current_id)
            else:  # the id the stored progress is known under: its own, or its log's
                its_log = [log for log in every if log.log_epoch == found.progress.log_epoch]
                known_id = found.topic_id or next((log.topic_id for log in its_log), None)
                if known_id is None:  # go on in that log until evidence says otherwise
                    logs = current_logs([log for log in every if log.topic_id is None], None)
                    logs = logs or its_log
                else:
                    logs = current_logs(every, current_id)
            cursor = Cursor(found.progress if found else None,
                            found.progress.next_offset if found else 0, logs, known_id)
            action = Continue() if found is None else decide(
                Observation(found.progress.next_offset, known_id, current_id)
            )
            if isinstance(action, NewLog):
                self._new_log(partition, cursor, action, current_id)
            elif not cursor.logs:
                cursor.logs = self.writer.current_or_first_log(partition, current_id)
            cursors[partition] = cursor
        return cursors

    # -- one batch ------------------------------------------------------------------------
    def _process(self, messages: list) -> None:
        built = self.builder.build(messages, self._cursors, datetime.now(UTC))
        self._logs.out_of_range(built.out_of_range)
        for error in built.errors:
            self._log_rate_limited(error.code(), "Kafka error: %s", error)
        batch = built.batch
        if not batch.progress:
            return
        batch.encode()  # here, while the writer thread still waits on PostgreSQL (see Batch)
        if not self._settle():
            return  # the previous batch failed: this one followed it and is abandoned too
        self.inflight.submit(batch, built.counts)

    def _settle(self, recover: bool = True) -> bool:
        """Wait for the in-flight batch; True when it committed (or none was in flight).

        On failure every assigned partition is rewound to its stored progress (after the
        database is back), unless `recover` is off because the partitions are going away.
        Errors no wait can fix (missing schema or rights) end the consumer.
        """
        messages = self.inflight.messages
        try:
            done = self.inflight.wait()
        except StaleProgress as exc:
            log.warning("%s; re-reading from the stored progress", exc)
            if recover:
                self._rewind(list(self._cursors))
            return False
        except psycopg.Error as exc:
            if db_errors.classify(exc) is not db_errors.Failure.OUTAGE:
                log.error("batch of %d cannot be written and no retry can fix it: %s",
                          messages, db_errors.describe(exc))
                raise
            self.database_unavailable = True
            log.error("database unavailable, batch of %d rolled back: %s",
                      messages, db_errors.describe(exc))
            if recover:
                self._rewind_and_wait_for_database()
            return False
        if done is None:
            return True
        batch, result = done
        self.metrics.batch_committed(batch, result, self.inflight.last_write_seconds)
        last_rows = [rows[-1][1] for rows in (batch.records, batch.anomalies) if rows]
        if last_rows:
            self.last_reading_at = max(last_rows)
        for partition, (_, after) in batch.progress.items():
            self.commits.stored(partition, after.next_offset)
        self._commit_kafka_offsets()
        if self._on_batch:
            self._on_batch(result, self.stats)
        return True

    def _commit_kafka_offsets(self, force: bool = False) -> None:
        """Tell Kafka what PostgreSQL holds, for lag tools (see `offset_commits`)."""
        due = self.commits.due(time.monotonic(), force)
        if not due:
            return
        offsets = [TopicPartition(self.config.topic, p, offset) for p, offset in due.items()]
        try:
            if force:  # closing, or partitions revoked: wait for it
                self._client.commit(offsets=offsets, asynchronous=False)
            else:
                self._client.commit(offsets=offsets, asynchronous=True)
        except Exception as exc:  # noqa: BLE001 - a failed lag commit must not stop ingestion
            self._log_rate_limited("commit", "could not commit offsets to Kafka: %s", exc)

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
            cursor = self._cursors.get(p)
            if cursor is None:
                continue
            progress = stored.get(p)
            cursor.stored = progress
            cursor.next_offset = progress.next_offset if progress else 0
            self._seek(p, progress.next_offset if progress else OFFSET_BEGINNING)

    def _rewind_and_wait_for_database(self) -> None:
        self._client.pause(self._client.assignment())
        self._with_database(self.writer.ping, "reconnect")
        self._rewind(list(self._cursors))
        self._client.resume(self._client.assignment())
        self._last_activity = time.monotonic()  # the outage is not idleness
        log.info("database is back: resuming from the stored progress")

    def _with_database(self, action: Callable, what: str):
        """Run `action`, retrying with backoff while the database is unavailable."""
        delay = 0.5
        while True:
            try:
                done = action()
                self.database_unavailable = False
                return done
            except psycopg.OperationalError as exc:
                if db_errors.classify(exc) is db_errors.Failure.FATAL or self._stop.is_set():
                    if self._stop.is_set():
                        return None
                    raise
                self.database_unavailable = True
                log.error("database unavailable (%s), retrying in %.1fs: %s", what, delay,
                          db_errors.describe(exc))
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
            self._client.seek(tp)
        except KafkaException:  # not fetching yet: the assignment's offset applies instead
            if self._incremental:
                self._client.incremental_unassign([TopicPartition(self.config.topic, partition)])
                self._client.incremental_assign([tp])
            else:
                self._client.assign([
                    TopicPartition(self.config.topic, p, c.next_offset if c.stored
                                   else OFFSET_BEGINNING)
                    for p, c in self._cursors.items()
                ])

    # -- the broker's log -----------------------------------------------------------------
    def _topic_id(self) -> str | None:
        c = self.config
        return topic_id(c.bootstrap_servers, c.topic, c.kafka_overrides)

    def _cached_watermarks(self, partition: int) -> tuple[int, int]:
        try:
            return self._client.get_watermark_offsets(
                TopicPartition(self.config.topic, partition), cached=True
            )
        except KafkaException:
            return (_UNKNOWN_WATERMARK, _UNKNOWN_WATERMARK)

    def _check_logs(self) -> None:
        """Act on what the client says about each partition's log (`log_decisions`).

        Which partitions need a decision is `LogWatch`'s call. A check the broker did not
        answer in time is tried again on the next round; the partition waits meanwhile.
        """
        lag, suspects = {}, []
        for partition, cursor in self._cursors.items():
            high = self._cached_watermarks(partition)[1]
            stored = cursor.stored.next_offset if cursor.stored else None
            if high >= 0:
                lag[partition] = max(0, high - (stored or 0))
            seen = self._logs.observe(partition, stored, cursor.topic_id, high)
            if not isinstance(decide(seen), Continue):
                suspects.append((partition, high, seen))
        self._lag = lag  # for `lag()`, read by the metrics thread
        for partition, high, seen in suspects:
            if not self._settle():
                return
            if partition not in self._cursors:  # revoked meanwhile
                continue
            cursor = self._cursors[partition]
            try:
                listed = self._client.get_watermark_offsets(
                    TopicPartition(self.config.topic, partition), timeout=_LIST_OFFSETS_TIMEOUT_S
                )
            except KafkaException as exc:
                self._logs.retry(partition)
                self._log_rate_limited(("list", partition),
                                       "partition %d: log start/end not known yet (%s); retrying",
                                       partition, exc)
                continue
            now_id = self._topic_id()
            seen = Observation(
                cursor.stored.next_offset if cursor.stored else None, cursor.topic_id,
                now_id, seen.out_of_range, seen.fetched_end, listed,
            )
            action = decide(seen)
            if isinstance(action, AskBroker | Continue):  # cannot happen with `listed`
                continue
            if isinstance(action, Resume):
                self._resume(partition, cursor, action)
            else:
                if now_id is not None:
                    self.writer.topic_id = now_id
                self._with_database(
                    lambda a=action, c=cursor, p=partition, i=now_id: self._new_log(p, c, a, i),
                    "new log",
                )
                self._seek(partition, cursor.next_offset if cursor.stored else OFFSET_BEGINNING)
            self._logs.decided(partition, high)

    def _resume(self, partition: int, cursor: Cursor, action: Resume) -> None:
        if action.lost:
            log.error(
                "partition %d: messages at offsets %d..%d were deleted by the broker before "
                "they were consumed (retention); %d readings are lost at the source. "
                "Resuming at offset %d.",
                partition, action.offset - action.lost, action.offset - 1, action.lost,
                action.offset,
            )
            new = PartitionProgress(cursor.epoch_at(action.offset)[0], action.offset)
            if self._with_database(
                lambda: self._move_progress(partition, cursor, new), "move progress"
            ) is False:
                self._seek(partition, cursor.next_offset if cursor.stored else OFFSET_BEGINNING)
                return
        cursor.next_offset = action.offset
        self._seek(partition, action.offset)

    def _new_log(
        self, partition: int, cursor: Cursor, action: NewLog, current_id: str | None
    ) -> None:
        """Register the new log and move the cursor and the stored progress into it (or to
        what another consumer of the group stored first). The caller seeks."""
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
        if cursor.stored is None or self._move_progress(partition, cursor, new):
            cursor.next_offset = start

    def _move_progress(self, partition: int, cursor: Cursor, new: PartitionProgress) -> bool:
        """Store `new` as the partition's progress; False (and the cursor at the stored
        progress) when another consumer of the group moved it first. The caller seeks."""
        try:
            self.writer.move_progress(partition, cursor.stored, new)
        except StaleProgress:
            stored = self.writer.load_progress([partition]).get(partition)
            cursor.stored = stored
            cursor.next_offset = stored.next_offset if stored else 0
            return False
        cursor.stored = new
        return True

    # -- logging --------------------------------------------------------------------------
    def _warn_no_assignment(self) -> None:
        """Silence is what a broker without KIP-848 gives a `consumer`-protocol member."""
        hint = (
            "; group.protocol=consumer needs KIP-848 on the broker (Apache Kafka 4.0+; the "
            "embedded broker has none): with an older broker set KAFKA_GROUP_PROTOCOL=classic"
            if self._settings.get("group.protocol") == "consumer"
            else " (the group may have more members than the topic has partitions)"
        )
        log.warning("no partitions assigned %.0f s after joining group %s%s",
                    _NO_ASSIGNMENT_WARNING_S, self.config.group_id, hint)

    def lag(self) -> dict[int, int]:
        """Per assigned partition: the log end (of the latest fetch) minus the stored
        progress, as of the loop's last round. For other threads (the metrics server's):
        they must not call into the Kafka client, which the loop is using."""
        return dict(self._lag)

    def _on_kafka_error(self, error: KafkaError) -> None:
        self.kafka_errors += 1
        self._log_rate_limited(error.code(), "Kafka: %s (retrying)", error.str())

    def _log_rate_limited(self, key: object, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._error_logged_at.get(key, 0.0) >= 10.0:
            self._error_logged_at[key] = now
            log.warning(message, *args)
