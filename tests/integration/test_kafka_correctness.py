"""Nothing lost, nothing doubled where Apache Kafka differs from a single embedded broker.

Each test sets up the situation its name gives against the real broker and database and
checks where every message landed. What the embedded broker cannot show (leader changes,
truncation, KIP-848) is covered by tests/unit/test_log_decisions.py and friends.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import orjson
from confluent_kafka import ConsumerGroupState, Producer
from confluent_kafka.admin import AdminClient

from heartbeat_platform import readiness
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.producer import HeartbeatProducer
from tests.support.pipeline import ConsumerProcess, assert_exactly_once, produce_in_background
from tests.support.stored import delivered_positions, landed, landed_by_topic

ALERT_ROWS = "SELECT count(*) FROM pipeline_metrics WHERE metric_name LIKE 'alert\\_%'"


def produce(settings, events: int, seed: int):
    prepared = readiness.prepare(settings)
    with HeartbeatProducer(readiness.producer_config(settings, prepared.endpoints)) as producer:
        report = producer.run(readiness.generator(settings, seed), events=events)
    assert report.delivered == events
    return report


def consumer(settings, **overrides) -> HeartbeatConsumer:
    prepared = readiness.prepare(settings)
    return HeartbeatConsumer(readiness.consumer_config(settings, prepared.endpoints, **overrides))


def send_raw(settings, values: list[bytes], key: bytes = b"CUST_00042") -> None:
    """Plain, non-idempotent produce of exact bytes (what a retrying or re-sending client does)."""
    readiness.prepare(settings)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for value in values:
        producer.produce(settings.kafka_topic, value, key)
    assert producer.flush(10) == 0


def reading(customer: str, bpm: int, when: datetime | None = None) -> bytes:
    when = when or datetime.now(UTC)
    return orjson.dumps({"customer_id": customer, "heart_rate": bpm,
                         "timestamp": when.isoformat()})


def test_two_topics_in_one_database_keep_every_message_and_replays_add_nothing(
    settings_factory, database_url, db
) -> None:
    one = settings_factory(database_url=database_url)
    two = settings_factory(database_url=database_url, kafka_topic=one.kafka_topic + "-b",
                           kafka_group_id=one.kafka_group_id + "-b")
    reports = {s.kafka_topic: produce(s, 6_000, seed=n) for n, s in enumerate((one, two), 1)}
    anomalies = 0
    for settings in (one, two):
        stats = consumer(settings).run(stop_when_idle=1.5).stats
        assert stats.messages_consumed == 6_000
        anomalies += (stats.anomalies_bradycardia + stats.anomalies_tachycardia
                      + stats.anomalies_invalid)

    # Both topics wrote offsets 0.. of partitions 0..2: none of B's messages was taken
    # for a replay of A's.
    expected = {
        (topic, nth, p, o)
        for topic, report in reports.items()
        for nth, p, o in delivered_positions([report])
    }
    counts = landed_by_topic(db)
    assert set(counts.values()) == {1}
    assert set(counts) == expected
    assert db.execute("SELECT count(*) FROM heartbeat_anomalies").fetchone()[0] == anomalies
    assert db.execute(ALERT_ROWS).fetchone()[0] == anomalies
    epochs = db.execute("SELECT log_epoch FROM kafka_logs").fetchall()
    assert len(epochs) == len(set(epochs)) == 6  # one log per topic partition, never shared

    # New groups (or progress deleted by hand) read both topics again: same epochs, no row.
    before = counts
    db.execute("DELETE FROM consumer_progress")
    for settings in (one, two):
        assert consumer(settings).run(stop_when_idle=1.5).stats.messages_consumed == 6_000
    assert landed_by_topic(db) == before
    assert db.execute("SELECT log_epoch FROM kafka_logs").fetchall() == epochs
    assert db.execute(ALERT_ROWS).fetchone()[0] == anomalies


def test_the_same_reading_at_another_offset_is_one_row_and_one_alert(
    settings_factory, database_url, db
) -> None:
    settings = settings_factory(database_url=database_url)
    normal, slow = reading("CUST_00042", 72), reading("CUST_00042", 31)
    garbage = b"not a reading"
    send_raw(settings, [normal, slow, garbage, normal, slow, garbage])
    stats = consumer(settings).run(stop_when_idle=1.5).stats
    assert stats.messages_consumed == 6
    assert db.execute("SELECT count(*) FROM heartbeat_records").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM heartbeat_anomalies").fetchone()[0] == 1
    assert db.execute(ALERT_ROWS).fetchone()[0] == 1
    # a dead letter has no reading to name it: each message is kept, as received
    assert db.execute("SELECT count(*) FROM heartbeat_dead_letters").fetchone()[0] == 2
    assert stats.duplicates_dropped == 2


def test_a_message_the_database_refuses_becomes_a_dead_letter_and_the_rest_lands(
    settings_factory, database_url, db
) -> None:
    settings = settings_factory(database_url=database_url, heartbeat_consume_batch_size=500)
    readiness.prepare(settings)
    # A rule of the database (not of the consumer) that one reading breaks.
    db.execute("ALTER TABLE heartbeat_anomalies ADD CONSTRAINT no_customer_666 "
               "CHECK (customer_id <> 'CUST_00666')")
    first = produce(settings, 1_000, seed=5)
    refused = reading("CUST_00666", 210)
    send_raw(settings, [refused], key=b"CUST_00666")
    second = produce(settings, 1_000, seed=6)
    stats = consumer(settings).run(stop_when_idle=1.5).stats
    assert stats.messages_consumed == 2_001

    (value, reason) = db.execute(
        "SELECT raw_value, reason FROM heartbeat_dead_letters"
    ).fetchone()
    assert bytes(value) == refused
    assert "refused" in reason and "no_customer_666" in reason and "23514" in reason
    counts = landed(db)
    assert set(counts.values()) == {1}
    assert len(counts) == 2_001
    assert delivered_positions([first, second]) <= set(counts)
    assert db.execute(ALERT_ROWS).fetchone()[0] == db.execute(
        "SELECT count(*) FROM heartbeat_anomalies").fetchone()[0]


def test_a_message_over_the_size_limit_is_a_dead_letter_and_the_stream_goes_on(
    settings_factory, database_url, db
) -> None:
    settings = settings_factory(database_url=database_url)
    huge = orjson.dumps({"customer_id": "CUST_00001", "heart_rate": 70,
                         "timestamp": datetime.now(UTC).isoformat(), "note": "x" * 50_000})
    send_raw(settings, [huge, reading("CUST_00001", 71)], key=b"CUST_00001")
    stats = consumer(settings, max_message_bytes=10_000).run(stop_when_idle=1.5).stats
    assert stats.messages_consumed == 2
    value, reason = db.execute("SELECT raw_value, reason FROM heartbeat_dead_letters").fetchone()
    assert bytes(value) == huge[:1_024]
    assert str(len(huge)) in reason and "10000" in reason
    assert db.execute("SELECT heart_rate FROM heartbeat_records").fetchall() == [(71,)]


def test_a_rebalance_while_a_batch_is_in_flight_commits_that_batch_first(
    settings_factory, database_url, db
) -> None:
    settings = settings_factory(database_url=database_url, heartbeat_consume_batch_size=500)
    readiness.prepare(settings)
    # Every batch takes at least 0.3 s in the database, so a rebalance meets one in flight.
    db.execute("""
        CREATE FUNCTION slow_batch() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;
        CREATE TRIGGER slow_batch AFTER INSERT ON consumer_progress
        FOR EACH STATEMENT EXECUTE FUNCTION slow_batch();
        CREATE TRIGGER slow_batch_update AFTER UPDATE ON consumer_progress
        FOR EACH STATEMENT EXECUTE FUNCTION slow_batch();""")
    first, second = consumer(settings), consumer(settings)
    reports: dict[str, object] = {}

    def run(name: str, member: HeartbeatConsumer) -> None:
        reports[name] = member.run(stop_when_idle=6)

    threads = [threading.Thread(target=run, args=("first", first), daemon=True)]
    threads[0].start()
    assert first.assigned.wait(60)
    producing, produced = produce_in_background(settings, rate=3_000, events=15_000)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.stats.batches < 3:
        time.sleep(0.1)  # the first consumer writes batch after batch now
    threads.append(threading.Thread(target=run, args=("second", second), daemon=True))
    threads[1].start()
    producing.join()
    for thread in threads:
        thread.join(120)
    one, two = reports["first"], reports["second"]
    assert one.settled_in_rebalance >= 1  # partitions moved while a batch was in flight
    assert one.rebalance_callbacks >= 2 and two.stats.messages_consumed > 0
    assert one.stats.messages_consumed + two.stats.messages_consumed == 15_000
    assert_exactly_once(db, delivered_positions(produced))


def group_has_members(settings) -> bool:
    """The group is not empty. The embedded broker lists no members in DescribeGroups but
    keeps the group's state: Stable while a member is in it, Empty once the last has left."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    group = admin.describe_consumer_groups([settings.kafka_group_id])[settings.kafka_group_id]
    described = group.result(timeout=10)
    return bool(described.members) or described.state not in (
        ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN
    )


def test_a_killed_consumer_whose_replacement_joins_while_it_is_still_a_member(
    settings_factory, database_url, db
) -> None:
    settings = settings_factory(database_url=database_url, heartbeat_consume_batch_size=500)
    readiness.prepare(settings)
    killed = ConsumerProcess(settings)
    assert killed.assigned.wait(60), killed.text()
    producing, produced = produce_in_background(settings, rate=2_500, events=12_000)
    time.sleep(2)
    # Frozen mid-stream (a batch may be in flight), its connection open: the group keeps it
    # as a member until its session expires, so the replacement joins beside it.
    killed.proc.send_signal(signal.SIGSTOP)
    still_a_member = group_has_members(settings)
    replacement = ConsumerProcess(settings, "--stop-when-idle", "5", "--json")
    assert replacement.assigned.wait(120), replacement.text()
    killed.kill()  # and then it dies without leaving: kill -9
    producing.join()
    code, out = replacement.finish()
    assert code == 0, replacement.text()
    assert still_a_member
    assert json.loads(out[out.find("{"):])["messages"] > 0
    assert_exactly_once(db, delivered_positions(produced))
    assert Counter(landed(db).values()) == Counter({1: 12_000})

