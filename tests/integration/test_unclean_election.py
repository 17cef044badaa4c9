"""Unclean leader election with divergence on Apache Kafka 4.4, made to happen for real.

Three brokers and a dedicated controller; the topic's partitions have the replicas [1, 2],
`unclean.leader.election.enable=true` and `min.insync.replicas=1`. The fault:

1. readings A are written and replicated to both brokers;
2. broker 2 is killed: it leaves the ISR; its log ends at T (per partition);
3. readings B go to broker 1 alone (acks=all with an ISR of one: acknowledged);
4. broker 1 is killed, broker 2 comes back and is elected leader uncleanly (its log ends at
   T, under a new leader epoch); readings C are written to it: offsets from T on are now
   other messages;
5. broker 1 comes back: it truncates its log to T and follows.

What "exactly once" means here: every message of the final log is stored exactly once, at
its (partition, offset), under the log epoch of the log that holds it (offsets below T:
the first log; from T on: a new log starting at T). The B readings the consumer stored
before the election were acknowledged and stored: they stay stored once, under the first
log's epoch, at the offsets they had (the broker no longer holds them); the consumer logs
and meters them (heartbeat_consumer_truncated_stored). B readings a consumer never stored
are lost by the broker: one that saw them in the old leader's watermark counts them lost
at the source; the group stopped here before they were written cannot know of them (the
producer's delivery reports are their only record), and the test checks they are nowhere.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from datetime import datetime

import orjson
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, ElectionType, TopicPartition
from confluent_kafka.admin import NewTopic
from prometheus_client import CollectorRegistry

from heartbeat_platform import readiness
from heartbeat_platform.local.apache_kafka import KafkaCluster
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from tests.integration.test_apache_kafka import lost_at_source, metered_consumer, on, wait_isr
from tests.integration.test_kafka_correctness import consumer, produce

log = logging.getLogger(__name__)

PARTITIONS = 3
LOST_BY_BROKER = re.compile(
    r"partition (\d+): the log was truncated at offset (\d+) .*?(\d+) stored messages at "
    r"offsets (\d+)\.\.(\d+) are no longer in the broker's log")


def truncated_stored(registry: CollectorRegistry) -> dict[int, int]:
    """partition -> heartbeat_consumer_truncated_stored_total, as Prometheus would scrape it."""
    return {int(sample.labels["partition"]): int(sample.value)
            for family in registry.collect() if family.name == "heartbeat_consumer_truncated_stored"
            for sample in family.samples if sample.name.endswith("_total")}


def create_unclean_topic(kafka: KafkaCluster, topic: str) -> None:
    """Replicas [1, 2] (leader 1) for every partition; an ISR of one is enough for acks=all,
    and an out-of-sync replica may become the leader."""
    admin = kafka.admin()  # held: a client collected mid-call never answers
    created = admin.create_topics([NewTopic(
        topic, num_partitions=PARTITIONS, replica_assignment=[[1, 2]] * PARTITIONS,
        config={"min.insync.replicas": "1", "unclean.leader.election.enable": "true"},
    )], request_timeout=30)[topic]
    created.result(timeout=30)
    kafka.wait_in_sync(topic)


def elect_uncleanly(kafka: KafkaCluster, topic: str, leader: int, timeout: float = 60) -> None:
    """kafka-leader-election.sh --election-type UNCLEAN until `leader` leads every partition
    (the controller may do it on its own: the topic allows it)."""
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    admin = kafka.admin([leader])
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.elect_leaders(ElectionType.UNCLEAN, partitions).result(timeout=30)
        except Exception as exc:  # noqa: BLE001 - "already elected" is an error too
            log.info("unclean election: %s", exc)
        leaders = {p: lead for p, (lead, _, _) in kafka.partitions(topic).items()}
        if set(leaders.values()) == {leader}:
            return
        assert time.monotonic() < deadline, f"{topic}: leaders {leaders}, wanted {leader}"
        time.sleep(0.5)


def final_log(kafka: KafkaCluster, topic: str) -> dict[tuple[int, int], tuple[bytes, int]]:
    """(partition, offset) -> (value, leader epoch) of every message in the topic's log."""
    reader = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "final-log",
                       "enable.auto.commit": False, "auto.offset.reset": "error"})
    found: dict[tuple[int, int], tuple[bytes, int]] = {}
    try:
        ends = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(PARTITIONS)}
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 60
        while sum(1 for p, o in found if o < ends[p]) < sum(ends.values()):
            assert time.monotonic() < deadline, f"read {len(found)} of {ends}"
            for message in reader.consume(500, timeout=1):
                assert message.error() is None, message.error()
                found[(message.partition(), message.offset())] = (
                    message.value(), message.leader_epoch())
    finally:
        reader.close()
    return found


def identity(value: bytes) -> tuple[str, datetime]:
    event = orjson.loads(value)
    return event["customer_id"], datetime.fromisoformat(event["timestamp"])


STORED = """
WITH logs AS (
    SELECT log_epoch, kafka_partition, start_offset,
           row_number() OVER (PARTITION BY kafka_partition ORDER BY created_at, log_epoch) - 1
               AS nth
    FROM kafka_logs)
SELECT m.customer_id, m.event_timestamp, l.nth, m.kafka_partition, m.kafka_offset
FROM (SELECT customer_id, event_timestamp, log_epoch, kafka_partition, kafka_offset
      FROM heartbeat_records
      UNION ALL SELECT customer_id, event_timestamp, log_epoch, kafka_partition, kafka_offset
      FROM heartbeat_anomalies) m
LEFT JOIN logs l USING (log_epoch, kafka_partition)
"""


def stored_readings(db) -> dict[tuple[str, datetime], list[tuple[int, int, int]]]:
    """reading identity -> the (n-th log, partition, offset) of each row holding it."""
    found: dict[tuple[str, datetime], list[tuple[int, int, int]]] = {}
    for customer, when, nth, partition, offset in db.execute(STORED).fetchall():
        found.setdefault((customer, when), []).append((nth, partition, offset))
    return found


def wait_rows(db, expected: int, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while True:
        rows = sum(len(v) for v in stored_readings(db).values())
        if rows >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


@pytest.fixture
def running_consumer():
    started: list[tuple[HeartbeatConsumer, threading.Thread]] = []

    def start(settings, registry: CollectorRegistry) -> HeartbeatConsumer:
        prepared = readiness.prepare(settings)
        member = HeartbeatConsumer(readiness.consumer_config(settings, prepared.endpoints),
                                   metrics=registry)
        thread = threading.Thread(target=member.run, daemon=True)
        thread.start()
        started.append((member, thread))
        assert member.assigned.wait(60)
        return member

    yield start
    for member, thread in started:
        member.request_stop()
        thread.join(60)


def check_exactly_once(db, final, divergence, lost_stored, lost_unstored) -> dict:
    """Every message of the final log stored once, at its place and in its log (below T
    the first one, from T on the new one); the readings the broker lost after this
    consumer stored them stored once, in the first log; those it lost before: nowhere.
    Returns the rows per reading."""
    stored = stored_readings(db)
    in_log = {identity(value): position for position, (value, _) in final.items()}
    doubled = {k: v for k, v in stored.items() if len(v) > 1}
    assert not doubled, f"{len(doubled)} doubled, e.g. {list(doubled.items())[:3]}"
    missing = {k: pos for k, pos in in_log.items() if k not in stored}
    assert not missing, (f"{len(missing)} of the final log not stored, e.g. "
                         f"{sorted(missing.values())[:5]}")
    for key, (p, o) in in_log.items():
        assert stored[key] == [(0 if o < divergence[p] else 1, p, o)], (key, p, o, stored[key])
    assert all(stored[k][0][0] == 0 for k in lost_stored)
    assert set(stored) == set(in_log) | lost_stored
    assert not lost_unstored & set(stored)
    return stored


def reported_lost(text: str) -> dict[int, int]:
    """partition -> stored messages the consumer logged the broker's log no longer holds."""
    return {int(m.group(1)): int(m.group(3)) for m in LOST_BY_BROKER.finditer(text)}


def test_unclean_election_stores_the_final_log_exactly_once_and_reports_what_the_broker_lost(
    kafka_brokers, settings_factory, database_factory, running_consumer, caplog
):
    """Two consumer groups, each with its own database, see the same election: one runs
    through it (librdkafka validates its fetch position's leader epoch when the leader
    changes), one is stopped before the last readings B2 reach the old leader and started
    again after the election (it seeks with the leader epoch stored with its progress)."""
    kafka = kafka_brokers
    settings = on(kafka, settings_factory, database_factory(), heartbeat_consume_batch_size=500)
    stopped = on(kafka, settings_factory, database_factory(), heartbeat_consume_batch_size=500,
                 kafka_group_id=settings.kafka_group_id + "-stopped")
    topic = settings.kafka_topic
    create_unclean_topic(kafka, topic)
    readiness.prepare(stopped)
    caplog.set_level(logging.INFO)
    registry = CollectorRegistry()
    running = running_consumer(settings, registry)
    with psycopg.connect(settings.database_url, autocommit=True) as db, psycopg.connect(
            stopped.database_url, autocommit=True) as stopped_db:
        a = produce(settings, 1_500, seed=71)  # on both replicas
        assert wait_rows(db, 1_500) == 1_500
        kafka.kill(2)
        wait_isr(kafka, topic, [1])
        divergence = {p: high + 1 for p, (_, high) in a.delivered_offsets.items()}  # T
        b1 = produce(settings, 750, seed=72)  # on broker 1 only, acknowledged
        assert consumer(stopped).run(stop_when_idle=2).stats.messages_consumed == 2_250
        b2 = produce(settings, 750, seed=73)  # the stopped group never reads these
        old = final_log(kafka, topic)
        b1_readings = {identity(v) for (p, o), (v, _) in old.items()
                       if divergence[p] <= o <= b1.delivered_offsets[p][1]}
        b2_readings = {identity(v) for (p, o), (v, _) in old.items()
                       if o > b1.delivered_offsets[p][1]}
        assert (len(b1_readings), len(b2_readings)) == (750, 750)
        assert wait_rows(db, 3_000) == 3_000
        kafka.kill(1)
        kafka.node(2).start()
        kafka.wait_ready(node_ids=[2])
        elect_uncleanly(kafka, topic, leader=2)
        c = produce(settings, 6_000, seed=74)  # the new log from T on, past the old end
        kafka.restart(1)
        kafka.wait_in_sync(topic)

        final = final_log(kafka, topic)
        lost = b1_readings | b2_readings
        assert not lost & {identity(v) for v, _ in final.values()}, "no divergence was made"
        print(f"T={divergence} A={a.delivered_offsets} B1={b1.delivered_offsets} "
              f"B2={b2.delivered_offsets} C={c.delivered_offsets}: final log {len(final)}, "
              f"B lost by the broker {len(lost)}")

        # The running group stored all of B before the election.
        wait_rows(db, len(final) + len(lost), timeout=120)
        running.request_stop()
        rows = check_exactly_once(db, final, divergence, lost, set())
        assert Counter(n for v in rows.values() for n, _, _ in v)[1] == c.delivered == 6_000
        b_per_partition = {p: b2.delivered_offsets[p][1] + 1 - divergence[p]
                           for p in range(PARTITIONS)}
        assert reported_lost(caplog.text) == b_per_partition, caplog.text
        assert truncated_stored(registry) == b_per_partition
        assert lost_at_source(registry) in ({}, dict.fromkeys(range(PARTITIONS), 0))

        # The stopped group stored A and B1; B2 was acknowledged and lost before it read
        # them: no consumer can see them any more (the producer's reports are their record).
        caplog.clear()
        again = CollectorRegistry()
        stats = metered_consumer(stopped, again).run(stop_when_idle=3).stats
        assert stats.messages_consumed == 6_000
        check_exactly_once(stopped_db, final, divergence, b1_readings, b2_readings)
        b1_per_partition = {p: b1.delivered_offsets[p][1] + 1 - divergence[p]
                            for p in range(PARTITIONS)}
        assert reported_lost(caplog.text) == b1_per_partition, caplog.text
        assert truncated_stored(again) == b1_per_partition
