"""The batch writer keeps its customers' open episodes in memory (storage.episodes.OpenEpisodes).

A batch whose readings change no episode reads and writes nothing of the episode tables;
anything else that changes episodes or bounds (a person, the NO_SIGNAL job, an override,
another consumer that had the partition) is seen by the next batch. Each test writes
batches through a real BatchWriter into a real PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from heartbeat_platform.domain.episodes import SEEN_WITHIN, Rules
from heartbeat_platform.domain.events import classify_heart_rate
from heartbeat_platform.storage import alert_operations, episodes
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.storage.writer import Batch, BatchWriter, PartitionProgress

GROUP, TOPIC = "kept-tests", "kept-topic"
FIRE_AT_ONCE = Rules(delay={kind: timedelta(0) for kind in Rules().delay})
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


class Feed:
    """Batches of (customer, bpm) readings, one second apart, through one writer that
    holds partition 0, with offsets and progress carried from batch to batch."""

    def __init__(self, database_url: str) -> None:
        self.writer = BatchWriter(database_url, GROUP, TOPIC, FIRE_AT_ONCE)
        self.clock = START
        self.take_partition()

    def take_partition(self) -> None:
        """What an assignment does: read the partition's stored progress."""
        stored = self.writer.load_progress([0])
        self.progress = stored.get(0)

    def write(self, *readings: tuple[str, int], probe=None):
        records, anomalies = [], []
        offset = self.progress.next_offset if self.progress else 0
        for customer, bpm in readings:
            self.clock += timedelta(seconds=1)
            kind = classify_heart_rate(bpm)
            if kind.value == "NORMAL":
                records.append((customer, self.clock, bpm, 0, 0, offset))
            else:
                anomalies.append((customer, self.clock, bpm, kind.value, "{}", 0, 0, offset))
            offset += 1
        new = PartitionProgress(0, offset)
        batch = Batch(records=records, anomalies=anomalies, progress={0: (self.progress, new)})
        result = self.writer.write(batch, probe)
        self.progress = new
        return result

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
def feed(database_url: str, db: psycopg.Connection):
    migrate(database_url)
    feeding = Feed(database_url)
    yield feeding
    feeding.close()


def episode_rows(db: psycopg.Connection, customer: str) -> list[tuple[str, str]]:
    return db.execute(
        "SELECT kind, state FROM alert_episodes WHERE customer_id = %s ORDER BY episode_id",
        (customer,),
    ).fetchall()


_TOUCHED = """
SELECT relname, seq_scan + coalesce(idx_scan, 0), n_tup_ins + n_tup_upd + n_tup_del
FROM pg_stat_xact_user_tables WHERE relname IN ('alert_episodes', 'alert_overrides')
"""


def test_a_batch_that_changes_no_episode_reads_no_episode_table(feed: Feed) -> None:
    """The batch's connection counts its scans and row changes of alert_episodes and
    alert_overrides (pg_stat_xact_user_tables) just before the batch commits. Since
    PostgreSQL 15 those counts run on until the session's statistics are flushed, so each
    batch starts with a forced flush."""
    seen: list[dict[str, tuple[int, int]]] = []

    def probe(_result):
        conn = feed.writer._conn  # the batch's connection, inside its transaction
        seen.append({name: (scans, rows) for name, scans, rows in conn.execute(_TOUCHED)})
        return []

    def flushed_write(*readings):
        conn = feed.writer._conn
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.commit()  # flushed at the end of this transaction
        feed.write(*readings, probe=probe)

    customers = [f"CUST_{n:05d}" for n in range(1, 201)]
    feed.writer.ping()  # connected
    flushed_write(*((c, 75) for c in customers))  # first sight: read once
    flushed_write(("CUST_00007", 200))  # an episode fires: written
    flushed_write(*((c, 80) for c in customers if c != "CUST_00007"))

    first, firing, quiet = seen
    assert first["alert_episodes"][0] > 0 and first["alert_overrides"][0] > 0
    assert firing["alert_episodes"][1] == 1  # the new episode's row
    assert quiet == {"alert_episodes": (0, 0), "alert_overrides": (0, 0)}


def test_a_person_resolving_an_episode_is_seen_by_the_next_batch(
    feed: Feed, db: psycopg.Connection
) -> None:
    feed.write(("CUST_00001", 200))
    (episode_id,) = db.execute("SELECT episode_id FROM alert_episodes").fetchone()
    alert_operations.resolve(db, episode_id, "nurse")
    feed.write(("CUST_00001", 205))
    # a new episode, and the resolved one stays resolved (a stale copy would be joined)
    assert episode_rows(db, "CUST_00001") == [
        ("TACHYCARDIA", "resolved"), ("TACHYCARDIA", "firing"),
    ]


def test_an_override_set_between_batches_applies_to_the_next(
    feed: Feed, db: psycopg.Connection
) -> None:
    feed.write(("CUST_00002", 75))
    alert_operations.set_override(db, "CUST_00002", "BRADYCARDIA", 35, "doctor")
    feed.write(("CUST_00002", 38))  # stored as an anomaly, NORMAL for this customer's episodes
    assert episode_rows(db, "CUST_00002") == []
    feed.write(("CUST_00003", 38))
    assert episode_rows(db, "CUST_00003") == [("BRADYCARDIA", "firing")]


def test_a_no_signal_episode_opened_by_the_job_is_resolved_by_the_next_reading(
    feed: Feed, db: psycopg.Connection
) -> None:
    feed.write(("CUST_00004", 75))
    db.execute(
        "INSERT INTO customers (customer_id, last_reading_at) VALUES ('CUST_00004', %s) "
        "ON CONFLICT (customer_id) DO UPDATE SET last_reading_at = excluded.last_reading_at",
        (datetime.now(UTC) - timedelta(minutes=20),),
    )
    with db.transaction():
        opened = episodes.open_no_signal(db, datetime.now(UTC), timedelta(minutes=10),
                                         SEEN_WITHIN)
    assert opened == ["CUST_00004"]
    feed.clock = datetime.now(UTC)  # a reading after the silence
    feed.write(("CUST_00004", 76))
    assert episode_rows(db, "CUST_00004") == [("NO_SIGNAL", "resolved")]


def test_a_partition_back_from_another_consumer_is_read_again(
    feed: Feed, database_url: str, db: psycopg.Connection
) -> None:
    feed.write(("CUST_00005", 200))  # firing, kept by this writer
    other = Feed(database_url)  # the partition moves to another consumer...
    try:
        other.clock = feed.clock
        other.write(("CUST_00005", 75), ("CUST_00005", 76), ("CUST_00005", 77))  # resolved
        feed.clock = other.clock
    finally:
        other.close()
    feed.take_partition()  # ...and comes back
    feed.write(("CUST_00005", 210))
    assert episode_rows(db, "CUST_00005") == [
        ("TACHYCARDIA", "resolved"), ("TACHYCARDIA", "firing"),
    ]


def test_a_rolled_back_batch_leaves_nothing_kept(feed: Feed, db: psycopg.Connection) -> None:
    """The batch opens an episode in memory, then its transaction fails: the next batch
    must not believe that episode exists."""

    def fail(_result):
        raise RuntimeError("the batch fails after its episodes were decided")

    with pytest.raises(RuntimeError):
        feed.write(("CUST_00006", 200), probe=fail)
    feed.write(("CUST_00006", 201))
    assert episode_rows(db, "CUST_00006") == [("TACHYCARDIA", "firing")]
    (readings,) = db.execute("SELECT readings FROM alert_episodes").fetchone()
    assert readings == 1


def test_a_person_waits_for_the_batch_in_progress_then_the_next_batch_sees_the_change(
    feed: Feed, database_url: str, db: psycopg.Connection
) -> None:
    """The batch holds the epoch FOR SHARE: a resolve started while it runs waits (seen in
    pg_stat_activity) until the batch commits, so no batch decides on a stale copy."""
    feed.write(("CUST_00008", 200))
    (episode_id,) = db.execute("SELECT episode_id FROM alert_episodes").fetchone()
    person = psycopg.connect(database_url, autocommit=True)
    done = threading.Event()

    def resolve_by_hand() -> None:
        alert_operations.resolve(person, episode_id, "nurse")
        done.set()

    def meanwhile(_result):
        worker = threading.Thread(target=resolve_by_hand)
        worker.start()
        deadline = time.monotonic() + 30
        while not db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the resolve never waited for the batch"
            time.sleep(0.05)
        assert not done.is_set()
        threads.append(worker)
        return []

    threads: list[threading.Thread] = []
    try:
        feed.write(("CUST_00008", 205), probe=meanwhile)  # joins the firing episode
        threads[0].join(30)
        assert done.is_set()
        feed.write(("CUST_00008", 210))
    finally:
        person.close()
    assert episode_rows(db, "CUST_00008") == [
        ("TACHYCARDIA", "resolved"), ("TACHYCARDIA", "firing"),
    ]
    assert db.execute(
        "SELECT readings FROM alert_episodes WHERE episode_id = %s", (episode_id,)
    ).fetchone() == (2,)
