"""The batch consumer: Kafka -> validate/classify -> PostgreSQL, with an exactly-once effect.

This module is the loop and the rebalance callbacks, and the only code that talks to the
Kafka client. Each step it calls has one job elsewhere: `batch_builder` (messages in, rows
and progress out), `inflight` (the writer on its own thread), `cursors` (where each
partition stands, and the progress behind it), `log_checks` (is the stored offset still
right for the broker's log?), `offset_commits` (when to tell Kafka) and `outage` (what to
do while PostgreSQL is away). The steps never wait for the database: they raise
`DatabaseUnavailable`, and only the loop decides.

Guarantees (what survives what; README, "Guarantees"):
- Progress lives in PostgreSQL, written in the same transaction as the rows of the batch;
  on assignment the consumer seeks to it. A kill -9 at any instant therefore neither loses
  nor doubles a reading. Kafka's committed offsets are updated after the database commit,
  for lag tools only.
- One place polls: `run`. Every message it gets is built into a batch, or its partition is
  sought back to its cursor before it is read again. While the database is away every
  assigned partition is paused, the loop polls only to keep its group membership and serve
  rebalances, and when the database is back every partition is sought to the progress
  stored there before anything is read. A partition assigned during the outage stays
  paused until its progress can be loaded.
- A batch is written whole or not at all. A message the database refuses becomes a dead
  letter with the database's error; the rest of its batch lands.
- Rebalances happen only inside the loop's poll, never inside a database retry: the
  callbacks first let the in-flight batch commit, and each makes at most one attempt at the
  database. Eager, cooperative (`cooperative-sticky`) and KIP-848 (`group.protocol=consumer`)
  assignment all work. A consumer that lost a partition without noticing cannot overwrite
  another's work: progress moves by compare-and-set.
- A stored offset the broker's log no longer has is never skipped silently, and a leader
  change is never taken for a reset log (`log_decisions`).
- A reading whose time is outside the admissible window, or a message over the size limit,
  is a dead letter with the reason; the day partitions of the window are ensured at start
  and every hour, so a reading never fails for lack of one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from heartbeat_platform.alerting.delivery import AlertDelivery
from heartbeat_platform.domain.alerts import AlertManager, PipelineStats
from heartbeat_platform.metrics import ConsumerCollector, ConsumerMetrics
from heartbeat_platform.storage import db_errors
from heartbeat_platform.storage.progress import ProgressMove, StaleProgress
from heartbeat_platform.storage.writer import BatchWriter, WriteResult
from heartbeat_platform.streaming.batch_builder import BatchBuilder
from heartbeat_platform.streaming.consumer_config import (
    ConsumerConfig,
    assigns_incrementally,
    client_settings,
)
from heartbeat_platform.streaming.consumer_report import ConsumerReport
from heartbeat_platform.streaming.cursors import Cursors, position
from heartbeat_platform.streaming.gc_tuning import fewer_gc_pauses
from heartbeat_platform.streaming.inflight import InflightWrite
from heartbeat_platform.streaming.log_checks import LogChecks
from heartbeat_platform.streaming.offset_commits import OffsetCommitPolicy
from heartbeat_platform.streaming.outage import (
    DatabaseUnavailable,
    Outage,
    needs_database,
    retry_later,
)
from heartbeat_platform.streaming.topics import topic_id

__all__ = ["ConsumerReport", "HeartbeatConsumer"]

log = logging.getLogger(__name__)

_UNKNOWN_WATERMARK = -1001
_LIST_OFFSETS_TIMEOUT_S = 5.0
_NO_ASSIGNMENT_WARNING_S = 30.0
_OUTAGE_POLL_S = 0.2  # while the database is away: how often callbacks are served


class HeartbeatConsumer:
    def __init__(
        self,
        config: ConsumerConfig,
        alerts: AlertManager | None = None,
        on_batch: Callable[[WriteResult, PipelineStats], None] | None = None,
        metrics: CollectorRegistry | None = None,
        *,
        client: Callable[[dict], Consumer] = Consumer,
        writer: BatchWriter | None = None,
    ):
        """`metrics`: a Prometheus registry to report to (see `heartbeat_platform.metrics`).
        `client` and `writer` make the Kafka client and the database writer (the unit tests
        give in-memory ones)."""
        self.config = config
        self.alerts = alerts or AlertManager()
        alerting = config.alerting
        self.writer = writer or BatchWriter(
            config.database_url, config.group_id, config.topic,
            episode_rules=alerting.rules if alerting else None,
        )
        self._new_client = client
        self.delivery = AlertDelivery(config.database_url, alerting) if alerting else None
        self.inflight = InflightWrite(self.writer, config.stats_every, config.name)
        self.builder = BatchBuilder(self.alerts, config.retention, config.max_message_bytes)
        self.commits = OffsetCommitPolicy()
        self._settings = client_settings(config, self._on_kafka_error)
        self._incremental = assigns_incrementally(self._settings)
        self._on_batch = on_batch
        self._stop = threading.Event()
        self.assigned = threading.Event()  # set once the group gave this consumer partitions
        self.cursors = Cursors(self.writer, config.topic, self._topic_id, self._stop.wait)
        self.logs = LogChecks(self.cursors)
        self.outage = Outage()
        self._unopened: set[int] = set()  # assigned while the database was away: paused
        self._unsettled: list[dict[int, ProgressMove]] = []  # built, not committed yet
        self._partitions_seen: set[int] = set()
        self._last_activity = time.monotonic()
        self._error_logged_at: dict[object, float] = {}
        self._consumer: Consumer | None = None
        self._first_message_at: float | None = None
        self._partitions_checked_at: float | None = None
        self._rebalance_callbacks = 0
        self._settled_in_rebalance = 0
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
    def database_unavailable(self) -> bool:
        return self.outage.active

    def lag(self) -> dict[int, int]:
        """Per assigned partition: the log end (of the latest fetch) minus the stored
        progress, as of the loop's last round; for other threads (the metrics server's)."""
        return dict(self._lag)

    @property
    def _client(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the Kafka consumer is not running")
        return self._consumer

    def request_stop(self) -> None:
        """Finish the current batch and stop; safe from a signal handler or another thread."""
        self._stop.set()

    # -- the loop -------------------------------------------------------------------------
    @fewer_gc_pauses()
    def run(self, stop_when_idle: float | None = None) -> ConsumerReport:
        started = time.monotonic()
        c = self.config
        self._consumer = consumer = self._new_client(self._settings)
        consumer.subscribe([c.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        log.info("consumer %s subscribed to %s in group %s (%s assignment)", c.name, c.topic,
                 c.group_id, "incremental" if self._incremental else "eager")
        if self.delivery is not None:
            self.delivery.start()
        try:
            waiting_warned = False
            while not self._stop.is_set():
                if self.outage.active:
                    self._wait_for_database()
                    continue
                try:
                    self._ensure_partitions()
                    messages = consumer.consume(c.batch_size, timeout=c.max_wait_s)
                    if messages:
                        self._last_activity = time.monotonic()
                        if self._first_message_at is None:
                            self._first_message_at = self._last_activity
                        self._process(messages)
                    else:
                        self._settle()  # nothing new: let the in-flight batch finish now
                    self._check_logs()
                except DatabaseUnavailable as exc:
                    self._lost_database(exc)
                    continue
                if not waiting_warned and not self.assigned.is_set() and (
                    time.monotonic() - started > _NO_ASSIGNMENT_WARNING_S
                ):
                    waiting_warned = True
                    self._warn_no_assignment()
                if (not messages and stop_when_idle is not None and self._partitions_seen
                        and time.monotonic() - self._last_activity >= stop_when_idle):
                    log.info("no new message for %.1fs: stopping", stop_when_idle)
                    break
        finally:
            try:
                try:
                    self._settle()  # the last batch commits (or is abandoned) first
                except DatabaseUnavailable as exc:
                    log.error("%s: the last batch is read again at the next start", exc)
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
        busy = (last_commit_at - self._first_message_at
                if self._first_message_at is not None and last_commit_at is not None else 0.0)
        return ConsumerReport(self.stats, set(self._partitions_seen), time.monotonic() - started,
                              busy, self._rebalance_callbacks, self._settled_in_rebalance)

    def _process(self, messages: list) -> None:
        built = self.builder.build(messages, self.cursors, datetime.now(UTC))
        self.logs.watch.out_of_range(built.out_of_range)
        for error in built.errors:
            self._log_rate_limited(error.code(), "Kafka error: %s", error)
        batch = built.batch
        if not batch.progress:
            return
        self._unsettled.append(batch.progress)
        batch.encode()  # here, while the writer thread still waits on PostgreSQL (see Batch)
        if self._settle():
            self.inflight.submit(batch, built.counts)
        # else: another consumer moved progress on; every partition was sought back

    def _settle(self) -> bool:
        """Wait for the in-flight batch; True when it committed (or none was in flight).

        False when another consumer moved a partition on: every cursor is back at the
        stored progress and the client sought there. Raises DatabaseUnavailable for what
        waiting can fix; errors no wait can fix (missing schema or rights) end the consumer.
        """
        messages = self.inflight.messages
        try:
            done = self.inflight.wait()
        except StaleProgress as exc:
            log.warning("%s; re-reading from the stored progress", exc)
            with needs_database("reload progress"):
                self.cursors.reload(list(self.cursors))
            self._unsettled.clear()
            self._seek_all()
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

    def _ensure_partitions(self) -> None:
        """The day partitions of the admissible window exist (at start, then hourly:
        `HEARTBEAT_PARTITION_CHECK_S`).

        The scheduled Dagster job does the same; doing it here too means a consumer never
        depends on the scheduler to be able to write tomorrow's readings.
        """
        now = time.monotonic()
        checked = self._partitions_checked_at
        if checked is not None and now - checked < self.config.partition_check_every_s:
            return
        self._settle()
        with needs_database("ensure partitions"):
            created = self.writer.ensure_partitions(self.config.retention)
        if created is None:  # tables locked by a reader: again in a minute
            log.warning("day partitions not checked: the tables are locked; retrying in 60 s")
            now -= self.config.partition_check_every_s - 60
        self._partitions_checked_at = now

    def _check_logs(self) -> None:
        """Ask the broker about the partitions `LogChecks` finds suspect, and act on it. A
        check the broker did not answer in time is tried again on the next round."""
        self._lag, suspects = self.logs.survey(self._cached_end)
        for suspect in suspects:
            if not self._settle():
                return
            tp = TopicPartition(self.config.topic, suspect.partition)
            try:
                listed = self._client.get_watermark_offsets(tp, timeout=_LIST_OFFSETS_TIMEOUT_S)
            except KafkaException as exc:
                self.logs.retry(suspect.partition)
                self._log_rate_limited(("list", suspect.partition),
                                       "partition %d: log start/end not known yet (%s); "
                                       "retrying", suspect.partition, exc)
                continue
            with needs_database("log check"):
                offset = self.logs.act(suspect, listed, self._topic_id())
            if offset is not None:
                self._seek(suspect.partition, offset)

    # -- while the database is away -------------------------------------------------------
    def _lost_database(self, exc: DatabaseUnavailable) -> None:
        """Stop reading until the database is back: every cursor back where the table
        stands as far as this consumer knows, every assigned partition paused and sought
        there, so nothing fetched and not written is passed over."""
        wait = self.outage.failed(time.monotonic())
        log.error("%s; retrying in %.1fs", exc, wait)
        for moves in reversed(self._unsettled):  # the oldest batch's "before" wins
            self.cursors.revert(moves)
        self._unsettled.clear()
        self._client.pause(self._client.assignment())
        self._seek_all()

    def _wait_for_database(self) -> None:
        """Poll only to keep the group and serve rebalances (every partition is paused;
        one sought or assigned meanwhile is paused again, and all are sought on recovery),
        and try the database when the outage's backoff says so."""
        client = self._client
        if client.consume(self.config.batch_size, timeout=_OUTAGE_POLL_S):
            client.pause(client.assignment())
        now = time.monotonic()
        if not self.outage.due(now):
            return
        try:
            with needs_database("reconnect"):
                self.writer.ping()
                self.cursors.reload(list(self.cursors))
                opened = self.cursors.open(sorted(self._unopened)) if self._unopened else {}
        except DatabaseUnavailable as exc:
            log.error("%s; retrying in %.1fs", exc, self.outage.failed(now))
            return
        self._unopened.clear()
        self._watch(opened)
        self._seek_all()
        client.resume(client.assignment())
        self._last_activity = time.monotonic()  # the outage is not idleness
        log.info("database is back after %.1f s: resuming from the stored progress",
                 self.outage.ended(self._last_activity))
        if opened:
            log.info("assigned at offsets %s", {p: position(c) for p, c in opened.items()})

    # -- rebalance ------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle_for_rebalance()
        ids = [tp.partition for tp in partitions]
        opened = None
        if not self.outage.active:
            try:
                with needs_database("load progress"):
                    opened = self.cursors.open(ids)
            except DatabaseUnavailable as exc:
                self._lost_database(exc)
        for tp in partitions:
            tp.offset = position(opened[tp.partition]) if opened else OFFSET_BEGINNING
        self._change_assignment(consumer, add=partitions)
        self._partitions_seen.update(ids)
        self._last_activity = time.monotonic()
        self.assigned.set()
        if not ids:
            return
        if opened is None:  # sought once the database is back and their progress known
            self._unopened.update(ids)
            consumer.pause(partitions)
            log.warning("assigned partitions %s while the database is unavailable: paused "
                        "until it is back", ids)
            return
        # librdkafka keeps a partition's pause across unassign and assign: one paused in an
        # outage, revoked and given back would otherwise never be read again.
        consumer.resume(partitions)
        self._watch(opened)
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
        try:
            self._settle()
        except DatabaseUnavailable as exc:
            self._lost_database(exc)

    def _watch(self, opened: dict) -> None:
        for partition in opened:
            self.logs.watch.assigned(partition, self._cached_end(partition))

    def _drop(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.cursors.pop(tp.partition, None)
            self._unopened.discard(tp.partition)
            self.logs.watch.forget(tp.partition)
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

    # -- the client's position --------------------------------------------------------------
    def _seek_all(self) -> None:
        for partition, cursor in self.cursors.items():
            self._seek(partition, position(cursor))

    def _seek(self, partition: int, offset: int) -> None:
        tp = TopicPartition(self.config.topic, partition, offset)
        try:
            self._client.seek(tp)
            return
        except KafkaException:  # not fetching yet: assign it again at that offset
            pass
        if self._incremental:
            self._client.incremental_unassign([TopicPartition(self.config.topic, partition)])
            moved = [tp]
            self._client.incremental_assign(moved)
        else:
            moved = [TopicPartition(self.config.topic, p, position(c))
                     for p, c in self.cursors.items()]
            moved += [TopicPartition(self.config.topic, p, OFFSET_BEGINNING)
                      for p in self._unopened]
            self._client.assign(moved)
        if self.outage.active:
            self._client.pause(moved)

    def _commit_kafka_offsets(self, force: bool = False) -> None:
        """Tell Kafka what PostgreSQL holds, for lag tools (see `offset_commits`)."""
        due = self.commits.due(time.monotonic(), force)
        if not due:
            return
        offsets = [TopicPartition(self.config.topic, p, offset) for p, offset in due.items()]
        try:
            if force:  # at the end: wait for it
                self._client.commit(offsets=offsets, asynchronous=False)
            else:
                self._client.commit(offsets=offsets, asynchronous=True)
        except Exception as exc:  # noqa: BLE001 - a failed lag commit must not stop ingestion
            self._log_rate_limited("commit", "could not commit offsets to Kafka: %s", exc)

    # -- the broker -----------------------------------------------------------------------
    def _topic_id(self) -> str | None:
        c = self.config
        return topic_id(c.bootstrap_servers, c.topic, c.kafka_overrides)

    def _cached_end(self, partition: int) -> int:
        try:
            return self._client.get_watermark_offsets(
                TopicPartition(self.config.topic, partition), cached=True
            )[1]
        except KafkaException:
            return _UNKNOWN_WATERMARK

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

    def _on_kafka_error(self, error: KafkaError) -> None:
        self.kafka_errors += 1
        self._log_rate_limited(error.code(), "Kafka: %s (retrying)", error.str())

    def _log_rate_limited(self, key: object, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._error_logged_at.get(key, 0.0) >= 10.0:
            self._error_logged_at[key] = now
            log.warning(message, *args)
