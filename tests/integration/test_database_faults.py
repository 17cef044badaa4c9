"""The database goes away at the wrong moment: every delivered reading is stored once.

Each case stops the test's own PostgreSQL server for real (a fast shutdown, so open
connections break as they do when a server goes down), at the moment the case names,
while a `heartbeat-platform consume` process runs; readings arrive before, during and
after. With `kill`, the consumer is SIGKILLed during the outage and a fresh one starts when
the database is back. Each case counts every message the producer reports delivered
against the rows of the three landing tables: 0 missing, 0 doubled.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from heartbeat_platform import readiness
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.postgres import EmbeddedPostgres
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.storage.writer import Batch, BatchWriter, PartitionProgress
from heartbeat_platform.streaming.topics import ensure_topic
from tests.support.pipeline import ConsumerProcess, assert_exactly_once, produce_in_background
from tests.support.stored import delivered_positions, landed

UNAVAILABLE = "database unavailable"  # what the consumer logs when it meets an outage
KILL = pytest.mark.parametrize("kill", [False, True], ids=["consumer-runs", "consumer-killed"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this module's own, to stop and start."""
    postgres = EmbeddedPostgres(tmp_path_factory.mktemp("faults") / "postgres")
    postgres.start()
    yield postgres
    postgres.stop()


@pytest.fixture
def database(server: EmbeddedPostgres) -> str:
    server.start()  # running, whatever the previous case left
    return server.ensure_database(f"faults_{time.monotonic_ns()}")


class Case:
    """One fault case: its settings, its consumer, what was produced, and the count."""

    def __init__(self, settings, server: EmbeddedPostgres, kill: bool, **env: str):
        self.settings, self.server, self.kill = settings, server, kill
        self.env = {k.upper(): v for k, v in env.items()}
        self.reports: dict[int, list] = {}  # log (0: first) -> producer reports
        self.consumers: list[ConsumerProcess] = []
        readiness.prepare(settings)
        self.start_consumer()

    @property
    def consumer(self) -> ConsumerProcess:
        return self.consumers[-1]

    def start_consumer(self) -> ConsumerProcess:
        consumer = ConsumerProcess(self.settings, env=self.env)
        self.consumers.append(consumer)
        assert consumer.assigned.wait(60), consumer.text()
        return consumer

    def produce(self, log: int = 0, wait: bool = True, **run):
        thread, reports = produce_in_background(self.settings, **run)
        self.reports.setdefault(log, []).append(reports)
        if wait:
            thread.join()
        return thread

    def expected(self) -> set:
        return {position for log, runs in self.reports.items() for reports in runs
                for position in delivered_positions(reports, log)}

    def stored(self) -> int:
        try:
            with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
                return sum(landed(conn).values())
        except psycopg.OperationalError:
            return 0  # still starting

    def wait_stored(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.stored() < count and time.monotonic() < deadline:
            time.sleep(0.5)

    def outage(self) -> None:
        """The database goes away; with `kill`, the consumer dies during it."""
        self.noticed = self.consumer.text().count(UNAVAILABLE)
        self.server.stop()
        assert self.consumer.proc.poll() is None, self.consumer.text()

    def back(self) -> None:
        """The database comes back, once the consumer has met the outage (on a loaded
        machine a rebalance can outlast a fixed wait, and the case would test nothing)."""
        deadline = time.monotonic() + 60
        while self.consumer.text().count(UNAVAILABLE) == self.noticed:
            assert time.monotonic() < deadline, "never met the outage:\n" + self.consumer.text()
            time.sleep(0.1)
        if self.kill:
            self.consumer.kill()
        self.server.start()  # same port: a running consumer reconnects by itself
        if self.kill:
            self.answers()
            self.start_consumer()  # a fresh one, now that PostgreSQL answers again

    def answers(self, timeout: float = 60) -> None:
        """Wait until PostgreSQL takes a connection (a loaded machine can be slow to)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.settings.database_url, connect_timeout=5).close()
                return
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "PostgreSQL did not come back"
                time.sleep(0.5)

    def finish(self) -> None:
        """Wait until everything delivered is stored, stop the consumer, count."""
        expected = self.expected()
        self.wait_stored(len(expected))
        self.consumer.proc.send_signal(signal.SIGTERM)
        code, _ = self.consumer.finish()
        assert code == 0, self.consumer.text()
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            assert_exactly_once(conn, expected)
        assert UNAVAILABLE in "".join(c.text() for c in self.consumers)


@pytest.fixture
def case(settings_factory, database, server) -> Callable[..., Case]:
    made: list[Case] = []

    def make(kill: bool, **overrides) -> Case:
        env = overrides.pop("env", {})
        settings = settings_factory(database_url=database, heartbeat_consume_batch_size=500,
                                    **overrides)
        made.append(Case(settings, server, kill, **env))
        return made[-1]

    yield make
    for c in made:
        for consumer in c.consumers:
            if consumer.proc.poll() is None:
                consumer.kill()


@KILL
def test_outage_during_batch_writes(case, kill):
    c = case(kill)
    producing = c.produce(rate=2_000, events=12_000, wait=False)
    time.sleep(2)
    c.outage()  # batches of 500 every quarter second: one is being written or committed
    time.sleep(3)
    c.back()
    producing.join()
    c.finish()


@KILL
def test_outage_while_idle_when_the_partition_check_comes_due(case, kill):
    """The reproduction in issue 18: 3,000 stored, the database stops while the consumer
    is idle, its day-partition check comes due, 3,000 arrive during the outage, the
    database comes back, 1,000 more arrive: 7,000 of 7,000 stored."""
    c = case(kill, env={"heartbeat_partition_check_s": "1"})
    c.produce(events=3_000, seed=1)
    c.wait_stored(3_000)
    assert c.stored() == 3_000
    c.outage()
    time.sleep(2)  # the check comes due while nothing arrives
    c.produce(events=3_000, seed=2)
    time.sleep(2)
    c.back()
    c.produce(events=1_000, seed=3)
    c.finish()
    assert len(c.expected()) == 7_000


@KILL
def test_outage_during_a_rebalance(case, kill):
    """A second consumer joins just before the database stops, so the group rebalances
    during the outage, and leaves (SIGTERM, or SIGKILL with `kill`) before it is back: no
    partition is read without its stored progress, on either side of either rebalance."""
    c = case(kill)
    producing = c.produce(rate=1_500, events=15_000, wait=False)
    time.sleep(2)
    second = ConsumerProcess(c.settings, env=c.env)
    deadline = time.monotonic() + 60
    while "subscribed to" not in second.text() and time.monotonic() < deadline:
        time.sleep(0.05)  # it checked the schema and is joining the group
    c.outage()
    time.sleep(6)  # the join completes (about 3 s on the embedded broker) while it is down
    if kill:
        second.kill()
    else:
        second.proc.send_signal(signal.SIGTERM)
        assert second.finish()[0] == 0, second.text()
    c.kill = False  # the first consumer rides this outage out
    time.sleep(4)
    c.back()
    producing.join()
    c.finish()
    assert "revoked partitions" in c.consumer.text(), second.text() + c.consumer.text()


@KILL
def test_outage_during_a_log_check(case, kill, tmp_path_factory):
    """The broker's log resets (a memory-only broker restarted) while the database is down:
    the new log needs a new epoch in the database before anything of it is read."""
    broker = EmbeddedBroker(tmp_path_factory.mktemp("log-check") / "broker")
    broker.start()
    try:
        c = case(kill, kafka_bootstrap_servers=broker.bootstrap_servers)
        c.produce(events=3_000, seed=1)
        c.wait_stored(3_000)
        c.outage()
        broker.stop()
        broker.start()  # memory-only: the topic and its offsets are gone
        ensure_topic(broker.bootstrap_servers, c.settings.kafka_topic,
                     partitions=c.settings.kafka_partitions)
        c.produce(log=1, events=1_200, seed=2)  # shorter than what was stored
        time.sleep(4)  # the consumer meets the new log while the database is away
        c.back()
        c.finish()
        assert "Reading it as log epoch" in "".join(p.text() for p in c.consumers)
    finally:
        broker.stop()


@KILL
def test_two_outages_in_a_row_with_readings_throughout(case, kill):
    c = case(kill)
    producing = c.produce(rate=1_500, events=15_000, wait=False)
    time.sleep(1.5)
    c.kill, kill_second = False, c.kill  # with `kill`, the consumer dies in the second one
    c.outage()
    time.sleep(2)
    c.back()
    time.sleep(1.5)
    c.kill = kill_second
    c.outage()
    time.sleep(2)
    c.back()
    producing.join()
    c.finish()


def test_a_lock_that_outlasts_the_retries_is_not_taken_for_bad_content(database_url, db):
    """Four lock timeouts in a row (a reader holding the table) used to send the batch to
    the halving search, which then blamed every reading: valid readings became dead
    letters. Now the writer raises, for the consumer to wait out, and the batch lands
    whole once the lock is gone."""
    migrate(database_url)
    db.execute(f"ALTER DATABASE {psycopg.conninfo.conninfo_to_dict(database_url)['dbname']} "
               "SET lock_timeout = '50ms'")
    now = datetime.now(UTC)
    batch = Batch(
        records=[(f"CUST_{i:05d}", now, 70, 0, 0, i) for i in range(1, 11)],
        progress={0: (None, PartitionProgress(0, 11))},
    )
    writer = BatchWriter(database_url, "faults", "faults-topic")
    holder = psycopg.connect(database_url)
    try:
        holder.execute("LOCK TABLE heartbeat_records IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            writer.write(batch)
        holder.rollback()  # the reader is done
        result = writer.write(batch)
    finally:
        holder.close()
        writer.close()
    assert (result.records, result.refused) == (10, 0)
    assert db.execute("SELECT count(*) FROM heartbeat_dead_letters").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM heartbeat_records").fetchone()[0] == 10
