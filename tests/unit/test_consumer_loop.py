"""The consumer's loop against an in-memory broker and a database that fails on demand.

The broker double keeps a log per partition and a position per assigned partition, as a
Kafka client does: a message handed out moves the position, whether or not anybody writes
it; pause stops a partition, seek moves it, rebalances run inside `consume`. The database
double stores positions, moves progress by compare-and-set, and raises the error a lost
connection raises while it is "down". What they show: every message handed out is
written exactly once or read again, whatever the database does and whenever the group
rebalances (the real services' version is tests/integration/test_database_faults.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime

import orjson
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from heartbeat_platform.storage.progress import (
    KafkaLog,
    PartitionProgress,
    StaleProgress,
    StoredProgress,
)
from heartbeat_platform.storage.writer import WriteResult
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.consumer_config import ConsumerConfig
from heartbeat_platform.streaming.outage import Outage

TOPIC = "heartbeat-events"


class Message:
    def __init__(self, partition: int, offset: int, value: bytes):
        self._partition, self._offset, self._value = partition, offset, value

    def error(self):
        return None

    def leader_epoch(self) -> int:
        return 0

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return self._value


class Broker:
    """The logs, shared by every client of the test."""

    def __init__(self, partitions: int = 3):
        self.logs: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
        self.lock = threading.Lock()

    def produce(self, n: int) -> None:
        now = datetime.now(UTC).isoformat()
        with self.lock:
            for i in range(n):
                partition = i % len(self.logs)
                self.logs[partition].append(orjson.dumps(
                    {"customer_id": f"CUST_{i % 10_000 + 1:05d}", "heart_rate": 75,
                     "timestamp": now}))

    def positions(self) -> set[tuple[int, int]]:
        return {(p, o) for p, log in self.logs.items() for o in range(len(log))}


class Client:
    """The part of confluent_kafka.Consumer the loop uses, over `Broker`."""

    def __init__(self, broker: Broker, settings: dict):
        self.broker = broker
        self.incremental = settings.get("partition.assignment.strategy") == "cooperative-sticky"
        self.position: dict[int, int] = {}
        self.paused: set[int] = set()
        self.pending: list[tuple[str, list[int]]] = [("assign", list(broker.logs))]
        self.handed_out = 0
        self.seeks: list[TopicPartition] = []

    def subscribe(self, topics, on_assign, on_revoke, on_lost) -> None:
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def rebalance(self, kind: str, partitions: list[int]) -> None:
        """Served at the next `consume`, as librdkafka serves callbacks."""
        self.pending.append((kind, partitions))

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        while self.pending:
            kind, partitions = self.pending.pop(0)
            self.callbacks[kind](self, [TopicPartition(TOPIC, p) for p in partitions])
        out: list[Message] = []
        with self.broker.lock:
            for partition, at in sorted(self.position.items()):
                if partition in self.paused:
                    continue
                log = self.broker.logs[partition]
                while at < len(log) and len(out) < num_messages:
                    out.append(Message(partition, at, log[at]))
                    at += 1
                self.position[partition] = at
        self.handed_out += len(out)
        if not out:
            time.sleep(min(timeout, 0.005))
        return out

    def _place(self, tps) -> None:
        for tp in tps:
            self.position[tp.partition] = 0 if tp.offset == OFFSET_BEGINNING else tp.offset
            self.paused.discard(tp.partition)

    def assign(self, tps) -> None:
        self.position.clear()
        self._place(tps)

    def incremental_assign(self, tps) -> None:
        self._place(tps)

    def unassign(self) -> None:
        self.position.clear()

    def incremental_unassign(self, tps) -> None:
        for tp in tps:
            self.position.pop(tp.partition, None)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p) for p in self.position]

    def pause(self, tps) -> None:
        self.paused |= {tp.partition for tp in tps}

    def resume(self, tps) -> None:
        self.paused -= {tp.partition for tp in tps}

    def seek(self, tp) -> None:
        assert tp.partition in self.position, "seek of a partition not assigned"
        self.seeks.append(tp)
        self.position[tp.partition] = 0 if tp.offset == OFFSET_BEGINNING else tp.offset

    def get_watermark_offsets(self, tp, cached=False, timeout=None) -> tuple[int, int]:
        return (0, len(self.broker.logs[tp.partition]))

    def commit(self, offsets, asynchronous=True) -> None:
        pass

    def close(self) -> None:
        pass


class Database:
    """What the loop asks of the writer: positions stored once, progress by compare-and-set."""

    def __init__(self):
        self.down = False
        self.rows: Counter = Counter()
        self.progress: dict[int, PartitionProgress] = {}
        self.topic_id = None
        self.episode_rules = None

    def _reach(self) -> None:
        if self.down:
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    def load(self, partitions):
        self._reach()
        return {p: StoredProgress(self.progress[p], None) for p in partitions
                if p in self.progress}

    def load_progress(self, partitions):
        return {p: s.progress for p, s in self.load(partitions).items()}

    def logs(self, partitions):
        self._reach()
        return {p: [KafkaLog(0, None, 0)] for p in partitions}

    def current_or_first_log(self, partition, topic_id):
        return [KafkaLog(0, None, 0)]

    def ensure_partitions(self, policy) -> int:
        self._reach()
        return 0

    def ping(self) -> None:
        self._reach()

    def write(self, batch, extra_metrics=None) -> WriteResult:
        self._reach()
        stale = [p for p, (before, _) in batch.progress.items()
                 if self.progress.get(p) != before]
        if stale:
            raise StaleProgress(stale)
        rows = [(r[4], r[5]) for r in batch.records] + [(a[6], a[7]) for a in batch.anomalies]
        rows += [(d[1], d[2]) for d in batch.dead_letters]
        result = WriteResult(len(batch.records), 0, len(batch.anomalies),
                             len(batch.dead_letters), len(batch.metrics))
        if extra_metrics:
            extra_metrics(result)
        self.rows.update(rows)
        self.progress.update({p: after for p, (_, after) in batch.progress.items()})
        return result

    def close(self) -> None:
        pass


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def start():
    """start(**config) runs a consumer over fresh doubles on a thread; returns (broker,
    client, database, consumer)."""
    running: list[tuple[HeartbeatConsumer, threading.Thread]] = []

    def run(**config) -> tuple[Broker, Client, Database, HeartbeatConsumer]:
        broker, database, clients = Broker(), Database(), []

        def client(settings: dict) -> Client:
            clients.append(Client(broker, settings))
            return clients[-1]

        consumer = HeartbeatConsumer(
            ConsumerConfig("unused:9092", "unused", TOPIC, "group", batch_size=200,
                           max_wait_s=0.01, **config),
            client=client, writer=database,
        )
        consumer.topics.current_id = consumer.cursors.topic_id = lambda: None  # no broker to ask
        consumer.outage_wait.outage = Outage(first_wait_s=0.01, longest_wait_s=0.05)
        runner = threading.Thread(target=consumer.run, daemon=True)
        runner.start()
        running.append((consumer, runner))
        assert wait_for(lambda: clients and consumer.assigned.is_set())
        return broker, clients[0], database, consumer

    yield run
    for consumer, runner in running:
        consumer.request_stop()
        runner.join(10)
        assert not runner.is_alive()


@pytest.fixture
def pipeline(start):
    return start()


def stored_once(broker: Broker, database: Database) -> bool:
    return set(database.rows) == broker.positions() and set(database.rows.values()) == {1}


def test_the_issue_18_reproduction_stores_7000_of_7000(start):
    """3,000 stored; the database stops while the consumer idles and its partition check
    comes due; 3,000 arrive during the outage; it comes back; 1,000 more arrive."""
    broker, client, database, consumer = start(partition_check_every_s=0.05)
    broker.produce(3_000)
    assert wait_for(lambda: len(database.rows) == 3_000)
    database.down = True
    assert wait_for(lambda: consumer.database_unavailable)
    broker.produce(3_000)
    time.sleep(0.2)  # outage polls go by, the partition check is due again and again
    assert set(client.paused) == set(broker.logs), "every partition paused in the outage"
    database.down = False
    assert wait_for(lambda: not consumer.database_unavailable)
    broker.produce(1_000)
    assert wait_for(lambda: len(database.rows) == 7_000), len(database.rows)
    time.sleep(0.1)
    assert stored_once(broker, database)


def test_a_partition_assigned_at_a_stored_leader_epoch_is_sought_with_it_before_reading(
    pipeline,
):
    """An assign skips the client's leader-epoch validation (KIP-320), a seek with the epoch
    of the last stored message does not: the partition waits paused until it is sought."""
    broker, client, database, consumer = pipeline
    broker.produce(300)
    assert wait_for(lambda: len(database.rows) == 300)
    stored = database.progress[0]
    assert stored.leader_epoch == 0  # the last message's, kept with the progress
    client.rebalance("revoke", [0])
    client.rebalance("assign", [0])
    assert wait_for(lambda: any(tp.partition == 0 and tp.leader_epoch == 0 for tp in client.seeks))
    sought = next(tp for tp in client.seeks if tp.partition == 0)
    assert (sought.offset, sought.leader_epoch) == (stored.next_offset, 0)
    assert 0 not in client.paused
    broker.produce(300)
    assert wait_for(lambda: len(database.rows) == 600), len(database.rows)
    assert stored_once(broker, database)


def test_a_batch_abandoned_by_an_outage_is_read_again(pipeline):
    broker, client, database, consumer = pipeline
    database.down = True
    broker.produce(1_000)  # handed out, built, and the write fails
    assert wait_for(lambda: consumer.database_unavailable)
    assert client.handed_out > 0
    time.sleep(0.1)
    database.down = False
    broker.produce(500)
    assert wait_for(lambda: len(database.rows) == 1_500), len(database.rows)
    assert stored_once(broker, database)


def test_partitions_assigned_during_an_outage_wait_for_their_progress(pipeline):
    broker, client, database, consumer = pipeline
    broker.produce(900)
    assert wait_for(lambda: len(database.rows) == 900)
    database.down = True
    broker.produce(900)
    assert wait_for(lambda: consumer.database_unavailable)
    client.rebalance("revoke", [1, 2])  # a member joins: two partitions go...
    client.rebalance("assign", [1, 2])  # ...and come back when it leaves, still down
    assert wait_for(lambda: not client.pending)
    time.sleep(0.1)
    assert {1, 2} <= client.paused, "assigned without progress, so not read"
    database.down = False
    broker.produce(300)
    assert wait_for(lambda: len(database.rows) == 2_100), len(database.rows)
    assert stored_once(broker, database)


def test_another_consumers_progress_is_read_from_not_overwritten(pipeline):
    broker, client, database, consumer = pipeline
    broker.produce(300)
    assert wait_for(lambda: len(database.rows) == 300)
    database.progress[0] = PartitionProgress(0, 150)  # moved on elsewhere: 100..149 written
    database.rows.update((0, o) for o in range(100, 150))
    broker.produce(300)
    assert wait_for(lambda: len(database.rows) == 600), len(database.rows)
    assert stored_once(broker, database)
