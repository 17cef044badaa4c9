"""The guarantees on the broker users run: Apache Kafka 4.4 (KRaft), one node and three.

Every test makes its fault happen on the real broker (a node killed with -9, the leader of
a partition killed mid-stream) and counts every acknowledged reading against the rows in
PostgreSQL: none missing, none doubled. The brokers come from tests/apache_kafka_fixtures.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupType,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from prometheus_client import CollectorRegistry

from heartbeat_platform import readiness
from heartbeat_platform.local.apache_kafka import KafkaCluster
from heartbeat_platform.local.services import Endpoints
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.producer import HeartbeatProducer
from heartbeat_platform.streaming.topics import topic_layout
from tests.integration.test_kafka_correctness import consumer, produce
from tests.support.pipeline import ConsumerProcess, assert_exactly_once, produce_in_background
from tests.support.stored import delivered_positions, landed


def on(kafka: KafkaCluster, settings_factory, database_url: str, **overrides):
    """The test's settings, pointed at this Apache Kafka instead of the embedded broker."""
    return settings_factory(database_url=database_url,
                            kafka_bootstrap_servers=kafka.bootstrap_servers, **overrides)


def wait_stored(db, expected: int, timeout: float = 180) -> int:
    """Rows in the three tables, once they reach `expected` (or the time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        stored = sum(landed(db).values())
        if stored >= expected or time.monotonic() > deadline:
            return stored
        time.sleep(0.5)


def stop(consumer_process: ConsumerProcess) -> None:
    """SIGTERM: the consumer finishes its batch, commits and exits 0."""
    consumer_process.proc.send_signal(signal.SIGTERM)
    code, _ = consumer_process.finish(120)
    assert code == 0, consumer_process.text()


@pytest.fixture
def consumers():
    """Starts `ConsumerProcess`es; any still running when the test ends is killed, so a
    failed test leaves no consumer behind to reconnect to the next test's broker."""
    started: list[ConsumerProcess] = []

    def start(settings, *args: str, **kwargs) -> ConsumerProcess:
        started.append(ConsumerProcess(settings, *args, **kwargs))
        return started[-1]

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.kill()


class Producing:
    """The platform's producer (acks=all, idempotent) in a thread until `stop()`."""

    def __init__(self, settings, rate: float, seed: int):
        endpoints = Endpoints(settings.database_url, settings.kafka_bootstrap_servers)
        self.producer = HeartbeatProducer(readiness.producer_config(settings, endpoints))
        self.reports: list = []
        self.thread = threading.Thread(target=self._run, args=(settings, rate, seed),
                                       daemon=True)
        self.thread.start()

    def _run(self, settings, rate: float, seed: int) -> None:
        with self.producer:
            self.reports.append(self.producer.run(readiness.generator(settings, seed),
                                                  rate=rate))

    def stop(self, timeout: float = 300):
        self.producer.request_stop()
        self.thread.join(timeout)
        assert self.reports, "the producer did not finish"
        return self.reports[0]


def test_the_pipeline_end_to_end_on_one_node(apache_kafka, settings_factory, database_url, db):
    settings = on(apache_kafka, settings_factory, database_url)
    report = produce(settings, 20_000, seed=19)  # acks=all, idempotent: every one delivered
    stats = consumer(settings).run(stop_when_idle=2).stats
    assert stats.messages_consumed == 20_000
    assert_exactly_once(db, delivered_positions([report]))


def test_a_node_killed_and_restarted_mid_stream_keeps_its_log_and_loses_nothing(
    apache_kafka, settings_factory, database_url, db
):
    """kill -9 of the only broker while producing and consuming: the producer retries until
    it is back, the log survives the restart (unlike the embedded broker's), and the
    consumer goes on from where the database says, without a new log epoch."""
    settings = on(apache_kafka, settings_factory, database_url, heartbeat_consume_batch_size=500)
    readiness.prepare(settings)
    running = ConsumerProcess(settings)
    assert running.assigned.wait(60), running.text()
    producing, produced = produce_in_background(settings, rate=2_000, events=16_000, seed=4)
    time.sleep(2)
    apache_kafka.kill(1)
    time.sleep(2)
    apache_kafka.restart(1)
    producing.join(300)
    report = produced[0]
    assert (report.delivered, report.failed, report.uncertain) == (16_000, 0, 0)
    assert wait_stored(db, 16_000) == 16_000, running.text()
    stop(running)
    assert_exactly_once(db, delivered_positions(produced))
    # one log per partition: the restart did not look like a reset log
    assert db.execute("SELECT count(*) FROM kafka_logs").fetchone()[0] == 3


def test_killing_the_leader_of_a_partition_three_times_mid_stream_loses_nothing(
    kafka_cluster, settings_factory, database_url, db
):
    """RF 3, min.insync.replicas 2, acks=all: the leader of partition 0 is killed with -9
    three times while readings are produced and consumed, and restarted each time."""
    settings = on(kafka_cluster, settings_factory, database_url, heartbeat_consume_batch_size=500)
    readiness.prepare(settings)
    topic = settings.kafka_topic
    layout = topic_layout(kafka_cluster.bootstrap_servers, topic, wait_s=10)
    assert layout is not None
    assert (layout.replication_factor, layout.min_insync_replicas) == (3, 2)
    kafka_cluster.wait_in_sync(topic)
    running = ConsumerProcess(settings)
    assert running.assigned.wait(60), running.text()
    producing = Producing(settings, rate=1_500, seed=7)
    killed = []
    for _ in range(3):
        time.sleep(2)  # readings flow through this leader first
        leader = kafka_cluster.wait_for_leader(topic, 0)
        kafka_cluster.kill(leader)
        killed.append(leader)
        kafka_cluster.wait_for_leader(topic, 0, not_on=leader)
        kafka_cluster.restart(leader)
        kafka_cluster.wait_in_sync(topic)
    time.sleep(1)
    report = producing.stop()
    assert report.delivered > 10_000 and (report.failed, report.uncertain) == (0, 0), report
    assert wait_stored(db, report.delivered) == report.delivered, running.text()
    stop(running)
    assert_exactly_once(db, delivered_positions([report]))
    assert len(killed) == 3


def _init_db(env: dict[str, str], tmp_path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heartbeat_platform", "init-db"],
        env={**env, **extra}, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )


def test_init_db_gives_the_topic_three_copies_and_min_insync_2_on_three_brokers(
    kafka_cluster, cli_env, tmp_path
):
    done = _init_db(cli_env, tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_cluster.bootstrap_servers)
    assert done.returncode == 0, done.stderr
    topic = cli_env["KAFKA_TOPIC"]
    assert (f"topic {topic} created: 3 partitions, replication factor 3, "
            "min.insync.replicas 2") in done.stdout
    partitions = kafka_cluster.partitions(topic)
    assert sorted(partitions) == [0, 1, 2]
    assert all(sorted(replicas) == [1, 2, 3] for _, replicas, _ in partitions.values())
    layout = topic_layout(kafka_cluster.bootstrap_servers, topic, wait_s=10)
    assert layout is not None and layout.min_insync_replicas == 2

    again = _init_db(cli_env, tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_cluster.bootstrap_servers)
    assert again.returncode == 0, again.stderr
    assert f"topic {topic} exists: 3 partitions, replication factor 3" in again.stdout


def test_init_db_takes_the_copies_from_the_settings(kafka_cluster, cli_env, tmp_path):
    done = _init_db(cli_env, tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_cluster.bootstrap_servers,
                    HEARTBEAT_TOPIC_REPLICATION_FACTOR="2",
                    HEARTBEAT_TOPIC_MIN_INSYNC_REPLICAS="1")
    assert done.returncode == 0, done.stderr
    topic = cli_env["KAFKA_TOPIC"]
    assert "replication factor 2, min.insync.replicas 1" in done.stdout
    assert all(len(replicas) == 2 for _, replicas, _ in kafka_cluster.partitions(topic).values())


def test_init_db_on_one_node_gives_one_copy_and_the_brokers_min_insync(
    apache_kafka, cli_env, tmp_path
):
    done = _init_db(cli_env, tmp_path, KAFKA_BOOTSTRAP_SERVERS=apache_kafka.bootstrap_servers)
    assert done.returncode == 0, done.stderr
    topic = cli_env["KAFKA_TOPIC"]
    # nothing set on the topic: a stock broker's min.insync.replicas is 1
    assert (f"topic {topic} created: 3 partitions, replication factor 1, "
            "min.insync.replicas 1") in done.stdout
    status = subprocess.run(
        [sys.executable, "-m", "heartbeat_platform", "status", "--json"],
        env={**cli_env, "KAFKA_BOOTSTRAP_SERVERS": apache_kafka.bootstrap_servers},
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert json.loads(status.stdout)["ok"] is True, status.stdout


def described_group(kafka: KafkaCluster, group_id: str, members: int, timeout: float = 60):
    """The group as the broker describes it, once it has `members` members (or the time is
    up: the caller asserts)."""
    admin = kafka.admin()  # held in a variable: a client collected mid-call never answers
    deadline = time.monotonic() + timeout
    while True:
        group = admin.describe_consumer_groups([group_id], request_timeout=10)[group_id].result()
        if len(group.members) == members or time.monotonic() > deadline:
            return group
        time.sleep(0.5)


def test_kip_848_consumers_joining_leaving_and_killed_store_every_reading_once(
    apache_kafka, settings_factory, database_url, db, consumers
):
    """group.protocol=consumer (the broker assigns, incrementally): a second and a third
    consumer join mid-stream, one is killed with -9, one leaves, a fourth joins."""
    settings = on(apache_kafka, settings_factory, database_url, heartbeat_consume_batch_size=500,
                  kafka_group_protocol="consumer")
    readiness.prepare(settings)
    kip_848 = {"KAFKA_GROUP_PROTOCOL": "consumer"}
    first = consumers(settings, env=kip_848)
    assert first.assigned.wait(60), first.text()
    producing = Producing(settings, rate=2_000, seed=848)
    try:
        time.sleep(2)
        second, third = consumers(settings, env=kip_848), consumers(settings, env=kip_848)
        assert second.assigned.wait(60), second.text()
        assert third.assigned.wait(60), third.text()
        time.sleep(2)
        second.kill()  # its partitions move once the broker ends its session (6 s)
        time.sleep(2)
        stop(third)  # leaves the group
        fourth = consumers(settings, env=kip_848)
        assert fourth.assigned.wait(60), fourth.text()
        group = described_group(apache_kafka, settings.kafka_group_id, members=2)
        assert group.type == ConsumerGroupType.CONSUMER  # KIP-848, not the classic protocol
        assert len(group.members) == 2, group.members  # first and fourth: second's session ended
        time.sleep(3)
    finally:
        report = producing.stop()
    assert report.delivered > 5_000 and (report.failed, report.uncertain) == (0, 0), report
    assert wait_stored(db, report.delivered) == report.delivered, first.text() + fourth.text()
    stop(first)
    stop(fourth)
    assert_exactly_once(db, delivered_positions([report]))


def wait_isr(kafka: KafkaCluster, topic: str, isr: list[int], timeout: float = 60) -> None:
    """Until every partition of the topic has exactly these in-sync replicas."""
    deadline = time.monotonic() + timeout
    partitions: dict = {}
    while time.monotonic() < deadline:
        try:
            partitions = kafka.partitions(topic)
        except Exception:  # a broker just killed: ask again
            partitions = {}
        if partitions and all(sorted(i) == isr for _, _, i in partitions.values()):
            return
        time.sleep(0.3)
    raise AssertionError(f"{topic}: ISRs not {isr} after {timeout:.0f} s: {partitions}")


def log_size(kafka: KafkaCluster, topic: str) -> int:
    """Messages in the topic's log: from each partition's start to its high watermark."""
    reader = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "log-size"})
    try:
        total = 0
        for p in kafka.partitions(topic):
            low, high = reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        reader.close()


def produce_once_with_acks_all(bootstrap_servers: str, topic: str) -> KafkaError | None:
    """One message, acks=all, not retried: the broker's own answer to it."""
    probe = Producer({"bootstrap.servers": bootstrap_servers, "acks": "all", "retries": 0,
                      "enable.idempotence": False, "message.timeout.ms": 30_000})
    answers: list = []
    probe.produce(topic, b"probe", b"probe", partition=0,
                  on_delivery=lambda error, _: answers.append(error))
    probe.flush(40)
    assert answers, "no delivery report for the probe"
    return answers[0]


PRODUCED = re.compile(r"sent ([\d,]+)\s+delivered ([\d,]+)\s+failed ([\d,]+)\s+uncertain ([\d,]+)")


def test_two_of_three_brokers_down_refuse_acks_all_and_the_producer_counts_stay_honest(
    kafka_brokers, settings_factory, database_url, db, consumers, tmp_path
):
    """RF 3, min.insync.replicas 2, acks=all, two brokers killed with -9: the last one
    refuses every write (NOT_ENOUGH_REPLICAS). A producer that goes on through the outage
    delivers all once they are back, and counts delivered exactly what the log holds;
    `heartbeat-platform produce` stopped with SIGTERM during the outage exits with its
    counts, and its topic's log holds its delivered and at most its uncertain ones."""
    settings = on(kafka_brokers, settings_factory, database_url, heartbeat_consume_batch_size=500)
    stopped = on(kafka_brokers, settings_factory, database_url,
                 kafka_topic=settings.kafka_topic + "-stopped")
    for each in (settings, stopped):
        readiness.prepare(each)
        layout = topic_layout(kafka_brokers.bootstrap_servers, each.kafka_topic, wait_s=10)
        assert layout is not None
        assert (layout.replication_factor, layout.min_insync_replicas) == (3, 2)
        kafka_brokers.wait_in_sync(each.kafka_topic)
    running = consumers(settings)
    assert running.assigned.wait(60), running.text()
    producing = Producing(settings, rate=1_000, seed=22)
    cli = subprocess.Popen(
        [sys.executable, "-m", "heartbeat_platform", "produce", "--rate", "500", "--seed", "23"],
        env={**os.environ, "DATABASE_URL": database_url, "HEARTBEAT_LOG_FORMAT": "text",
             "KAFKA_BOOTSTRAP_SERVERS": kafka_brokers.bootstrap_servers,
             "KAFKA_TOPIC": stopped.kafka_topic, "COLUMNS": "200"},
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while log_size(kafka_brokers, stopped.kafka_topic) == 0 or not landed(db):
            assert cli.poll() is None and time.monotonic() < deadline, cli.communicate()
            time.sleep(0.3)
        kafka_brokers.kill(2)
        kafka_brokers.kill(3)
        for each in (settings, stopped):  # the controller fenced them: one copy left
            wait_isr(kafka_brokers, each.kafka_topic, [1])
        refused = produce_once_with_acks_all(kafka_brokers.node(1).bootstrap_servers,
                                             settings.kafka_topic)
        assert refused is not None and refused.code() == KafkaError.NOT_ENOUGH_REPLICAS, refused
        assert cli.poll() is None, cli.communicate()
        cli.send_signal(signal.SIGTERM)  # during the outage, its queue waiting for replicas
        try:
            out, err = cli.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            cli.kill()
            raise AssertionError("produce did not exit within 60 s of SIGTERM") from None
        for node_id in (2, 3):
            kafka_brokers.node(node_id).start()
        kafka_brokers.wait_ready(node_ids=[2, 3])
        for each in (settings, stopped):
            kafka_brokers.wait_in_sync(each.kafka_topic)
        live = producing.producer.report
        deadline = time.monotonic() + 60
        while live.sent - live.delivered > 1_000 and time.monotonic() < deadline:
            time.sleep(0.3)  # the outage's backlog delivered
    finally:
        report = producing.stop()
    # the producer that went on: everything delivered once the brokers were back, and the
    # log holds exactly what it counted delivered, each stored once
    assert (report.failed, report.uncertain) == (0, 0), report
    assert report.delivered == report.sent > 5_000, report
    assert log_size(kafka_brokers, settings.kafka_topic) == report.delivered
    assert wait_stored(db, report.delivered) == report.delivered, running.text()
    stop(running)
    assert_exactly_once(db, delivered_positions([report]))
    # the producer stopped during the outage: counts printed, exit 1 (some undelivered),
    # none counted delivered or failed that the log contradicts
    assert cli.returncode == 1, err
    found = PRODUCED.search(out)
    assert found, out + err
    sent, delivered, failed, uncertain = (int(g.replace(",", "")) for g in found.groups())
    assert sent == delivered + failed + uncertain and failed + uncertain > 0, out
    in_log = log_size(kafka_brokers, stopped.kafka_topic)
    print(f"went on: {report}\nstopped: {out.strip()}, its log holds {in_log}")
    assert delivered <= in_log <= delivered + uncertain, (out, in_log)



def test_produce_stopped_while_its_leader_waits_for_dead_followers_counts_no_written_one_failed(
    kafka_brokers, settings_factory, database_url, tmp_path
):
    """Broker 1 leads every partition and is the only broker the producer talks to; its
    two followers are killed with -9 while acks=all writes wait for them, so the client
    sees no connection trouble at all. Writes the leader appended stay in its log (and
    are read once the followers are back); `produce` stopped with SIGTERM during the
    outage must not count any of them failed ("certainly not in the topic")."""
    settings = on(kafka_brokers, settings_factory, database_url)
    topic = settings.kafka_topic
    admin = kafka_brokers.admin()
    created = admin.create_topics([NewTopic(
        topic, num_partitions=3, replica_assignment=[[1, 2, 3], [1, 3, 2], [1, 2, 3]],
        config={"min.insync.replicas": "2"})], request_timeout=30)[topic]
    created.result(timeout=30)
    readiness.prepare(settings)  # the schema; the topic is left as created
    kafka_brokers.wait_in_sync(topic)
    assert {leader for leader, _, _ in kafka_brokers.partitions(topic).values()} == {1}
    # the broker answers a write that waits for replicas after the request's timeout
    # (REQUEST_TIMED_OUT, retriable: librdkafka queues it again without a callback)
    properties = tmp_path / "client.properties"
    properties.write_text("request.timeout.ms=5000\n")
    cli = subprocess.Popen(
        [sys.executable, "-m", "heartbeat_platform", "produce", "--rate", "1000", "--seed", "5"],
        env={**os.environ, "DATABASE_URL": database_url, "HEARTBEAT_LOG_FORMAT": "text",
             "KAFKA_BOOTSTRAP_SERVERS": kafka_brokers.node(1).bootstrap_servers,
             "KAFKA_TOPIC": topic, "COLUMNS": "200", "KAFKA_CLIENT_PROPERTIES": str(properties)},
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while log_size(kafka_brokers, topic) == 0:
            assert cli.poll() is None and time.monotonic() < deadline, cli.communicate()
            time.sleep(0.3)
        kafka_brokers.kill(2)
        kafka_brokers.kill(3)
        wait_isr(kafka_brokers, topic, [1])
        time.sleep(8)  # past the request timeout: the waiting writes were answered
        assert cli.poll() is None, cli.communicate()
        cli.send_signal(signal.SIGTERM)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    for node_id in (2, 3):
        kafka_brokers.node(node_id).start()
    kafka_brokers.wait_ready(node_ids=[2, 3])
    kafka_brokers.wait_in_sync(topic)
    found = PRODUCED.search(out)
    assert found, out + err
    sent, delivered, failed, uncertain = (int(g.replace(",", "")) for g in found.groups())
    in_log = log_size(kafka_brokers, topic)
    print(f"stopped: {out.strip()}, its log holds {in_log}")
    assert sent == delivered + failed + uncertain and failed + uncertain > 0, out
    assert delivered <= in_log <= delivered + uncertain, (out, in_log)


def set_retention(kafka: KafkaCluster, topic: str, ms: int) -> None:
    """The topic's retention.ms, changed alone (an incremental alter keeps its other settings)."""
    admin = kafka.admin()
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", str(ms), incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)


def retention_deletes_the_log(kafka: KafkaCluster, topic: str, timeout: float = 60) -> dict:
    """retention.ms of 1 ms until the broker's retention check (every second on the test
    broker) deleted every message of the topic, then 24 h again. partition -> log start."""
    set_retention(kafka, topic, 1)
    reader = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "log-start"})
    deadline = time.monotonic() + timeout
    try:
        while True:
            marks = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                     for p in kafka.partitions(topic)}
            if all(low == high > 0 for low, high in marks.values()):
                break
            assert time.monotonic() < deadline, f"retention deleted only part of {marks}"
            time.sleep(0.5)
    finally:
        reader.close()
    set_retention(kafka, topic, 86_400_000)
    return {p: low for p, (low, _) in marks.items()}


DELETED = re.compile(r"partition (\d+): messages at offsets (\d+)\.\.(\d+) were deleted by the "
                     r"broker before they were consumed \(retention\); (\d+) readings are lost")


def metered_consumer(settings, registry: CollectorRegistry) -> HeartbeatConsumer:
    """A consumer reporting to `registry`, read back as a scrape would."""
    prepared = readiness.prepare(settings)
    return HeartbeatConsumer(readiness.consumer_config(settings, prepared.endpoints),
                             metrics=registry)


def lost_at_source(registry: CollectorRegistry) -> dict[int, int]:
    """partition -> heartbeat_consumer_lost_at_source_total, as Prometheus would scrape it."""
    return {int(sample.labels["partition"]): int(sample.value)
            for family in registry.collect() if family.name == "heartbeat_consumer_lost_at_source"
            for sample in family.samples if sample.name.endswith("_total")}


def deleted_ranges(caplog) -> dict[int, tuple[int, int, int]]:
    """partition -> (first, last, count) of what the consumer logged as deleted unread."""
    found = {}
    for record in caplog.records:
        match = DELETED.search(record.getMessage())
        if match:
            p, first, last, lost = map(int, match.groups())
            assert p not in found, f"partition {p} reported twice: {caplog.text}"
            found[p] = (first, last, lost)
    return found


def test_retention_deleting_readings_a_stopped_consumer_never_read_counts_and_logs_them(
    apache_kafka, settings_factory, database_url, db, caplog
):
    """The consumer stores a first stream and stops; a second is produced and retention
    deletes it (Apache Kafka enforces retention.ms, the embedded broker does not) before
    the consumer runs again: it logs each partition's lost range and count, and stores the
    first and third streams exactly once."""
    settings = on(apache_kafka, settings_factory, database_url, heartbeat_consume_batch_size=500)
    first = produce(settings, 3_000, seed=31)
    assert consumer(settings).run(stop_when_idle=2).stats.messages_consumed == 3_000
    unread = produce(settings, 3_000, seed=32)  # no consumer running
    starts = retention_deletes_the_log(apache_kafka, settings.kafka_topic)
    assert starts == {p: high + 1 for p, (_, high) in unread.delivered_offsets.items()}
    third = produce(settings, 3_000, seed=33)
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO):
        stats = metered_consumer(settings, registry).run(stop_when_idle=2).stats
    assert stats.messages_consumed == 3_000
    # each stream's own span: one span over both would take in the deleted offsets
    assert_exactly_once(db, delivered_positions([first]) | delivered_positions([third]))
    expected = {p: (low, high, high - low + 1)
                for p, (low, high) in unread.delivered_offsets.items()}
    assert deleted_ranges(caplog) == expected, caplog.text
    assert lost_at_source(registry) == {p: lost for p, (_, _, lost) in expected.items()}


def test_retention_deleting_readings_before_the_first_consumer_started_counts_and_logs_them(
    apache_kafka, settings_factory, database_url, db, caplog
):
    """Produced, deleted by retention, produced again, and only then a first consumer: what
    it stores is exactly the log, and the deleted range it never saw is reported."""
    settings = on(apache_kafka, settings_factory, database_url, heartbeat_consume_batch_size=500)
    unread = produce(settings, 3_000, seed=34)
    retention_deletes_the_log(apache_kafka, settings.kafka_topic)
    later = produce(settings, 3_000, seed=35)
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO):
        stats = metered_consumer(settings, registry).run(stop_when_idle=2).stats
    assert stats.messages_consumed == 3_000
    assert_exactly_once(db, delivered_positions([later]))
    expected = {p: (low, high, high - low + 1)
                for p, (low, high) in unread.delivered_offsets.items()}
    assert all(low == 0 for low, _, _ in expected.values())
    assert deleted_ranges(caplog) == expected, caplog.text
    assert lost_at_source(registry) == {p: lost for p, (_, _, lost) in expected.items()}


def create_again(kafka: KafkaCluster, topic: str, timeout: float = 60) -> None:
    """Delete the topic and create it again with as many partitions (a new topic id)."""
    partitions = len(kafka.partitions(topic))
    admin = kafka.admin()
    admin.delete_topics([topic])[topic].result(timeout=30)
    deadline = time.monotonic() + timeout
    while True:  # the deletion completes in the background
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
            return
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            assert time.monotonic() < deadline, f"{topic} still exists after {timeout} s"
            time.sleep(0.5)


def test_a_topic_created_again_under_a_running_consumer_is_read_whole_from_its_start(
    apache_kafka, settings_factory, database_url, db
):
    """The topic is deleted and created again while a consumer reads it, and the new log
    grows past the old end. librdkafka either leaves the topic without partitions or
    reads on at the old position; a new id makes the consumer rejoin and read the new log
    from its start as log 1. Every message of both logs is stored once: the new log's from
    offset 0, except that what was read at the old position before the id check (offsets
    past the old log's end) may stay stored under log 0 (README, "Guarantees")."""
    settings = on(apache_kafka, settings_factory, database_url, heartbeat_consume_batch_size=500)
    first = produce(settings, 3_000, seed=41)
    reading = consumer(settings, topic_check_s=2.0)
    thread = threading.Thread(target=reading.run, daemon=True)
    thread.start()
    try:
        assert wait_stored(db, 3_000) == 3_000
        create_again(apache_kafka, settings.kafka_topic)
        second = produce(settings, 6_000, seed=42)  # each partition's log passes the old end
        wait_stored(db, 9_000, timeout=120)
    finally:
        reading.request_stop()
        thread.join(60)
    old, new = delivered_positions([first], 0), delivered_positions([second], 1)
    counts = landed(db)
    assert not {k: n for k, n in counts.items() if n > 1}, "doubled"
    assert old <= set(counts), f"{len(old - set(counts))} of the first log missing"
    carried = {(0, p, o) for _, p, o in new} - old
    missing = {(1, p, o) for _, p, o in new if (1, p, o) not in counts and (0, p, o) not in counts}
    assert not missing, f"{len(missing)} of the new log missing, e.g. {sorted(missing)[:5]}"
    assert set(counts) <= old | new | carried
    # each new-log message once: at log 1, or carried under log 0, never both
    assert not {(p, o) for _, p, o in new if (1, p, o) in counts and (0, p, o) in carried
                and (0, p, o) in counts}
