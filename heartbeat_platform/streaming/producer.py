"""Generator -> Kafka: JSON values, gzip, key = customer_id, acks=all, idempotent.

Every message ends in exactly one delivery report, counted as one of:

- delivered: the broker acknowledged it (its partition and offset are in the report);
- failed: certainly not in the topic. Its error means it was never written: purged while
  still in the producer's queue (`_PURGE_QUEUE`), or refused as a whole (too large,
  unknown topic, ...), with no connection trouble since it was produced (see below);
- uncertain: possibly in the topic. Purging in flight (`_PURGE_INFLIGHT`) "will ignore any
  subsequent acknowledgement for these messages ... making it impossible for the
  application to know if the messages were successfully produced or not" (rdkafka.h,
  `rd_kafka_purge`); a message that timed out in flight "may be written to the topic log
  by the broker, even though a delivery report with error ERR__MSG_TIMED_OUT will be
  raised" (INTRODUCTION.md, Message timeout considerations). librdkafka keeps each
  message's status (`rd_kafka_message_status`) but confluent-kafka does not expose it, so
  any error not known to mean "never written" counts as uncertain, never as failed.

Waiting is librdkafka's job: with idempotence it retries until the broker acknowledges or
`message.timeout.ms` passes, without duplicates or reordering. So nothing is purged on a
timer: a slow follower under acks=all, a fenced or unreachable broker only delay reports.

The client is re-created only on evidence that waiting cannot end well:
- a fatal error. confluent-kafka raises it from poll/flush (it never reaches `error_cb`);
  librdkafka purges the queue itself and lets in-flight requests finish (INTRODUCTION.md,
  Fatal producer errors), which we wait for (`FATAL_DRAIN_S`) before purging the rest;
- a broker that refuses the producer id at every epoch: the epoch in librdkafka's
  statistics (`eos.producer_epoch`, STATISTICS.md) goes up `LOST_STATE_EPOCH_BUMPS` times
  with not one delivery report in between. On UNKNOWN_PRODUCER_ID for a batch never
  retried, librdkafka bumps the epoch and retries (INTRODUCTION.md,
  RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID). Apache Kafka accepts the bumped epoch; a broker
  that lost all producer state (the memory-only embedded broker after a restart) refuses
  every one, and librdkafka bumps about 30 times a second for ever, with no error, no
  delivery report and no log line unless `debug=eos` is on (measured with librdkafka
  2.16.0). A new client asks for a new producer id.

A purged queued message is not always one never sent: a message put back in the queue to
be retried is "possibly persisted" to librdkafka, yet purged as `_PURGE_QUEUE`. Retries
follow a broken connection or a request timeout (`error_cb` codes `CONNECTION_TROUBLE`)
or a fatal error, so a message produced before one of those counts as uncertain. They also
follow a retriable answer from the broker that reaches no callback: REQUEST_TIMED_OUT from
a leader that appended the write and then waited for followers that died (proven on
Apache Kafka 4.4: such a write stays in the leader's log and is read once they are back).
For those the statistics decide (`transmitted`): per partition, librdkafka counts every
message it put in a request (`txmsgs`, retries included), and with idempotence it sends a
partition's messages in order, so only the first `txmsgs` messages of a partition can
have been sent. After a purge the producer waits for the next statistics and counts a
purged queued message as uncertain when fewer messages of its partition reported before
it than were transmitted. Without statistics (`statistics.interval.ms` 0) that check is
off. The producer purges only after a fatal error, on a refused producer id, in `close`
after its flush timeout, and after a stop's grace.

On the embedded broker (`ProducerConfig.rotation_dir` set) the producer takes part in the
rotation of the broker's log (`heartbeat_platform.local.rotation`): when asked, it flushes,
closes its client (a restarted broker refuses the old producer id), acknowledges, waits,
and starts a new client once the log is open again. Readings are not generated while it
waits; what it could not deliver before pausing is counted as usual.

A stop (`request_stop`: SIGTERM, Ctrl-C; or an interruption such as Dagster's termination
raised through `run`) is prompt even while the broker is down: a send blocked on a full
queue gives up at once, what is queued gets `STOP_FLUSH_S` more to be acknowledged, and
the rest is purged and counted (failed or uncertain, as above) with one log line. Without
that, the queue would wait for `message.timeout.ms` (300 s), and a supervisor that kills the
process first would take those messages with it, uncounted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import CollectorRegistry

from heartbeat_platform.domain.events import encode_event
from heartbeat_platform.domain.generator import HeartbeatGenerator
from heartbeat_platform.gc_tuning import fewer_gc_pauses
from heartbeat_platform.metrics import ProducerCollector
from heartbeat_platform.streaming.kafka_config import refuse_broken_guarantees
from heartbeat_platform.streaming.quiet_log import client_logger

log = logging.getLogger(__name__)

CHUNK = 2_000  # events generated and handed to librdkafka at a time

# librdkafka's default, made explicit: how long a message may wait for its delivery,
# retries included. Long on purpose (librdkafka recommends a large value): a reading that
# arrives minutes late still counts, and a message that times out may still be written.
MESSAGE_TIMEOUT_MS = 300_000
# How often librdkafka reports the producer id and epoch; an override of 0 in
# `kafka_overrides` turns the lost-state check off (fatal errors still re-create).
STATS_INTERVAL_MS = 1_000
# Epoch bumps without a delivery report that prove the broker refuses our producer id: one
# bump is routine on Apache Kafka (an idle producer whose state expired, a timed-out
# message), each followed by deliveries; a broker that lost our state makes ~30 a second.
LOST_STATE_EPOCH_BUMPS = 5
# After a fatal error: how long in-flight requests may take to be acknowledged before the
# new client takes over and they are purged (a request times out after 60 s anyway).
FATAL_DRAIN_S = 30.0
PURGE_SERVE_S = 5.0  # serving the delivery reports of purged messages
# After a stop request: how long what is queued may still be acknowledged before it is
# purged and counted. Short: the process is asked to end (a supervisor may kill it soon),
# and a broker that answers delivers a queue in well under a second.
STOP_FLUSH_S = 5.0

DELIVERED, FAILED, UNCERTAIN = "delivered", "failed", "uncertain"

# Delivery-report errors that mean the broker never wrote the message (librdkafka's
# RD_KAFKA_MSG_STATUS_NOT_PERSISTED for these codes, src/rdkafka_request.c).
NEVER_WRITTEN = frozenset({
    KafkaError._PURGE_QUEUE,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD,
    KafkaError.INVALID_REQUIRED_ACKS,
    KafkaError.POLICY_VIOLATION,
})


# error_cb codes after which a queued message may be a retry of an unanswered send
CONNECTION_TROUBLE = frozenset({
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
})


def delivery_outcome(
    error_code: int | None, trouble_since_sent: bool = False, maybe_sent: bool = False
) -> str:
    """DELIVERED, FAILED (certainly not written) or UNCERTAIN (may be in the topic).

    `trouble_since_sent`: a connection broke, a request timed out or a fatal error came
    after the message was produced, so it may have been sent and queued again for a retry.
    `maybe_sent`: the statistics say it may have been in a request (see `transmitted`), so
    purged from the queue it may be a retry.
    """
    if error_code is None:
        return DELIVERED
    if error_code == KafkaError._PURGE_QUEUE and maybe_sent:
        return UNCERTAIN
    if error_code in NEVER_WRITTEN and not trouble_since_sent:
        return FAILED
    return UNCERTAIN


def transmitted(stats_json: str, topic: str) -> dict[int, int]:
    """partition -> messages librdkafka put in produce requests to it (`txmsgs`: every
    transmission, retries included), from its statistics."""
    partitions = ((orjson.loads(stats_json).get("topics") or {}).get(topic) or {}).get(
        "partitions") or {}
    return {int(p): int(v.get("txmsgs", 0)) for p, v in partitions.items() if int(p) >= 0}


def maybe_sent(partition: int | None, reported_before: int, sent: dict[int, int] | None) -> bool:
    """Whether a message purged from the queue may have been in a request: `reported_before`
    messages of its partition had their delivery report before it, `sent` is `transmitted`
    as of after the purge (None: no statistics came, so it may have been). With idempotence a
    partition's messages are sent in order, so a message at index i was never sent when i is
    at least the number of transmissions."""
    if partition is None or partition < 0:
        return False  # never given a partition: never in a request
    if sent is None:
        return True
    return reported_before < sent.get(partition, 0)


def producer_identity(stats_json: str) -> tuple[int, int] | None:
    """(producer id, epoch) from librdkafka's statistics, None before it has one."""
    eos = orjson.loads(stats_json).get("eos") or {}
    pid, epoch = eos.get("producer_id", -1), eos.get("producer_epoch", -1)
    return (pid, epoch) if pid >= 0 and epoch >= 0 else None


def epoch_bumps(before: tuple[int, int] | None, after: tuple[int, int] | None) -> int:
    """How often the epoch of the same producer id went up between two statistics."""
    if before is None or after is None or before[0] != after[0]:
        return 0
    return max(0, after[1] - before[1])


def recreate_reason(fatal_error: str | None, bumps_without_report: int, waiting: int) -> str | None:
    """Why the client must be re-created, or None to leave the waiting to librdkafka.

    `bumps_without_report`: epoch bumps seen while no delivery report came at all;
    `waiting`: messages the client still holds.
    """
    if fatal_error is not None:
        return f"fatal error: {fatal_error}"
    if waiting and bumps_without_report >= LOST_STATE_EPOCH_BUMPS:
        return (
            f"the broker refused our producer id at {bumps_without_report} epochs in a row "
            "without a delivery report (it lost its producer state, e.g. a memory-only "
            "broker restarted)"
        )
    return None


@dataclass
class ProducerReport:
    sent: int = 0
    delivered: int = 0
    failed: int = 0  # certainly not in the topic
    uncertain: int = 0  # no acknowledgement, but possibly in the topic
    recreated: int = 0
    seconds: float = 0.0
    # partition -> [lowest, highest] offset delivered, to find these messages downstream
    delivered_offsets: dict[int, list[int]] = field(default_factory=dict)
    # the same for each earlier log of the broker, oldest first (one per rotation)
    earlier_logs: list[dict[int, list[int]]] = field(default_factory=list)
    pauses: int = 0  # rotations of the embedded broker's log waited for
    paused_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def undelivered(self) -> int:
        """Messages without an acknowledgement: failed plus uncertain."""
        return self.failed + self.uncertain


@dataclass
class ProducerConfig:
    bootstrap_servers: str
    topic: str
    kafka_overrides: dict = field(default_factory=dict)
    # the embedded broker's state folder: its log rotations pause this producer
    rotation_dir: Path | None = None


class HeartbeatProducer:
    """`on_undelivered(outcome, message)` is called for every failed or uncertain message
    (key, value and error on `message`), e.g. to keep them for a later replay: a failed
    one can be sent again safely, an uncertain one may then be there twice."""

    def __init__(
        self,
        config: ProducerConfig,
        on_undelivered: Callable[[str, Message], None] | None = None,
        metrics: CollectorRegistry | None = None,
    ):
        """`metrics`: a Prometheus registry to report to (see `heartbeat_platform.metrics`)."""
        self.config = config
        if metrics is not None:
            metrics.register(ProducerCollector(lambda: self.report))
        self.report = ProducerReport()
        self._on_undelivered = on_undelivered
        self._stop = threading.Event()
        self._stop_deadline = 0.0  # monotonic time: after a stop, the flush ends by then
        self._closed = False
        self._troubles = 0  # CONNECTION_TROUBLE errors and fatal errors so far
        self._gate = None
        if config.rotation_dir is not None:
            from heartbeat_platform.local.rotation import ProduceGate

            self._gate = ProduceGate(config.rotation_dir)
            self._log_number = self._gate.log_number()
        # acks=all and idempotence are what the counts below rest on (`kafka_config.GUARDS`)
        refuse_broken_guarantees(config.kafka_overrides, "the producer's Kafka overrides")
        self._producer = self._create()

    def _create(self) -> Producer:
        self._fatal: KafkaError | None = None
        self._identity: tuple[int, int] | None = None  # as of the last statistics
        self._bumps = 0  # epoch bumps since the last delivery report
        self._transmitted: dict[int, int] = {}  # `transmitted`, as of the last statistics
        self._stats_seen = 0  # statistics callbacks of this client
        self._reported: dict[int, int] = {}  # partition -> delivery reports of this client
        # during a purge: the purged queued messages, counted once fresh statistics came
        self._deferred: list[tuple[int, KafkaError, Message, int | None, int]] | None = None
        return Producer(
            {
                "bootstrap.servers": self.config.bootstrap_servers,
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": MESSAGE_TIMEOUT_MS,
                "compression.type": "gzip",
                # Level 1: half the CPU of the default level 6 for ~20% larger batches on
                # the wire; compression ran on a core the producer's Python needs.
                "compression.level": 1,
                "linger.ms": 20,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": 500_000,
                "statistics.interval.ms": STATS_INTERVAL_MS,
                "stats_cb": self._on_stats,
                "error_cb": self._on_error,
                "logger": client_logger(),
                **self.config.kafka_overrides,
            }
        )

    def __enter__(self) -> HeartbeatProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is queued (waiting up to `timeout`), purge the rest (queued: failed,
        in flight: uncertain), and release the client: a producer left open keeps
        reconnecting to a broker that went away, and says so in the log."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.flush(timeout):
                self._purge(self._producer, "closing")
            self._producer.close()
        finally:
            if self._gate is not None:
                self._gate.close()

    def request_stop(self) -> None:
        """Stop sending; `run` then waits up to `STOP_FLUSH_S` for what is queued and purges
        (and counts) the rest. Safe from a signal handler."""
        if not self._stop.is_set():
            self._stop_deadline = time.monotonic() + STOP_FLUSH_S
            self._stop.set()

    def _bounded(self, timeout: float) -> float:
        """`timeout`, cut to what is left of the stop's grace once a stop was requested."""
        if not self._stop.is_set():
            return timeout
        return max(0.0, min(timeout, self._stop_deadline - time.monotonic()))

    # -- sending ----------------------------------------------------------------------------
    def send(self, events: list[dict]) -> None:
        """Queue events; blocks (serving delivery reports) while librdkafka's queue is full,
        or while the embedded broker's log is rotated."""
        if self._hold_if_paused():
            return  # stopping while the log is rotated: these events are not sent
        self._poll(0)  # serve pending errors first: the ticket must count every earlier one
        topic, produce = self.config.topic, self._producer.produce
        on_delivery = partial(self._on_delivery, self._troubles)
        for event in events:
            key = event["customer_id"]
            value = encode_event(event)
            while True:
                try:
                    produce(topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:  # the queue is full (a broker down or slow)
                    if self._stop.is_set():
                        return  # stopping: this event and the rest are not sent
                    self._poll(0.05)
                except KafkaException as exc:
                    self._note_fatal(exc)
                if self._recover():
                    produce = self._producer.produce
                    on_delivery = partial(self._on_delivery, self._troubles)
            self.report.sent += 1
        self._poll(0)
        self._recover()

    @fewer_gc_pauses()
    def run(
        self,
        generator: HeartbeatGenerator,
        rate: float | None = None,
        events: int | None = None,
        duration: float | None = None,
        progress: Callable[[ProducerReport], None] | None = None,
    ) -> ProducerReport:
        """Send until `events` are sent, `duration` seconds pass, or a stop is requested.

        `rate` is events per second (None or 0: as fast as possible). Each call reports
        on its own events (`self.report` starts afresh).
        """
        self.report = ProducerReport()
        started = time.monotonic()
        try:
            self._send_until_done(generator, rate, events, duration, progress, started)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # an interruption (Dagster's termination,
                self.request_stop()             # KeyboardInterrupt): a stop, and a prompt one
            raise
        finally:
            self._finish()
            self.report.seconds = time.monotonic() - started
        return self.report

    def _send_until_done(
        self,
        generator: HeartbeatGenerator,
        rate: float | None,
        events: int | None,
        duration: float | None,
        progress: Callable[[ProducerReport], None] | None,
        started: float,
    ) -> None:
        chunk = CHUNK if not rate else max(1, min(CHUNK, int(rate / 100)))
        while not self._stop.is_set():
            elapsed = time.monotonic() - started
            if duration is not None and elapsed >= duration:
                break
            remaining = None if events is None else events - self.report.sent
            if remaining is not None and remaining <= 0:
                break
            n = chunk if remaining is None else min(chunk, remaining)
            if rate:
                elapsed -= self.report.paused_seconds  # no catching up after a pause
                allowed = int(rate * elapsed) - self.report.sent
                if allowed <= 0:
                    time.sleep(max(0.0, min(0.01, (self.report.sent + 1) / rate - elapsed)))
                    self._poll(0)
                    self._hold_if_paused()
                    continue
                n = min(n, allowed)
            self.send(generator.generate_events(n))
            if progress:
                progress(self.report)

    def _finish(self) -> None:
        """The end of a run: wait for the delivery reports (`flush`); after a stop, purge
        what is left once the stop's grace is over, so the run's report counts every
        message it sent, and say so in one line."""
        left = self.flush()
        if not (left and self._stop.is_set()):
            return
        failed, uncertain = self._purge(self._producer, "stopping", log_it=False)
        r = self.report
        log.error(
            "stopping: %d messages still without a delivery report %.0f s after the stop "
            "request were purged: %d failed (never sent), %d uncertain (may be in the topic); "
            "this run sent %d: %d delivered, %d failed, %d uncertain",
            left, STOP_FLUSH_S, failed, uncertain, r.sent, r.delivered, r.failed, r.uncertain,
        )

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding delivery reports; returns how many are still outstanding.

        Nothing is purged here: what is left stays with librdkafka, which keeps retrying.
        After a stop request it ends when the stop's grace (`STOP_FLUSH_S`) is over.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = self._bounded(deadline - time.monotonic())
            left = self._serve(self._producer, max(0.0, min(1.0, remaining)))
            if not left:
                return 0
            if not self._recover() and self._bounded(deadline - time.monotonic()) <= 0:
                if not self._stop.is_set():  # a stop's purge says it in its own line
                    log.warning("%d messages still without a delivery report after %.0fs",
                                left, timeout)
                return left

    # -- the embedded broker's rotation ----------------------------------------------------
    def _hold_if_paused(self) -> bool:
        """Pause for a rotation of the embedded broker's log: flush, close the client,
        acknowledge, wait until the log is open, then send with a new client. True when
        nothing may be sent (a stop was requested while paused)."""
        gate = self._gate
        if gate is None or not gate.paused():
            return False
        if self._stop.is_set():
            return True
        started = time.monotonic()
        log.info("the embedded broker's log is to be rotated: flushing and pausing")
        if self.flush():
            self._purge(self._producer, "pausing for the broker's rotation")
        self._producer.close()
        gate.acknowledge()
        try:
            gate.wait_until_open(self._stop)
        finally:
            self._producer = self._create()
            self.report.pauses += 1
            self.report.paused_seconds += time.monotonic() - started
            number = gate.log_number()
            if number != self._log_number:  # a new log: its offsets start again
                self._log_number = number
                self.report.earlier_logs.append(self.report.delivered_offsets)
                self.report.delivered_offsets = {}
        if gate.paused():
            return True
        log.info("resuming after %.1f s paused for the broker's rotation",
                 time.monotonic() - started)
        return False

    # -- callbacks ------------------------------------------------------------------------
    def _on_delivery(self, ticket: int, error: KafkaError | None, message: Message) -> None:
        """`ticket`: `self._troubles` when the message was produced."""
        self._bumps, self._identity = 0, None  # a report: bumps so far prove nothing
        partition = message.partition()
        before = 0
        if partition is not None and partition >= 0:
            before = self._reported.get(partition, 0)
            self._reported[partition] = before + 1
        if (self._deferred is not None and error is not None
                and error.code() == KafkaError._PURGE_QUEUE):
            self._deferred.append((ticket, error, message, partition, before))
            return
        self._count(ticket, error, message)

    def _count(self, ticket: int, error: KafkaError | None, message: Message,
               sent: bool = False) -> None:
        if error is not None:
            outcome = delivery_outcome(error.code(), self._troubles > ticket, sent)
            if outcome == FAILED:
                self.report.failed += 1
            else:
                self.report.uncertain += 1
            if self._on_undelivered is not None:
                self._on_undelivered(outcome, message)
            return
        self.report.delivered += 1
        partition, offset = message.partition(), message.offset()
        assert partition is not None and offset is not None  # set on every delivered message
        span = self.report.delivered_offsets.get(partition)
        if span is None:
            self.report.delivered_offsets[partition] = [offset, offset]
        elif offset > span[1]:
            span[1] = offset
        elif offset < span[0]:
            span[0] = offset

    def _on_stats(self, stats_json: str) -> None:
        self._transmitted = transmitted(stats_json, self.config.topic)
        self._stats_seen += 1
        identity = producer_identity(stats_json)
        self._bumps += epoch_bumps(self._identity, identity)
        self._identity = identity

    def _on_error(self, error: KafkaError) -> None:
        """Non-fatal errors only: confluent-kafka raises fatal ones from poll and flush."""
        if error.code() in CONNECTION_TROUBLE:
            self._troubles += 1
        log.warning("Kafka producer: %s", error.str())

    def _note_fatal(self, exc: KafkaException) -> None:
        """Keep a fatal error for `_recover`; raise any other. After the fatal error itself,
        `produce` raises `_FATAL` errors that are not flagged fatal."""
        error = exc.args[0]
        if not (error.fatal() or error.code() == KafkaError._FATAL):
            raise exc
        log.error("Kafka producer: fatal error: %s", error.str())
        self._fatal = error
        self._troubles += 1

    def _poll(self, timeout: float) -> None:
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:
            self._note_fatal(exc)

    def _serve(self, producer: Producer, timeout: float) -> int:
        """Serve callbacks until `producer` holds nothing or `timeout` passes; returns what
        it still holds. A loop of polls, not `flush`: flush goes on calling our callbacks
        after confluent-kafka raised a fatal error, with the exception still pending, and
        the first call into a Message then fails with SystemError (seen with 2.16.1)."""
        deadline = time.monotonic() + timeout
        try:
            while len(producer) and (remaining := deadline - time.monotonic()) > 0:
                producer.poll(min(remaining, 0.1))
        except KafkaException as exc:
            self._note_fatal(exc)
        return len(producer)

    # -- recovery ---------------------------------------------------------------------------
    def _recover(self) -> bool:
        """Re-create the client when `recreate_reason` says so; True when it did."""
        fatal = self._fatal
        fatal_text = fatal.str() if fatal is not None else None
        reason = recreate_reason(fatal_text, self._bumps, len(self._producer))
        if reason is None:
            return False
        log.error("re-creating the Kafka producer: %s", reason)
        old = self._producer
        if fatal is not None:
            # in-flight requests may still be acknowledged (not past a stop's grace)
            self._serve(old, self._bounded(FATAL_DRAIN_S))
        self._purge(old, "re-creating the producer")
        old.close()
        self._producer = self._create()
        self.report.recreated += 1
        return True

    def _stats_interval_ms(self) -> int:
        return int(self.config.kafka_overrides.get("statistics.interval.ms", STATS_INTERVAL_MS))

    def _transmitted_after_purge(self, producer: Producer) -> dict[int, int] | None:
        """`transmitted` from the first statistics after a purge (nothing is sent after
        it, so they count every transmission); None when none came in time or statistics
        are off."""
        interval = self._stats_interval_ms()
        if interval <= 0:
            return None
        seen, deadline = self._stats_seen, time.monotonic() + 2 * interval / 1000 + 1
        try:
            while self._stats_seen == seen and time.monotonic() < deadline:
                producer.poll(0.1)
        except KafkaException as exc:
            self._note_fatal(exc)
        return dict(self._transmitted) if self._stats_seen != seen else None

    def _purge(self, producer: Producer, why: str, log_it: bool = True) -> tuple[int, int]:
        """Drop what `producer` still holds; each message reports to `_on_delivery`: queued
        ones as failed, in-flight ones, and queued ones that may be retries (produced before
        connection trouble, or within what the statistics say was transmitted: counted once
        the next statistics came, `maybe_sent`) as uncertain. Returns how many of each."""
        waiting = len(producer)
        if not waiting:
            return 0, 0
        failed, uncertain = self.report.failed, self.report.uncertain
        self._deferred = []
        try:
            producer.purge(in_queue=True, in_flight=True)
            self._serve(producer, PURGE_SERVE_S)
            sent = self._transmitted_after_purge(producer)
        finally:
            deferred, self._deferred = self._deferred or [], None
        for ticket, error, message, partition, before in deferred:
            may = self._stats_interval_ms() > 0 and maybe_sent(partition, before, sent)
            self._count(ticket, error, message, may)
        failed, uncertain = self.report.failed - failed, self.report.uncertain - uncertain
        if log_it:
            log.error("%s: purged %d messages: %d failed (never sent), %d uncertain (may be in "
                      "the topic)", why, waiting, failed, uncertain)
        return failed, uncertain
