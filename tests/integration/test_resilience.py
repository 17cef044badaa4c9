"""What survives what: kill -9, a database outage, a reset broker log, two consumers."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime

import psycopg
import pytest

from heartbeat_platform import readiness
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.postgres import EmbeddedPostgres
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.storage.writer import Batch, BatchWriter, PartitionProgress, StaleProgress
from tests.support.pipeline import ConsumerProcess, assert_exactly_once, produce_in_background
from tests.support.stored import delivered_positions, landed


def test_kill_9_at_random_moments_loses_and_doubles_nothing(settings_factory, database_url, db):
    settings = settings_factory(database_url=database_url, heartbeat_consume_batch_size=1000)
    readiness.prepare(settings)
    producing, reports = produce_in_background(settings, rate=2_500, events=40_000)
    rng = random.Random(20261125)
    kills = 0
    while producing.is_alive() or kills < 4:
        consumer = ConsumerProcess(settings)
        assert consumer.assigned.wait(60), consumer.text()
        time.sleep(rng.uniform(0.05, 1.5))  # mid-batch, between batches, mid-commit...
        consumer.kill()
        kills += 1
    producing.join()
    assert reports[0].undelivered == 0 and reports[0].delivered == 40_000
    final = ConsumerProcess(settings, "--stop-when-idle", "4")
    code, _ = final.finish()
    assert code == 0, final.text()
    assert kills >= 4
    assert_exactly_once(db, delivered_positions(reports))


def test_database_outage_mid_stream(settings_factory, tmp_path_factory, services):
    server = EmbeddedPostgres(tmp_path_factory.mktemp("outage") / "postgres")
    server.start()
    try:
        settings = settings_factory(database_url=server.url(), heartbeat_consume_batch_size=500)
        readiness.prepare(settings)
        consumer = ConsumerProcess(settings, "--stop-when-idle", "6", "--json")
        assert consumer.assigned.wait(60), consumer.text()
        producing, reports = produce_in_background(settings, rate=2_000, events=12_000)
        time.sleep(2)
        server.stop()  # the database goes away mid-stream
        time.sleep(4)
        assert consumer.proc.poll() is None, "the consumer must survive the outage"
        server.start()  # same port: the consumer reconnects by itself
        producing.join()
        code, out = consumer.finish()
        assert code == 0, consumer.text()
        assert "database unavailable" in consumer.text()
        with psycopg.connect(server.url(), autocommit=True) as conn:
            assert_exactly_once(conn, delivered_positions(reports))
        assert json.loads(out[out.find("{"):])["messages"] >= 1
    finally:
        server.stop()


def test_two_consumers_share_partitions_and_count_every_event_once(
    settings_factory, database_url, db
):
    settings = settings_factory(database_url=database_url, heartbeat_consume_batch_size=500)
    readiness.prepare(settings)
    first = ConsumerProcess(settings, "--stop-when-idle", "8", "--json")
    second = ConsumerProcess(settings, "--stop-when-idle", "8", "--json")
    assert first.assigned.wait(60) and second.assigned.wait(60)
    producing, reports = produce_in_background(settings, rate=4_000, events=20_000)
    producing.join()
    results = [c.finish() for c in (first, second)]
    assert [code for code, _ in results] == [0, 0]
    consumed = [json.loads(out[out.find("{"):])["messages"] for _, out in results]
    assert all(n > 0 for n in consumed), consumed  # both had partitions and work
    assert sum(consumed) == 20_000
    assert_exactly_once(db, delivered_positions(reports))


@pytest.mark.parametrize(
    ("events_before", "events_after", "stored_topic_id", "detected_by"),
    [
        (3_000, 300, True, "the topic's id is now"),
        # The new log is already longer than what was stored: only the topic id tells.
        (300, 3_000, True, "the topic's id is now"),
        # Progress stored without a topic id (a broker that gives none, or a schema from
        # before the column): the log ending below the stored offset tells.
        (3_000, 300, False, "the broker's log ends at offset"),
    ],
    ids=["new-log-shorter", "new-log-longer", "new-log-shorter-no-topic-id"],
)
def test_reset_broker_log_starts_a_new_epoch_instead_of_skipping(
    settings_factory, database_url, db, tmp_path_factory, events_before, events_after,
    stored_topic_id, detected_by,
):
    broker = EmbeddedBroker(tmp_path_factory.mktemp("reset") / "broker")
    broker.start()
    try:
        settings = settings_factory(
            database_url=database_url, kafka_bootstrap_servers=broker.bootstrap_servers
        )
        readiness.prepare(settings)
        thread, before = produce_in_background(settings, events=events_before, seed=1)
        thread.join()
        first = ConsumerProcess(settings, "--stop-when-idle", "3")
        assert first.finish()[0] == 0, first.text()
        ids = db.execute("SELECT DISTINCT topic_id FROM consumer_progress").fetchall()
        assert len(ids) == 1 and ids[0][0], ids
        if not stored_topic_id:
            db.execute("UPDATE consumer_progress SET topic_id = NULL")
            db.execute("UPDATE kafka_logs SET topic_id = NULL")

        broker.stop()
        broker.start()  # memory-only: the topic and its offsets are gone
        readiness.prepare(settings)
        thread, after = produce_in_background(settings, events=events_after, seed=2)
        thread.join()
        second = ConsumerProcess(settings, "--stop-when-idle", "3")
        code, _ = second.finish()
        assert code == 0, second.text()
        assert "Reading it as log epoch" in second.text()
        assert detected_by in second.text()
        counts = landed(db)
        assert set(counts.values()) == {1}
        assert set(counts) == delivered_positions(before, 0) | delivered_positions(after, 1)

        # A replay across the epochs (progress deleted by hand): the new log is read again
        # under the epochs it already has, and nothing is added.
        logs = db.execute("SELECT * FROM kafka_logs ORDER BY log_epoch").fetchall()
        db.execute("DELETE FROM consumer_progress")
        replay = ConsumerProcess(settings, "--stop-when-idle", "6")
        assert replay.finish()[0] == 0, replay.text()
        assert landed(db) == counts
        assert db.execute("SELECT * FROM kafka_logs ORDER BY log_epoch").fetchall() == logs
    finally:
        broker.stop()


def test_progress_moves_only_from_the_expected_offset(database_url):
    """The compare-and-set that stops a consumer which lost its partition from writing."""
    migrate(database_url)
    one = BatchWriter(database_url, "group", "topic")
    two = BatchWriter(database_url, "group", "topic")
    try:
        one.move_progress(0, None, PartitionProgress(0, 10))
        with pytest.raises(StaleProgress):
            two.move_progress(0, None, PartitionProgress(0, 10))  # claimed already
        two.move_progress(0, PartitionProgress(0, 10), PartitionProgress(0, 20))
        stale = Batch(
            records=[("CUST_00001", datetime.now(UTC), 70, 0, 0, 10)],
            progress={0: (PartitionProgress(0, 10), PartitionProgress(0, 11))},
        )
        with pytest.raises(StaleProgress):
            one.write(stale)  # `one` still believes it is at 10
        assert one.load_progress([0]) == {0: PartitionProgress(0, 20)}
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FROM heartbeat_records").fetchone()[0] == 0
    finally:
        one.close()
        two.close()
