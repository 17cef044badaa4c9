"""Rotating the embedded broker's log on the real services: nothing lost, nothing doubled.

Each test has a broker of its own (rotations restart it) in its own state folder, the
folder the producers' handshake lives in; PostgreSQL is the session's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from heartbeat_platform import readiness
from heartbeat_platform.domain.broker_rotation import (
    MB,
    MoveTo,
    Phase,
    Refuse,
    Restart,
)
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.process import read_json
from heartbeat_platform.local.rotation import (
    BrokerGuard,
    BrokerRotation,
    RotationFiles,
    broker_memory,
    broker_status,
)
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.lag import log_end_offsets
from heartbeat_platform.streaming.producer import HeartbeatProducer, ProducerReport
from heartbeat_platform.streaming.topics import describe_topic
from tests.support.stored import landed

WAIT_S = 240  # generous: two shared cores; no test asserts a duration


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(tmp_path / "state" / "broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def rotation_settings(settings_factory, database_url, own_broker) -> Callable:
    def make(**overrides):
        return settings_factory(
            database_url=database_url,
            kafka_bootstrap_servers=own_broker.bootstrap_servers,
            heartbeat_consume_batch_size=2_000,
            **overrides,
        )

    return make


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.2)


class Running:
    """A consumer (and optionally a producer at a steady rate) on threads of this process."""

    def __init__(self, settings):
        self.settings = settings
        self.endpoints = readiness.prepare(settings).endpoints
        self.consumer: HeartbeatConsumer | None = None
        self.producer: HeartbeatProducer | None = None
        self.report: ProducerReport | None = None
        self.consumer_error: BaseException | None = None
        self._threads: list[threading.Thread] = []

    def start_consumer(self) -> None:
        self.consumer = HeartbeatConsumer(readiness.consumer_config(self.settings, self.endpoints))

        def consume():
            try:
                self.consumer.run()
            except BaseException as exc:  # the test says so, rather than hanging
                self.consumer_error = exc
                raise

        self._start(consume, "consumer")
        assert self.consumer.assigned.wait(60), "the consumer got no partitions"

    def start_producer(self, rate: float) -> None:
        config = readiness.producer_config(self.settings, self.endpoints)
        assert config.rotation_dir is not None  # it takes part in the handshake
        self.producer = HeartbeatProducer(config)

        def produce():
            self.report = self.producer.run(readiness.generator(self.settings, 5), rate=rate)

        self._start(produce, "producer")

    def _start(self, target, name) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop_producer(self) -> ProducerReport:
        self.producer.request_stop()
        self._threads[-1].join(60)
        self.producer.close()
        return self.report

    def stored_everything(self, broker: EmbeddedBroker) -> bool:
        rotation = BrokerRotation(self.settings, broker, self.endpoints.database_url)
        ends = log_end_offsets(broker.bootstrap_servers, self.settings.kafka_topic)
        stored = rotation._stored(self.settings.kafka_partitions)
        return all(p in stored and stored[p].next_offset >= end for p, end in ends.items())

    def stop(self) -> None:
        if self.producer is not None:
            self.producer.request_stop()
        if self.consumer is not None:
            self.consumer.request_stop()
        for thread in self._threads:
            thread.join(60)
        if self.producer is not None:
            self.producer.close()


def positions(report: ProducerReport) -> set[tuple[int, int, int]]:
    """(n-th log, partition, offset) of every delivered reading, log by log."""
    logs = [*report.earlier_logs, report.delivered_offsets]
    return {
        (nth, p, o)
        for nth, spans in enumerate(logs)
        for p, (low, high) in spans.items()
        for o in range(low, high + 1)
    }


def test_rotations_under_load_store_every_reading_exactly_once(
    rotation_settings, own_broker, db
) -> None:
    start_mb = broker_memory(own_broker) / MB
    settings = rotation_settings(heartbeat_broker_max_log_mb=int(start_mb) + 3)
    running = Running(settings)
    files = RotationFiles(own_broker.root)
    rotation = BrokerRotation(settings, own_broker, running.endpoints.database_url)
    guard = BrokerGuard(rotation, interval_s=0.5)
    try:
        running.start_consumer()
        running.start_producer(rate=4_000)
        guard.start()
        wait_for(
            lambda: files.read()["rotation"] >= 3 and not rotation.rotating(), "three rotations"
        )
        guard.stop()
        report = running.stop_producer()
        wait_for(lambda: running.stored_everything(own_broker), "the consumer storing the rest")
        consumer_alive = running._threads[0].is_alive()
    finally:
        guard.stop()
        running.stop()

    assert running.consumer_error is None and consumer_alive  # it went on through every one
    assert report.pauses >= 3 and len(report.earlier_logs) >= 3
    assert report.failed == report.uncertain == 0
    assert report.delivered == report.sent
    landed_positions = landed(db)
    assert set(landed_positions.values()) == {1}  # nothing doubled
    assert set(landed_positions) == positions(report)  # nothing lost, each in its own log
    assert len(landed_positions) == report.delivered
    # the topic was created again with the configured partitions each time
    assert describe_topic(own_broker.bootstrap_servers, settings.kafka_topic).partitions == 3


def test_a_rotation_is_refused_while_the_consumer_lags_and_a_crash_mid_way_recovers(
    rotation_settings, own_broker, db
) -> None:
    settings = rotation_settings(
        heartbeat_broker_max_log_mb=1, heartbeat_broker_rotation_max_lag=1_000
    )
    running = Running(settings)
    broker_pid = read_json(own_broker.state_file)["pid"]
    rotation = BrokerRotation(settings, own_broker, running.endpoints.database_url)
    try:
        with HeartbeatProducer(readiness.producer_config(settings, running.endpoints)) as p:
            first = p.run(readiness.generator(settings, 1), events=5_000)
        assert first.delivered == 5_000

        # nobody has stored a reading yet: over the limit, but the log must stay
        action = rotation.step()
        assert isinstance(action, Refuse) and "5,000" in action.reason
        assert not rotation.rotating()
        assert read_json(own_broker.state_file)["pid"] == broker_pid
        assert (
            sum(log_end_offsets(own_broker.bootstrap_servers, settings.kafka_topic).values())
            == 5_000
        )

        running.start_consumer()
        wait_for(lambda: running.stored_everything(own_broker), "the consumer catching up")
        assert isinstance(rotation.step(), MoveTo)  # -> pausing
        assert isinstance(rotation.step(), MoveTo)  # no producer: -> draining
        assert rotation.files.read()["phase"] == Phase.DRAINING

        # `up` dies as it restarts the broker: the phase is written, the broker stopped
        state = rotation.files.read()
        rotation.files.write({**state, "phase": Phase.RESTARTING.value})
        own_broker.stop()

        # the next `up` (a new rotator) finishes the rotation
        again = BrokerRotation(settings, own_broker, running.endpoints.database_url)
        assert again.step() == Restart()
        info = describe_topic(own_broker.bootstrap_servers, settings.kafka_topic)
        assert info is not None and info.partitions == 3  # before any producer resumed
        wait_for(
            lambda: isinstance(again.step(), MoveTo) and not again.rotating(),
            "the consumer moving to the new log",
        )

        with HeartbeatProducer(readiness.producer_config(settings, running.endpoints)) as p:
            second = p.run(readiness.generator(settings, 2), events=3_000)
        assert second.delivered == 3_000
        wait_for(lambda: running.stored_everything(own_broker), "the consumer storing log 2")
    finally:
        running.stop()

    expected = positions(first) | {(1, p, o) for (_, p, o) in positions(second)}
    landed_positions = landed(db)
    assert set(landed_positions.values()) == {1}
    assert set(landed_positions) == expected


def test_status_shows_the_brokers_memory_and_log(rotation_settings, own_broker) -> None:
    settings = rotation_settings(heartbeat_broker_max_log_mb=1)
    endpoints = readiness.prepare(settings).endpoints
    with HeartbeatProducer(readiness.producer_config(settings, endpoints)) as producer:
        producer.run(readiness.generator(settings, 3), events=1_200)
    shown = broker_status(settings, own_broker)
    assert shown["log_messages"] == 1_200
    assert shown["memory_bytes"] > MB
    assert shown["warning"] and "HEARTBEAT_BROKER_MAX_LOG_MB=1" in shown["warning"]
    assert shown["rotation_phase"] == "open"
