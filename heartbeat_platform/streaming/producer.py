"""Generator -> Kafka: JSON values, gzip, key = customer_id, acks=all, idempotent.

Every message ends in exactly one delivery report, counted as delivered or failed. The
producer re-creates itself instead of failing forever when it is stuck: after a fatal
error, or when the broker answers but no delivery report came for `stall_timeout_s`
while messages wait (an idempotent producer whose broker lost its producer ids, e.g.
after a restart of the memory-only embedded broker, otherwise retries for ever). The
messages the old one could not deliver are counted as failed. While the broker does not
answer at all, the producer keeps retrying.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Producer

from heartbeat_platform.domain.events import encode_event
from heartbeat_platform.domain.generator import HeartbeatGenerator
from heartbeat_platform.streaming.gc_tuning import fewer_gc_pauses

log = logging.getLogger(__name__)

CHUNK = 2_000  # events generated and handed to librdkafka at a time


@dataclass
class ProducerReport:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    recreated: int = 0
    seconds: float = 0.0
    # partition -> [lowest, highest] offset delivered, to find these messages downstream
    delivered_offsets: dict[int, list[int]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


@dataclass
class ProducerConfig:
    bootstrap_servers: str
    topic: str
    kafka_overrides: dict = field(default_factory=dict)
    stall_timeout_s: float = 10.0  # no delivery report for this long, broker up: re-create


class HeartbeatProducer:
    def __init__(self, config: ProducerConfig):
        self.config = config
        self.report = ProducerReport()
        self._stop = threading.Event()
        self._fatal: KafkaError | None = None
        self._closed = False
        self._last_report_at = time.monotonic()
        self._producer = self._create()

    def _create(self) -> Producer:
        return Producer(
            {
                "bootstrap.servers": self.config.bootstrap_servers,
                "acks": "all",
                "enable.idempotence": True,
                "compression.type": "gzip",
                # Level 1: half the CPU of the default level 6 for ~20% larger batches on
                # the wire; compression ran on a core the producer's Python needs.
                "compression.level": 1,
                "linger.ms": 20,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": 500_000,
                "error_cb": self._on_error,
                **self.config.kafka_overrides,
            }
        )

    def __enter__(self) -> HeartbeatProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is queued (waiting up to `timeout`), count the rest as failed, and
        release the client: a producer left open keeps reconnecting to a broker that went
        away, and says so in the log."""
        if self._closed:
            return
        self._closed = True
        if self.flush(timeout):
            self._discard(self._producer)
        self._producer.close()

    def request_stop(self) -> None:
        """Stop sending; `run` then flushes what is queued. Safe from a signal handler."""
        self._stop.set()

    # -- sending ----------------------------------------------------------------------------
    def send(self, events: list[dict]) -> None:
        """Queue events; blocks (serving delivery reports) while librdkafka's queue is full."""
        topic, produce, on_delivery = self.config.topic, self._producer.produce, self._on_delivery
        if not len(self._producer):
            self._last_report_at = time.monotonic()  # nothing was waiting: no stall so far
        for event in events:
            key = event["customer_id"]
            value = encode_event(event)
            while True:
                try:
                    produce(topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:
                    self._producer.poll(0.05)
                    if self._recreate_if_stalled():
                        produce, on_delivery = self._producer.produce, self._on_delivery
                except KafkaException as exc:
                    if not exc.args[0].fatal():
                        raise
                    self._fatal = exc.args[0]
                    self._recreate()
                    produce, on_delivery = self._producer.produce, self._on_delivery
            self.report.sent += 1
        self._producer.poll(0)
        if self._fatal is not None:
            self._recreate()
        else:
            self._recreate_if_stalled()

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
        chunk = CHUNK if not rate else max(1, min(CHUNK, int(rate / 100)))
        try:
            while not self._stop.is_set():
                elapsed = time.monotonic() - started
                if duration is not None and elapsed >= duration:
                    break
                remaining = None if events is None else events - self.report.sent
                if remaining is not None and remaining <= 0:
                    break
                n = chunk if remaining is None else min(chunk, remaining)
                if rate:
                    allowed = int(rate * elapsed) - self.report.sent
                    if allowed <= 0:
                        time.sleep(min(0.01, (self.report.sent + 1) / rate - elapsed))
                        self._producer.poll(0)
                        continue
                    n = min(n, allowed)
                self.send(generator.generate_events(n))
                if progress:
                    progress(self.report)
        finally:
            self.flush()
            self.report.seconds = time.monotonic() - started
        return self.report

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding delivery reports; returns how many are still undelivered."""
        deadline = time.monotonic() + timeout
        while True:
            left = self._producer.flush(max(0.0, min(1.0, deadline - time.monotonic())))
            if not left:
                return 0
            if self._fatal is not None:
                self._recreate()
            elif not self._recreate_if_stalled() and time.monotonic() >= deadline:
                log.error("%d messages still undelivered after %.0fs", left, timeout)
                return left

    # -- callbacks ------------------------------------------------------------------------
    def _on_delivery(self, error: KafkaError | None, message) -> None:
        self._last_report_at = time.monotonic()
        if error is not None:
            self.report.failed += 1
            return
        self.report.delivered += 1
        offset = message.offset()
        span = self.report.delivered_offsets.get(message.partition())
        if span is None:
            self.report.delivered_offsets[message.partition()] = [offset, offset]
        elif offset > span[1]:
            span[1] = offset
        elif offset < span[0]:
            span[0] = offset

    @staticmethod
    def _discard(producer: Producer) -> None:
        """Drop what `producer` still holds; each message reports failure to _on_delivery."""
        producer.purge(in_queue=True, in_flight=True)
        producer.flush(5)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        log.warning("Kafka producer: %s", error.str())

    def _recreate_if_stalled(self) -> bool:
        """Re-create the producer when messages wait, no delivery report came for
        `stall_timeout_s` and yet the broker answers; True when it did."""
        now = time.monotonic()
        if now - self._last_report_at < self.config.stall_timeout_s or not len(self._producer):
            return False
        self._last_report_at = now  # check again one timeout from now, whatever happens
        try:
            self._producer.list_topics(timeout=2)  # all topics: naming one may create it
        except KafkaException:
            log.warning("Kafka does not answer; %d messages wait, retrying", len(self._producer))
            return False
        self._recreate(
            f"no delivery report for {self.config.stall_timeout_s:.0f}s although the broker "
            "answers (it may have lost its producer ids, e.g. a memory-only broker restarted)"
        )
        return True

    def _recreate(self, why: str | None = None) -> None:
        log.error(
            "producer stuck: %s; re-creating it, its %d undelivered messages count as failed",
            why or f"fatal error {self._fatal}", len(self._producer),
        )
        old = self._producer
        self._discard(old)
        old.close()
        self._fatal = None
        self._producer = self._create()
        self._last_report_at = time.monotonic()
        self.report.recreated += 1
