"""The producer against the real broker: what it sends, how it stops, how it recovers,
and how it counts what it could not deliver (read back from the topic to check)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from heartbeat_platform import platform
from heartbeat_platform.domain.generator import HeartbeatGenerator
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.streaming.producer import (
    FAILED,
    UNCERTAIN,
    HeartbeatProducer,
    ProducerConfig,
)
from heartbeat_platform.streaming.topics import ensure_topic


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


def test_every_event_is_delivered_as_json_keyed_by_customer(settings_factory) -> None:
    settings = settings_factory()
    prepared = platform.prepare(settings)
    with HeartbeatProducer(platform.producer_config(settings, prepared.endpoints)) as producer:
        report = producer.run(platform.generator(settings, seed=11), events=2_000)
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


def test_produce_command_flushes_and_reports_when_terminated(settings_factory) -> None:
    settings = settings_factory()
    platform.prepare(settings)
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
