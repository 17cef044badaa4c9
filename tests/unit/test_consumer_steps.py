"""The consumer's steps one at a time, over the doubles of test_consumer_loop: landing a
batch (and giving it up when the database goes away), the client's positions, the
partitions that wait paused before reading, the wait for the database, quiet logs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from heartbeat_platform.domain.alerts import AlertManager
from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.storage.progress import PartitionProgress
from heartbeat_platform.streaming.assignment import Assignment
from heartbeat_platform.streaming.batch_builder import BatchBuilder
from heartbeat_platform.streaming.cursors import Cursors
from heartbeat_platform.streaming.day_partitions import LOCKED_RETRY_S, DayPartitions
from heartbeat_platform.streaming.landing import Landing
from heartbeat_platform.streaming.outage import DatabaseUnavailable, Outage
from heartbeat_platform.streaming.outage_wait import OutageWait
from heartbeat_platform.streaming.positions import Positions
from heartbeat_platform.streaming.quiet_log import QuietLog
from heartbeat_platform.streaming.topic_watch import TopicWatch
from tests.unit.test_consumer_loop import TOPIC, Broker, Client, Database, Message


def landing_over(database: Database) -> tuple[Landing, Cursors, list]:
    cursors = Cursors(database, TOPIC, lambda: None, lambda _: False)
    cursors.open([0, 1, 2])
    observed: list = []
    landing = Landing(database, cursors, 100, "test",
                      lambda batch, result, seconds: observed.append(result))
    return landing, cursors, observed


def built_from(broker: Broker, cursors: Cursors, first: int, last: int):
    messages = [Message(p, o, broker.logs[p][o])
                for p in broker.logs for o in range(first, last)]
    builder = BatchBuilder(AlertManager(), RetentionPolicy())
    return builder.build(messages, cursors, datetime.now(UTC))


def test_batches_lost_with_the_database_put_the_cursors_back_where_the_table_stands():
    broker, database = Broker(), Database()
    broker.produce(300)
    landing, cursors, observed = landing_over(database)
    assert landing.take(built_from(broker, cursors, 0, 50))  # in flight
    assert landing.settle() and len(observed) == 1  # committed: 150 rows
    database.down = True
    assert landing.take(built_from(broker, cursors, 50, 70))  # in flight, will fail
    with pytest.raises(DatabaseUnavailable):
        landing.take(built_from(broker, cursors, 70, 100))  # its settle finds the failure
    assert {p: c.next_offset for p, c in cursors.items()} == {0: 100, 1: 100, 2: 100}
    landing.abandon()
    assert {p: c.next_offset for p, c in cursors.items()} == {0: 50, 1: 50, 2: 50}
    assert len(database.rows) == 150 and len(observed) == 1
    landing.close()


def test_progress_another_consumer_moved_is_reloaded_not_overwritten():
    broker, database = Broker(), Database()
    broker.produce(300)
    landing, cursors, _ = landing_over(database)
    database.progress[1] = PartitionProgress(0, 80)  # another member wrote 0..79 of partition 1
    assert landing.take(built_from(broker, cursors, 0, 40))
    assert landing.settle() is False  # its write was refused by the compare-and-set
    assert cursors[1].next_offset == 80 and cursors[0].next_offset == 0
    assert not database.rows
    landing.close()


class NotFetchingYet(Client):
    """librdkafka refuses a seek of a partition it has not started fetching."""

    def seek(self, tp) -> None:
        raise KafkaException("Local: Erroneous state")


@pytest.mark.parametrize("incremental", [True, False])
def test_a_seek_the_client_refuses_assigns_the_partition_again_at_that_offset(incremental):
    client = NotFetchingYet(Broker(), {})
    client.pending.clear()
    client.assign([TopicPartition(TOPIC, p, 0) for p in (0, 1, 2)])
    assignment = Assignment(client, TOPIC, incremental, lambda: {0: 5, 1: 7, 2: 9})
    assignment.seek({1: 7}, paused=True)
    assert client.position[1] == 7
    if incremental:
        assert client.paused == {1} and client.position == {0: 0, 1: 7, 2: 0}
    else:  # eager: everything assigned again, each at its own position
        assert client.paused == {0, 1, 2} and client.position == {0: 5, 1: 7, 2: 9}


class FetchingFrom(Client):
    """librdkafka refuses a seek until it fetches the partition (here: `fetching`)."""

    def __init__(self, broker: Broker, settings: dict):
        super().__init__(broker, settings)
        self.fetching: set[int] = set()

    def seek(self, tp) -> None:
        if tp.partition not in self.fetching:
            raise KafkaException("Local: Erroneous state")
        super().seek(tp)


def test_a_partition_assigned_at_a_stored_leader_epoch_is_read_only_once_sought_with_it():
    database = Database()
    database.progress = {0: PartitionProgress(0, 40, leader_epoch=3), 1: PartitionProgress(0, 9)}
    cursors = Cursors(database, TOPIC, lambda: None, lambda _: False)
    positions = Positions(cursors, TOPIC)
    client = FetchingFrom(Broker(), {})
    client.pending.clear()
    kafka = Assignment(client, TOPIC, False, positions.offsets)
    partitions = [TopicPartition(TOPIC, p) for p in (0, 1, 2)]
    positions.assigned(partitions, cursors.open([0, 1, 2]))
    kafka.add(partitions)
    held = positions.hold_for_validation(partitions)
    client.pause(held)
    assert [tp.offset for tp in partitions][:2] == [40, 9] and [tp.partition for tp in held] == [0]
    positions.validate(kafka)  # not fetching yet: still held
    assert client.paused == {0} and positions.unvalidated == {0} and not client.seeks
    client.fetching.add(0)
    positions.validate(kafka)
    assert [(tp.partition, tp.offset, tp.leader_epoch) for tp in client.seeks] == [(0, 40, 3)]
    assert not client.paused and not positions.unvalidated


def test_partitions_assigned_while_the_database_is_away_are_read_from_their_cursors_after():
    database = Database()
    database.progress = {1: PartitionProgress(0, 7)}
    cursors = Cursors(database, TOPIC, lambda: None, lambda _: False)
    positions = Positions(cursors, TOPIC)
    partitions = [TopicPartition(TOPIC, 1)]
    positions.assigned(partitions, None)  # the database is away: no cursor to read from
    assert positions.unopened == {1} and positions.offsets() == {1: OFFSET_BEGINNING}
    client = FetchingFrom(Broker(), {})
    client.pending.clear()
    client.assign(partitions)
    cursors.open(sorted(positions.unopened))  # the database is back
    positions.recovered(Assignment(client, TOPIC, False, positions.offsets), paused=True)
    assert not positions.unopened and positions.offsets() == {1: 7}
    assert client.position == {1: 7} and client.paused == {1}, "assigned again, still paused"
    positions.forget(1)
    assert not positions.unopened and not positions.unvalidated


def test_the_database_is_tried_at_the_backoff_and_back_at_the_stored_progress():
    database = Database()
    database.progress = {0: PartitionProgress(0, 30), 1: PartitionProgress(0, 5)}
    cursors = Cursors(database, TOPIC, lambda: None, lambda _: False)
    cursors.open([0])
    positions = Positions(cursors, TOPIC)
    positions.assigned([TopicPartition(TOPIC, 1)], None)  # assigned in the outage
    wait = OutageWait(Outage(first_wait_s=1.0, longest_wait_s=4.0), database, cursors,
                      positions, cursors.open)
    cursors[0].next_offset = 80  # read on, then the batch was abandoned
    database.down = True
    wait.failed(DatabaseUnavailable("write batch", psycopg.OperationalError("gone")), 10.0)
    assert wait.attempt(10.5) is None, "not due before the first wait is over"
    assert wait.attempt(11.0) is None and wait.outage.retry_at == 13.0, "failed: wait doubles"
    database.down = False
    assert wait.attempt(12.0) is None and wait.outage.active
    opened = wait.attempt(13.0)
    assert opened is not None and {p: c.next_offset for p, c in opened.items()} == {1: 5}
    assert {p: c.next_offset for p, c in cursors.items()} == {0: 30, 1: 5}
    wait.ended(14.0, opened)
    assert not wait.outage.active


def test_a_repeated_warning_is_logged_once_per_interval(caplog):
    quiet = QuietLog(logging.getLogger("test.quiet"), every_s=60)
    with caplog.at_level(logging.WARNING, "test.quiet"):
        for _ in range(5):
            quiet.warning("commit", "could not commit: %s", "broker away")
        quiet.warning("other", "another key: %s", "logged")
    assert [r.getMessage() for r in caplog.records] == [
        "could not commit: broker away", "another key: logged"]


class LockedOnce(Database):
    """ensure_partitions finds the tables locked by a reader the first time."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def ensure_partitions(self, policy) -> int | None:
        self.calls += 1
        return None if self.calls == 1 else super().ensure_partitions(policy)


def test_day_partitions_are_checked_at_once_then_each_period_and_a_locked_check_in_a_minute():
    database = LockedOnce()
    days = DayPartitions(database, RetentionPolicy(), every_s=3600)
    assert days.due(0.0)
    days.ensure(0.0)  # locked
    assert not days.due(LOCKED_RETRY_S - 1) and days.due(LOCKED_RETRY_S)
    days.ensure(LOCKED_RETRY_S)
    assert not days.due(LOCKED_RETRY_S + 3599) and days.due(LOCKED_RETRY_S + 3600)
    database.down = True
    with pytest.raises(DatabaseUnavailable):
        days.ensure(LOCKED_RETRY_S + 3600)
    assert days.due(LOCKED_RETRY_S + 3600), "a check the outage stopped is still due"
    assert database.calls == 3


def test_the_topic_id_is_asked_once_per_period_through_one_admin_client(monkeypatch):
    made: list[dict] = []
    answers = iter(["id-1", "id-1", "id-2"])

    def admin(bootstrap_servers, overrides):
        made.append(overrides)
        return object()

    monkeypatch.setattr("heartbeat_platform.streaming.topic_watch.admin_client", admin)
    monkeypatch.setattr("heartbeat_platform.streaming.topic_watch.topic_id",
                        lambda *args, admin: next(answers))
    watch = TopicWatch("unused:9092", TOPIC, {"client.id": "x"}, every_s=15)
    watch.joined(100.0)
    assert watch.created_again("id-1", 110.0) is None  # not due: not asked
    assert watch.created_again(None, 200.0) is None  # nothing known to compare: not asked
    assert watch.created_again("id-1", 116.0) is None  # asked: the same id
    assert watch.created_again("id-1", 125.0) is None  # asked 9 s ago: not asked again
    assert watch.current_id() == "id-1"
    assert watch.created_again("id-1", 131.0) == "id-2"
    assert made == [{"client.id": "x"}], "one admin client for every question"
