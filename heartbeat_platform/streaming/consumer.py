"""The batch consumer: Kafka -> validate/classify -> PostgreSQL, with an exactly-once effect.

This module is the loop and the rebalance callbacks. Each step they call has one job
elsewhere: `batch_builder` (messages in, rows and progress out), `landing` (a batch into
PostgreSQL on the writer's thread), `cursors` (where each partition stands, and the
progress behind it), `log_checks` (is the stored offset still right for the broker's
log?), `assignment` (the Kafka client's assignment, pauses and commits), `positions`
(where each partition is read from, and which wait paused), `outage` (what a step says
while PostgreSQL is away, and the backoff), `outage_wait` (trying it again, and back at
the stored progress), `day_partitions`, `topic_watch` (was the topic created again?) and
`consumer_report`. The steps never wait for the database: they raise
`DatabaseUnavailable`, and only the loop decides.

One place polls: `run`. Every message it gets is built into a batch, or its partition is
sought back to its cursor before it is read again. While the database is away every
assigned partition is paused and the loop polls only to serve rebalances; when it is back
every partition is sought to the progress stored there before anything is read. The
callbacks make at most one attempt at the database. What survives what: README,
"Guarantees".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, TopicPartition
from prometheus_client import CollectorRegistry

from heartbeat_platform.alerting.delivery import AlertDelivery
from heartbeat_platform.domain.alerts import AlertManager, PipelineStats
from heartbeat_platform.gc_tuning import fewer_gc_pauses
from heartbeat_platform.metrics import ConsumerMetrics, ConsumerSnapshot
from heartbeat_platform.storage.writer import BatchWriter, WriteResult
from heartbeat_platform.streaming.assignment import Assignment
from heartbeat_platform.streaming.batch_builder import BatchBuilder, Cursor
from heartbeat_platform.streaming.consumer_config import (
    ConsumerConfig,
    assigns_incrementally,
    client_settings,
    no_assignment_hint,
)
from heartbeat_platform.streaming.consumer_report import Activity, ConsumerReport
from heartbeat_platform.streaming.cursors import Cursors
from heartbeat_platform.streaming.day_partitions import DayPartitions
from heartbeat_platform.streaming.landing import Landing
from heartbeat_platform.streaming.log_checks import LogChecks
from heartbeat_platform.streaming.outage import DatabaseUnavailable, Outage, needs_database
from heartbeat_platform.streaming.outage_wait import OutageWait
from heartbeat_platform.streaming.positions import Positions
from heartbeat_platform.streaming.quiet_log import QuietLog
from heartbeat_platform.streaming.topic_watch import TopicWatch

__all__ = ["ConsumerReport", "HeartbeatConsumer"]

log = logging.getLogger(__name__)

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
        self.config = c = config
        self.alerts = alerts or AlertManager()
        self.writer = writer or BatchWriter(
            c.database_url, c.group_id, c.topic,
            episode_rules=c.alerting.rules if c.alerting else None,
        )
        self.delivery = AlertDelivery(c.database_url, c.alerting) if c.alerting else None
        self._new_client = client
        self._settings = client_settings(c, self._on_kafka_error)
        self._stop = threading.Event()
        self.assigned = threading.Event()  # set once the group gave this consumer partitions
        self.topics = TopicWatch(c.bootstrap_servers, c.topic, c.kafka_overrides,
                                 c.topic_check_s)
        self.cursors = Cursors(self.writer, c.topic, self.topics.current_id, self._stop.wait)
        self.builder = BatchBuilder(self.alerts, c.retention, c.max_message_bytes)
        self.metrics = ConsumerMetrics(metrics or CollectorRegistry(), lambda: self.snapshot)
        self.landing = Landing(self.writer, self.cursors, c.stats_every, c.name,
                               self.metrics.batch_committed, on_batch)
        self.logs = LogChecks(self.cursors)
        self.positions = Positions(self.cursors, c.topic)
        self.day_partitions = DayPartitions(self.writer, c.retention, c.partition_check_every_s)
        self.outage_wait = OutageWait(Outage(), self.writer, self.cursors, self.positions,
                                      self._open)
        self.activity = Activity()
        self.snapshot = ConsumerSnapshot()  # published by the loop once a round
        self.kafka_errors = 0
        self._quiet = QuietLog(log)
        self._kafka: Assignment | None = None
        self._lag: dict[int, int] = {}

    @property
    def stats(self) -> PipelineStats:
        """The counters of every batch committed so far."""
        return self.landing.inflight.committed

    @property
    def last_reading_at(self) -> datetime | None:
        return self.landing.last_reading_at

    @property
    def outage(self) -> Outage:
        return self.outage_wait.outage

    @property
    def database_unavailable(self) -> bool:
        return self.outage.active

    def request_stop(self) -> None:
        """Finish the current batch and stop; safe from a signal handler or another thread."""
        self._stop.set()

    @property
    def kafka(self) -> Assignment:
        if self._kafka is None:
            raise RuntimeError("the Kafka consumer is not running")
        return self._kafka

    # -- the loop -------------------------------------------------------------------------
    @fewer_gc_pauses()
    def run(self, stop_when_idle: float | None = None) -> ConsumerReport:
        c = self.config
        activity = self.activity = Activity()
        self._join()
        if self.delivery is not None:
            self.delivery.start()
        try:
            while not self._stop.is_set():
                self.snapshot = ConsumerSnapshot(self.stats, self._lag, self.outage.active,
                                                 self.kafka_errors,
                                                 dict(self.cursors.lost_at_source),
                                                 dict(self.cursors.truncated_stored))
                if self.outage.active:
                    self._wait_for_database()
                    continue
                try:
                    self._ensure_partitions()
                    self.positions.validate(self.kafka)
                    messages = self.kafka.client.consume(c.batch_size, timeout=c.max_wait_s)
                    if messages:
                        activity.received(time.monotonic())
                        self._process(messages)
                    else:
                        self._settle()  # nothing new: let the in-flight batch finish now
                    self._check_logs()
                    self._rejoin_if_created_again()
                except DatabaseUnavailable as exc:
                    self._lost_database(exc)
                    continue
                now = time.monotonic()
                if activity.unassigned_too_long(now, self.assigned.is_set(),
                                                _NO_ASSIGNMENT_WARNING_S):
                    log.warning("no partitions assigned %.0f s after joining group %s%s",
                                _NO_ASSIGNMENT_WARNING_S, c.group_id,
                                no_assignment_hint(self._settings))
                if not messages and stop_when_idle is not None and activity.idle(
                        now, stop_when_idle):
                    log.info("no new message for %.1fs: stopping", stop_when_idle)
                    break
        finally:
            self._close(self.kafka.client)
        return activity.report(self.stats, self.landing.inflight.last_commit_at)

    def _join(self) -> None:
        """A new client joins the group and subscribes."""
        c = self.config
        client = self._new_client(self._settings)
        incremental = assigns_incrementally(self._settings)
        self._kafka = Assignment(client, c.topic, incremental, self.positions.offsets)
        client.subscribe([c.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                         on_lost=self._on_lost)
        self.topics.joined(time.monotonic())
        log.info("consumer %s subscribed to %s in group %s (%s assignment)", c.name, c.topic,
                 c.group_id, "incremental" if incremental else "eager")

    def _process(self, messages: list) -> None:
        built = self.builder.build(messages, self.cursors, datetime.now(UTC))
        for partition, text in built.resets.items():
            log.warning("partition %d: the Kafka client reset its position: %s", partition, text)
            self.logs.watch.reset(partition, text)
        for error in built.errors:
            self._quiet.warning(error.code(), "Kafka error: %s", error)
        if not self.landing.take(built):  # another consumer moved progress on
            self._seek_all()
        self._commit_offsets()

    def _settle(self) -> bool:
        """Let the in-flight batch commit; False (every partition sought back to the stored
        progress) when another consumer moved a partition on."""
        if not self.landing.settle():
            self._seek_all()
            return False
        self._commit_offsets()
        return True

    def _ensure_partitions(self) -> None:
        if self.day_partitions.due(now := time.monotonic()):
            self._settle()
            self.day_partitions.ensure(now)

    def _check_logs(self) -> None:
        """Ask the broker about the partitions `LogChecks` finds suspect, and seek where it
        says. A check the broker did not answer in time is tried again on the next round."""
        self._lag, suspects = self.logs.survey(self.kafka.cached_end)
        for suspect in suspects:
            if not self._settle():
                return
            offset = self.logs.check(suspect, self.kafka.listed_offsets, self.topics.current_id)
            if offset is not None:
                self.kafka.seek({suspect.partition: offset}, paused=False)

    def _open(self, partitions: list[int]) -> dict[int, Cursor]:
        """Cursors at the stored progress; a partition the group never read starts where
        its log starts, and what retention deleted before that is counted lost."""
        opened = self.cursors.open(partitions)
        for suspect in self.logs.first_reads(opened):
            self.logs.check(suspect, self.kafka.listed_offsets)
        return opened

    def _rejoin_if_created_again(self) -> None:
        """A topic created again (a new id) is read by a new client: its assignment opens
        the partitions at the stored progress, and the new id starts a new log."""
        current = self.topics.created_again(self.writer.topic_id, time.monotonic())
        if current is None:
            return
        log.warning("topic %s was created again (its id is now %s, was %s): rejoining the "
                    "group with a new client", self.config.topic, current, self.writer.topic_id)
        self._settle()
        self._commit_offsets(force=True)
        self.kafka.client.close()  # revokes what is assigned (`_on_revoke`)
        self._join()

    # -- while the database is away -------------------------------------------------------
    def _lost_database(self, exc: DatabaseUnavailable) -> None:
        """Stop reading until the database is back: every cursor back where the table
        stands as far as this consumer knows, every assigned partition paused and sought
        there, so nothing fetched and not written is passed over."""
        self.outage_wait.failed(exc, time.monotonic())
        self.landing.abandon()
        self.kafka.pause_all()
        self._seek_all()

    def _wait_for_database(self) -> None:
        """Poll only to keep the group and serve rebalances (every partition is paused;
        one sought or assigned meanwhile is paused again, and all are sought on recovery),
        and try the database when the outage's backoff says so."""
        if self.kafka.client.consume(self.config.batch_size, timeout=_OUTAGE_POLL_S):
            self.kafka.pause_all()
        opened = self.outage_wait.attempt(time.monotonic())
        if opened is None:
            return
        self._watch(opened)
        self.positions.recovered(self.kafka, paused=self.outage.active)
        self.kafka.resume()
        self.activity.last = time.monotonic()  # the outage is not idleness
        self.outage_wait.ended(self.activity.last, opened)

    # -- rebalance ------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle_for_rebalance()
        ids = [tp.partition for tp in partitions]
        opened = None
        if not self.outage.active:
            try:
                with needs_database("load progress"):
                    opened = self._open(ids)
            except DatabaseUnavailable as exc:
                self._lost_database(exc)
        self.positions.assigned(partitions, opened)
        self.kafka.add(partitions)
        self.activity.partitions_seen.update(ids)
        self.activity.last = time.monotonic()
        self.assigned.set()
        if not ids:
            return
        if opened is None:  # sought once the database is back and their progress known
            consumer.pause(partitions)
            log.warning("assigned partitions %s while the database is unavailable: paused "
                        "until it is back", ids)
            return
        # librdkafka keeps a partition's pause across unassign and assign: one paused in an
        # outage, revoked and given back would otherwise never be read again.
        self.kafka.resume(partitions)
        self._watch(opened)
        # An assign does not validate an offset with its leader epoch; a seek does, once
        # the partition fetches: until then it stays paused (`Positions.validate`).
        if held := self.positions.hold_for_validation(partitions):
            consumer.pause(held)
        log.info("assigned at offsets %s", {tp.partition: tp.offset for tp in partitions})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle_for_rebalance()  # in-flight work commits or is abandoned, whole, first
        self._commit_offsets(force=True)
        self._drop(partitions)
        log.info("revoked partitions %s", [tp.partition for tp in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Another member may own them already: no commit; the compare-and-set refuses any
        write of ours that comes late."""
        self._settle_for_rebalance()
        self.landing.offsets.forget([tp.partition for tp in partitions])
        self._drop(partitions)
        log.warning("lost partitions %s (session expired)", [tp.partition for tp in partitions])

    def _settle_for_rebalance(self) -> None:
        self.activity.rebalances += 1
        self.activity.settled_in_rebalance += self.landing.inflight.busy
        try:
            self._settle()
        except DatabaseUnavailable as exc:
            self._lost_database(exc)

    def _watch(self, opened: dict) -> None:
        for partition in opened:
            self.logs.watch.assigned(partition, self.kafka.cached_end(partition))

    def _drop(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.cursors.pop(tp.partition, None)
            self.positions.forget(tp.partition)
            self.logs.watch.forget(tp.partition)
        self.kafka.remove(partitions)

    # -- the client's positions and commits -------------------------------------------------
    def _seek_all(self) -> None:
        self.positions.seek_all(self.kafka, paused=self.outage.active)

    def _commit_offsets(self, force: bool = False) -> None:
        """Tell Kafka what PostgreSQL holds, for lag tools (see `offset_commits`)."""
        self.kafka.commit(self.landing.offsets.due(time.monotonic(), force), wait=force)

    def _on_kafka_error(self, error: KafkaError) -> None:
        self.kafka_errors += 1
        self._quiet.warning(error.code(), "Kafka: %s (retrying)", error.str())

    # -- the end ----------------------------------------------------------------------------
    def _close(self, consumer: Consumer) -> None:
        """The last batch commits (or is abandoned), offsets go to Kafka, the client leaves
        the group; what alert delivery did not send goes out after a restart."""
        try:
            try:
                self._settle()
            except DatabaseUnavailable as exc:
                log.error("%s: the last batch is read again at the next start", exc)
            self._commit_offsets(force=True)
        finally:
            self.alerts.flush_banners()
            try:
                consumer.close()
            finally:
                self.landing.close()
                self._kafka = None
                if self.delivery is not None:
                    self.delivery.stop()
