"""Write one consumed batch to PostgreSQL in ONE transaction, together with the consumer's progress.

Rows go in with COPY straight into each table, inside a savepoint; only when a row is
already there (a replay) is that COPY undone and redone through a session-local staging
table and INSERT ... SELECT ... ON CONFLICT DO NOTHING, so a replay adds nothing. The
progress of each partition moves by compare-and-set (`storage.progress`): when another
consumer of the group got there first, the whole batch is rolled back and `StaleProgress`
says which partitions to re-read. Rows and progress commit together or not at all, which
is what makes a kill -9 at any instant lose and double nothing.

A reading is stored once under its identity (customer_id, event_timestamp): as a record
or an anomaly, and an alert row only with the anomaly actually inserted. A dead letter
(no reading to name it) is stored once per message: (log_epoch, partition, offset), the
epoch naming one log of one topic (sql/007). The same transaction marks the minutes the
batch touched as pending for the rollups (`storage.rollups`) and adds what it stored to the
counts the dashboard and vw_pipeline_summary read instead of raw rows
(`storage.live_counts`, sql/011).

A batch the database refuses because of one message's content does not stop the stream:
the message is found by halving the batch, stored as a dead letter with the database's
error as the reason, and the rest is written (`storage.db_errors`). A passing conflict or
timeout is retried a few times first, and is never taken for a message's fault: when it
persists, or meets the search, it is raised like an outage, for the caller to wait out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import psycopg

from heartbeat_platform.domain.alerts import MetricRow
from heartbeat_platform.domain.dead_letters import DeadLetterClass
from heartbeat_platform.domain.episodes import Rules
from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.storage import db_errors, episodes, live_counts
from heartbeat_platform.storage.copy_format import (
    ANOMALIES,
    DEAD_LETTERS,
    METRICS,
    MINUTE,
    PG_EPOCH,
    RECORDS,
    AnomalyRow,
    DeadLetterRow,
    RecordRow,
    dead_letter_row,
    encode_anomalies,
    encode_metrics,
    encode_records,
    minute_number,
)
from heartbeat_platform.storage.database import connect
from heartbeat_platform.storage.partitions import ensure_partitions
from heartbeat_platform.storage.progress import (
    PartitionProgress,
    ProgressMove,
    ProgressStore,
    StaleProgress,
    StoredProgress,
)
from heartbeat_platform.storage.rollups import Rollup, mark_pending

__all__ = [
    "Batch", "BatchWriter", "PartitionProgress", "StaleProgress", "WriteResult",
    "TRANSIENT_RETRIES", "MAX_FAILING_MESSAGES",
]

log = logging.getLogger(__name__)

TRANSIENT_RETRIES = 3  # a conflict or timeout: the same batch again, then message by message
MAX_FAILING_MESSAGES = 100  # more refused messages in one batch: not a message problem
Position = tuple[int, int]  # (kafka_partition, kafka_offset)
RawMessage = tuple[bytes | None, bytes | None]  # (key, value) as consumed


@dataclass(frozen=True, slots=True)
class CopyPayloads:
    records: bytes  # binary COPY format
    anomalies: str  # text COPY format
    alerts: str  # text COPY format, the batch's `metrics`
    minutes: list[datetime]  # the minutes the batch's readings fall in, for the rollups
    counts: live_counts.BatchCounts  # what the batch adds to the live counts, if all is new


@dataclass(slots=True)
class Batch:
    records: list[RecordRow] = field(default_factory=list)
    anomalies: list[AnomalyRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    metrics: list[MetricRow] = field(default_factory=list)
    progress: dict[int, ProgressMove] = field(default_factory=dict)
    # The consumed (key, value) of each position: only read to turn a message the database
    # refuses into a dead letter (records keep no raw bytes).
    raw: Callable[[Position], RawMessage] | None = None
    payloads: CopyPayloads | None = None  # the rows in COPY format, once encoded

    def encode(self) -> CopyPayloads:
        """Build the COPY payloads now, on the calling thread (once; later calls reuse them).

        The consumer calls it before handing the batch to its writer thread: the Python
        work then overlaps the previous batch's COPY instead of queueing behind it, and
        the writer thread only waits on PostgreSQL.
        """
        if self.payloads is None:
            minutes: set[int] = set()
            counts = live_counts.BatchCounts()
            records = encode_records(self.records, minutes, counts.per_minute,
                                     counts.newest_micros)
            counts.add_anomalies(self.anomalies)
            minutes.update(minute_number(row[1]) for row in self.anomalies)
            self.payloads = CopyPayloads(
                records,
                encode_anomalies(self.anomalies),
                encode_metrics(self.metrics),
                sorted(PG_EPOCH + m * MINUTE for m in minutes),
                counts,
            )
        return self.payloads

    @property
    def message_count(self) -> int:
        return len(self.records) + len(self.anomalies) + len(self.dead_letters)

    def positions(self) -> list[Position]:
        return sorted(
            [(r[4], r[5]) for r in self.records] + [(a[6], a[7]) for a in self.anomalies]
            + [(d[1], d[2]) for d in self.dead_letters]
        )

    def only(self, positions: Iterable[Position]) -> Batch:
        """The rows of these messages, without progress: a trial write."""
        keep = set(positions)
        return Batch(
            [r for r in self.records if (r[4], r[5]) in keep],
            [a for a in self.anomalies if (a[6], a[7]) in keep],
            [d for d in self.dead_letters if (d[1], d[2]) in keep],
            [m for m in self.metrics if (m.kafka_partition, m.kafka_offset) in keep],
        )

    def refused(self, reasons: dict[Position, str]) -> Batch:
        """The same batch with these messages as dead letters (their rows taken out)."""
        if self.raw is None:
            raise ValueError("a batch without its raw messages cannot dead-letter one")
        epochs = {(r[4], r[5]): r[3] for r in self.records}
        epochs.update({(a[6], a[7]): a[5] for a in self.anomalies})
        dead = [d for d in self.dead_letters if (d[1], d[2]) not in reasons]
        for (partition, offset), reason in sorted(reasons.items()):
            key, value = self.raw((partition, offset))
            epoch = epochs.get((partition, offset), 0)
            dead.append((epoch, partition, offset, key, value,
                         f"the database refused it: {reason}", DeadLetterClass.REFUSED))
        return replace(
            self,
            records=[r for r in self.records if (r[4], r[5]) not in reasons],
            anomalies=[a for a in self.anomalies if (a[6], a[7]) not in reasons],
            dead_letters=dead,
            metrics=[m for m in self.metrics if (m.kafka_partition, m.kafka_offset) not in reasons],
            payloads=None,
        )


@dataclass(frozen=True, slots=True)
class WriteResult:
    records: int
    duplicates: int  # readings already stored (records and anomalies)
    anomalies: int
    dead_letters: int
    metrics: int
    refused: int = 0  # messages the database refused, stored as dead letters
    episode_transitions: int = 0  # alert episodes fired or resolved (one outbox row each)


# No unique key can name a dead letter (its partition key is its arrival time), so a
# message already stored is skipped by a lookup. Only replays meet one; consumers of one
# group never write the same partition at once (progress moves by compare-and-set).
_INSERT_DEAD_LETTERS = DEAD_LETTERS.insert_from_stage(
    "WHERE NOT EXISTS (SELECT 1 FROM heartbeat_dead_letters d WHERE d.kafka_partition = "
    "stage_dead_letters.kafka_partition AND d.kafka_offset = stage_dead_letters.kafka_offset "
    "AND d.log_epoch = stage_dead_letters.log_epoch)"
)
_INSERT_RECORDS = RECORDS.insert_from_stage(
    "ON CONFLICT DO NOTHING RETURNING kafka_partition, kafka_offset"
)
_INSERT_ANOMALIES = ANOMALIES.insert_from_stage(
    "ON CONFLICT DO NOTHING RETURNING kafka_partition, kafka_offset"
)


class BatchWriter:
    """One PostgreSQL connection that writes batches for one (consumer group, topic)."""

    def __init__(
        self, database_url: str, group: str, topic: str, episode_rules: Rules | None = None
    ):
        """`episode_rules`: advance alert episodes in each batch's transaction (None: off)."""
        self.database_url = database_url
        self.episode_rules = episode_rules
        self.progress = ProgressStore(group, topic)
        self.topic_id: str | None = None  # the broker's id of the topic, stored with progress
        self._conn: psycopg.Connection | None = None
        # Each customer's minute of last_reading_at in the customers table, as of the last
        # commit (None: read them again, after a reconnect or a rolled-back batch).
        self._known_customers: dict[str, int] | None = None
        # The open episodes of the customers seen, as of the last commit (forgotten with
        # _known_customers, and at each assignment: see `load`).
        self._open_episodes = episodes.OpenEpisodes()

    # -- connection -----------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            conn = connect(self.database_url)
            # Safe here, and much faster: progress commits with the rows, so a server crash
            # that loses the last commits loses their progress too, and those messages are
            # read from Kafka again. No reading is lost or doubled.
            conn.execute("SET synchronous_commit = off")
            for table in (RECORDS, ANOMALIES, DEAD_LETTERS):
                conn.execute(table.stage_ddl())
            episodes.keep_consumer_caches(conn, session=True)  # it keeps its own
            conn.commit()
            self._conn = conn
        return self._conn

    def close(self) -> None:
        self._forget()
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _in_transaction(self, action: Callable[[psycopg.Connection], object]):
        conn = self._connection()
        try:
            with conn.transaction():
                return action(conn)
        except psycopg.OperationalError:
            self.close()
            raise
        except BaseException:
            self._forget()  # what the batch wrote was rolled back
            raise

    def _forget(self) -> None:
        """Read the customers and open episodes kept in memory again at the next batch."""
        self._known_customers = None
        self._open_episodes.forget()

    # -- progress -------------------------------------------------------------------------
    def load(self, partitions: Iterable[int]) -> dict[int, StoredProgress]:
        """Stored progress of these partitions, with the topic id it was stored under.

        Called at each assignment: another consumer may have had these partitions since,
        and changed their customers' episodes, so the open episodes are read again."""
        self._open_episodes.forget()
        return self._in_transaction(lambda conn: self.progress.load(conn, partitions))

    def load_progress(self, partitions: Iterable[int]) -> dict[int, PartitionProgress]:
        """Stored progress of these partitions; missing ones have never been consumed."""
        return {p: stored.progress for p, stored in self.load(partitions).items()}

    def logs(self, partitions: Iterable[int]):
        """The known logs of these partitions (`storage.progress.KafkaLog`), oldest first."""
        return self._in_transaction(lambda conn: self.progress.logs(conn, partitions))

    def register_log(self, partition: int, topic_id: str | None, start_offset: int, reason: str):
        """A new log of `partition` under an epoch never used before."""
        return self._in_transaction(
            lambda conn: self.progress.register_log(conn, partition, topic_id, start_offset, reason)
        )

    def current_or_first_log(self, partition: int, topic_id: str | None):
        """The partition's current logs, its first registered if none (`storage.progress`)."""
        return self._in_transaction(
            lambda conn: self.progress.current_or_first_log(conn, partition, topic_id)
        )

    def move_progress(
        self, partition: int, expected: PartitionProgress | None, new: PartitionProgress
    ) -> None:
        """Move a partition's progress without rows (a new log, or retention skipped some)."""
        self._in_transaction(
            lambda conn: self.progress.advance(conn, {partition: (expected, new)}, self.topic_id)
        )

    def ensure_partitions(self, policy: RetentionPolicy) -> int | None:
        """Create the missing day partitions of the admissible window; how many, or None
        when a reader kept the tables locked (they exist days ahead: try again later)."""
        try:
            return ensure_partitions(self._connection(), policy, datetime.now(UTC))
        except psycopg.errors.LockNotAvailable:
            return None

    def ping(self) -> None:
        """Raise psycopg.OperationalError while the database is unreachable."""
        conn = self._connection()
        conn.execute("SELECT 1")
        conn.rollback()

    # -- the batch ------------------------------------------------------------------------
    def write(
        self,
        batch: Batch,
        extra_metrics: Callable[[WriteResult], list[MetricRow]] | None = None,
    ) -> WriteResult:
        """Write the batch and move progress; `extra_metrics` sees the counts before commit.

        It lets the caller add a stats snapshot that includes this batch, in the same
        transaction, so a rolled-back batch leaves no snapshot behind. Raises
        psycopg.OperationalError during an outage, StaleProgress when another consumer moved
        a partition on, and any error no retry or dead letter can fix.
        """
        def write_batch(conn: psycopg.Connection) -> WriteResult:
            return self._write(conn, batch, extra_metrics)

        delay = 0.5
        for attempt in range(TRANSIENT_RETRIES + 1):
            try:
                return self._in_transaction(write_batch)
            except psycopg.Error as exc:
                failure = db_errors.classify(exc)
                if failure is db_errors.Failure.TRANSIENT and attempt < TRANSIENT_RETRIES:
                    log.warning("batch write failed (%s); trying again in %.1fs",
                                db_errors.describe(exc), delay)
                    time.sleep(delay)
                    delay *= 2
                    continue
                if failure is not db_errors.Failure.CONTENT:
                    raise  # a conflict or timeout each time says nothing of the content
                refused = self._find_refused(batch)
                if not refused:
                    raise  # no single message fails on its own: not a content problem
                log.error("the database refused %d message(s) of a batch of %d; they become "
                          "dead letters: %s", len(refused), batch.message_count,
                          "; ".join(sorted(set(refused.values()))))
                batch = batch.refused(refused)
                return replace(self._in_transaction(write_batch), refused=len(refused))
        raise AssertionError("unreachable")

    def _find_refused(self, batch: Batch) -> dict[Position, str]:
        """The messages of `batch` the database refuses on their own, with its reasons."""
        def attempt(positions: Sequence[Position]) -> BaseException | None:
            conn = self._connection()
            try:
                with conn.transaction(force_rollback=True):
                    self._write_rows(conn, batch.only(positions))
            except psycopg.Error as exc:
                failure = db_errors.classify(exc)
                if failure is db_errors.Failure.OUTAGE:
                    self.close()
                if failure in (db_errors.Failure.OUTAGE, db_errors.Failure.TRANSIENT):
                    raise  # no verdict on these messages: the caller retries the batch later
                return exc
            return None

        failing = db_errors.find_failing(batch.positions(), attempt, MAX_FAILING_MESSAGES)
        return {position: db_errors.describe(exc) for position, exc in failing.items()}

    def _write(
        self, conn: psycopg.Connection, batch: Batch,
        extra_metrics: Callable[[WriteResult], list[MetricRow]] | None,
    ) -> WriteResult:
        self.progress.advance(conn, batch.progress, self.topic_id)
        result, alerts_text, records, anomalies = self._write_rows(conn, batch)
        if self.episode_rules is not None and (batch.records or anomalies):
            outcome = episodes.apply_batch(
                conn, batch.records, anomalies, datetime.now(UTC), self.episode_rules,
                self._open_episodes,
            )
            result = replace(result, episode_transitions=len(outcome.transitions))
        payloads = batch.encode()
        if payloads.minutes:
            partition = min(batch.progress)
            mark_pending(conn, Rollup.FLEET_MINUTE, payloads.minutes, partition)
            counts = payloads.counts
            if records is not batch.records or anomalies is not batch.anomalies:
                counts = live_counts.count_batch(records, anomalies)  # a replay: new rows only
            if self._known_customers is None:
                self._known_customers = live_counts.load_known(conn)
            live_counts.write(conn, partition, counts, self._known_customers)
        snapshot = extra_metrics(result) if extra_metrics else []
        if alerts_text or snapshot:
            _copy(conn, METRICS.copy_into(), alerts_text + encode_metrics(snapshot))
        return result

    @staticmethod
    def _write_rows(
        conn: psycopg.Connection, batch: Batch
    ) -> tuple[WriteResult, str, list[RecordRow], list[AnomalyRow]]:
        """The batch's rows; the result, the alert rows (COPY text) still to write and the
        records and anomalies inserted (not those already stored: the batch's own lists
        when every row was new)."""
        payloads = batch.encode()
        new_records = batch.records
        if batch.records:
            inserted_records = _insert_records(conn, payloads.records)
            if inserted_records is not None:
                new_records = [r for r in batch.records if (r[4], r[5]) in inserted_records]
        records = len(new_records)
        alerts, alerts_text = batch.metrics, payloads.alerts
        new_anomalies = batch.anomalies
        if batch.anomalies:
            inserted = _insert_anomalies(conn, payloads.anomalies)
            if inserted is not None:  # a replay: only new anomalies raise alerts
                new_anomalies = [a for a in batch.anomalies if (a[6], a[7]) in inserted]
                alerts = [m for m in alerts if (m.kafka_partition, m.kafka_offset) in inserted]
                alerts_text = encode_metrics(alerts)
        anomalies = len(new_anomalies)
        dead = _insert_dead_letters(conn, batch.dead_letters)
        duplicates = len(batch.records) - records + len(batch.anomalies) - anomalies
        result = WriteResult(records, duplicates, anomalies, dead, len(alerts))
        return result, alerts_text, new_records, new_anomalies


def _copy(conn: psycopg.Connection, statement: str, data: str | bytes) -> None:
    binary = isinstance(data, bytes)
    with conn.cursor().copy(statement + (" (FORMAT binary)" if binary else "")) as copy:
        copy.write(data if isinstance(data, bytes) else data.encode())


def _insert_records(conn: psycopg.Connection, data: bytes) -> set[Position] | None:
    """COPY straight into the table; if a row is already there, redo it without duplicates.

    Replays are rare (progress is stored with the rows), so the fast path nearly always
    wins; the fallback stages the rows and inserts with ON CONFLICT DO NOTHING, which
    PostgreSQL runs about a third slower. None: every row was inserted; else the
    (partition, offset) of those inserted.
    """
    try:
        with conn.transaction():  # a savepoint: a conflict undoes only this COPY
            _copy(conn, RECORDS.copy_into(), data)
        return None
    except psycopg.errors.UniqueViolation:
        _copy(conn, RECORDS.copy_into(RECORDS.stage), data)
        return set(conn.execute(_INSERT_RECORDS).fetchall())


def _insert_anomalies(conn: psycopg.Connection, data: str) -> set[Position] | None:
    """Anomalies by COPY; after a repeat, the (partition, offset) of those inserted.

    None means every row was new (the fast path), so every alert of the batch is written.
    """
    try:
        with conn.transaction():
            _copy(conn, ANOMALIES.copy_into(), data)
        return None
    except psycopg.errors.UniqueViolation:
        _copy(conn, ANOMALIES.copy_into(ANOMALIES.stage), data)
        return set(conn.execute(_INSERT_ANOMALIES).fetchall())


def _insert_dead_letters(conn: psycopg.Connection, rows: list[DeadLetterRow]) -> int:
    """Dead letters not stored yet (rare: row by row COPY)."""
    if not rows:
        return 0
    with conn.cursor().copy(DEAD_LETTERS.copy_into(DEAD_LETTERS.stage)) as copy:
        for row in rows:
            copy.write_row(dead_letter_row(row))
    return conn.execute(_INSERT_DEAD_LETTERS).rowcount
