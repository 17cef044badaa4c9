"""Write one consumed batch to PostgreSQL in ONE transaction, together with the consumer's progress.

Rows go in with COPY straight into each table, inside a savepoint; only when a row is
already there (a replay) is that COPY undone and redone through a session-local staging
table and INSERT ... SELECT ... ON CONFLICT DO NOTHING, so a replay adds nothing. The
progress row of each partition (with the topic's id, to recognise a re-created topic)
is moved forward only from the offset this consumer expects (a compare-and-set): when
another consumer of the group got there first, the whole batch is rolled back and
`StaleProgress` says which partitions to re-read. Rows and progress commit together or
not at all, which is what makes a kill -9 at any instant lose and double nothing.

The raw tables are partitioned by time (sql/006), so a unique key can only name a message
together with its time column. Anomalies are unique per message and event time; an alert
row is written only with the anomaly it belongs to (after a replay, only the alerts of the
anomalies actually inserted), and a dead letter already stored is skipped by a lookup.
The same transaction marks the minutes the batch touched as pending for the rollups
(`storage.rollups`), so every stored reading reaches them exactly once.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter

import orjson
import psycopg

from heartbeat_platform.domain.alerts import MetricRow
from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.storage.database import connect
from heartbeat_platform.storage.partitions import ensure_partitions

log = logging.getLogger(__name__)

RecordRow = tuple[str, datetime, int, int, int, int]
"""customer_id, event_timestamp, heart_rate, log_epoch, kafka_partition, kafka_offset"""
AnomalyRow = tuple[str, datetime, int, str, str, int, int, int]
"""customer_id, event_timestamp, heart_rate, anomaly_type, raw_payload, epoch, partition, offset"""
DeadLetterRow = tuple[int, int, int, bytes | None, bytes | None, str]
"""log_epoch, kafka_partition, kafka_offset, message_key, raw_value, reason"""


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """Where a partition stands: the epoch of its log and the next offset to read."""

    log_epoch: int
    next_offset: int


@dataclass(frozen=True, slots=True)
class CopyPayloads:
    records: bytes  # binary COPY format
    anomalies: str  # text COPY format
    alerts: str  # text COPY format, the batch's `metrics`
    minutes: list[datetime]  # the minutes the batch's readings fall in, for the rollups


@dataclass(slots=True)
class Batch:
    records: list[RecordRow] = field(default_factory=list)
    anomalies: list[AnomalyRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    metrics: list[MetricRow] = field(default_factory=list)
    # partition -> (progress this consumer expects in the table or None if new, progress after)
    progress: dict[int, tuple[PartitionProgress | None, PartitionProgress]] = field(
        default_factory=dict
    )
    payloads: CopyPayloads | None = None  # the rows in COPY format, once encoded

    def encode(self) -> CopyPayloads:
        """Build the COPY payloads now, on the calling thread (once; later calls reuse them).

        The consumer calls it before handing the batch to its writer thread: the Python
        work then overlaps the previous batch's COPY instead of queueing behind it, and
        the writer thread only waits on PostgreSQL.
        """
        if self.payloads is None:
            minutes: set[int] = set()
            records = encode_records(self.records, minutes)
            minutes.update(_minute_number(row[1]) for row in self.anomalies)
            self.payloads = CopyPayloads(
                records,
                _anomalies_text(self.anomalies),
                _metrics_text(self.metrics),
                sorted(_PG_EPOCH + m * _MINUTE for m in minutes),
            )
        return self.payloads

    @property
    def message_count(self) -> int:
        return len(self.records) + len(self.anomalies) + len(self.dead_letters)


@dataclass(frozen=True, slots=True)
class WriteResult:
    records: int
    duplicates: int
    anomalies: int
    dead_letters: int
    metrics: int


class StaleProgress(RuntimeError):
    """Another consumer moved these partitions on; this batch was rolled back."""

    def __init__(self, partitions: Sequence[int]):
        super().__init__(f"progress of partitions {sorted(partitions)} moved on elsewhere")
        self.partitions = list(partitions)


_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_records (
    customer_id text, event_timestamp timestamptz, heart_rate integer,
    log_epoch integer, kafka_partition integer, kafka_offset bigint) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_anomalies (
    customer_id text, event_timestamp timestamptz, heart_rate integer, anomaly_type text,
    raw_payload text, log_epoch integer, kafka_partition integer, kafka_offset bigint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_dead_letters (
    log_epoch integer, kafka_partition integer, kafka_offset bigint, message_key bytea,
    raw_value bytea, reason text) ON COMMIT DELETE ROWS;
"""

_INSERT_RECORDS = """
INSERT INTO heartbeat_records
    (customer_id, event_timestamp, heart_rate, log_epoch, kafka_partition, kafka_offset)
SELECT customer_id, event_timestamp, heart_rate, log_epoch, kafka_partition, kafka_offset
FROM stage_records
ON CONFLICT DO NOTHING
"""

_INSERT_ANOMALIES = """
INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate, anomaly_type,
                                 raw_payload, log_epoch, kafka_partition, kafka_offset)
SELECT customer_id, event_timestamp, heart_rate, anomaly_type,
       raw_payload, log_epoch, kafka_partition, kafka_offset
FROM stage_anomalies
ON CONFLICT DO NOTHING
RETURNING log_epoch, kafka_partition, kafka_offset
"""

# No unique key can name a dead letter (its partition key is its arrival time), so a
# message already stored is skipped by a lookup. Only replays meet one; consumers of one
# group never write the same partition at once (progress moves by compare-and-set).
_INSERT_DEAD_LETTERS = """
INSERT INTO heartbeat_dead_letters
    (log_epoch, kafka_partition, kafka_offset, message_key, raw_value, reason)
SELECT s.log_epoch, s.kafka_partition, s.kafka_offset, s.message_key, s.raw_value, s.reason
FROM stage_dead_letters s
WHERE NOT EXISTS (
    SELECT 1 FROM heartbeat_dead_letters d
    WHERE d.kafka_partition = s.kafka_partition AND d.kafka_offset = s.kafka_offset
      AND d.log_epoch = s.log_epoch)
"""

_MARK_PENDING = """
INSERT INTO rollup_pending (rollup, window_start, kafka_partition)
SELECT 'fleet_minute', minute, %(partition)s FROM unnest(%(minutes)s::timestamptz[]) AS minute
ON CONFLICT (rollup, window_start, kafka_partition) DO UPDATE SET marked_at = clock_timestamp()
"""

_ADVANCE = """
UPDATE consumer_progress
SET next_offset = %(next_offset)s, log_epoch = %(new_epoch)s, updated_at = now(),
    topic_id = coalesce(%(topic_id)s, topic_id)
WHERE consumer_group = %(group)s AND topic = %(topic)s AND kafka_partition = %(partition)s
  AND next_offset = %(expected_offset)s AND log_epoch = %(expected_epoch)s
"""

_CLAIM = """
INSERT INTO consumer_progress
    (consumer_group, topic, kafka_partition, log_epoch, next_offset, topic_id)
VALUES (%(group)s, %(topic)s, %(partition)s, %(new_epoch)s, %(next_offset)s, %(topic_id)s)
ON CONFLICT DO NOTHING
"""


class BatchWriter:
    """One PostgreSQL connection that writes batches for one (consumer group, topic)."""

    def __init__(self, database_url: str, group: str, topic: str):
        self.database_url = database_url
        self.group = group
        self.topic = topic
        self.topic_id: str | None = None  # the broker's id of the topic, stored with progress
        self._conn: psycopg.Connection | None = None

    # -- connection -----------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            conn = connect(self.database_url)
            # Safe here, and much faster: progress commits with the rows, so a server crash
            # that loses the last commits loses their progress too, and those messages are
            # read from Kafka again. No reading is lost or doubled.
            conn.execute("SET synchronous_commit = off")
            conn.execute(_STAGING)
            conn.commit()
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    # -- progress -------------------------------------------------------------------------
    def load_progress(self, partitions: Iterable[int]) -> dict[int, PartitionProgress]:
        """Stored progress of these partitions; missing ones have never been consumed."""
        return self.load_progress_and_topic_ids(partitions)[0]

    def load_progress_and_topic_ids(
        self, partitions: Iterable[int]
    ) -> tuple[dict[int, PartitionProgress], dict[int, str | None]]:
        """Stored progress, and the topic id each was stored under (None: not known)."""
        conn = self._connection()
        with conn.transaction():
            rows = conn.execute(
                "SELECT kafka_partition, log_epoch, next_offset, topic_id FROM consumer_progress "
                "WHERE consumer_group = %s AND topic = %s AND kafka_partition = ANY(%s)",
                (self.group, self.topic, list(partitions)),
            ).fetchall()
        progress = {p: PartitionProgress(epoch, offset) for p, epoch, offset, _ in rows}
        return progress, {p: stored_id for p, _, _, stored_id in rows}

    def next_epoch(self, partition: int) -> int:
        """A log epoch never used for this partition by any group, for a log that was reset."""
        conn = self._connection()
        with conn.transaction():
            row = conn.execute(
                "SELECT coalesce(max(log_epoch), -1) + 1 FROM consumer_progress "
                "WHERE topic = %s AND kafka_partition = %s",
                (self.topic, partition),
            ).fetchone()
        return row[0]

    def move_progress(
        self, partition: int, expected: PartitionProgress | None, new: PartitionProgress
    ) -> None:
        """Move a partition's progress without rows (log reset or truncation handling)."""
        self.write(Batch(progress={partition: (expected, new)}))

    def ensure_partitions(self, policy: RetentionPolicy) -> int | None:
        """Create the missing day partitions of the admissible window; how many, or None
        when a reader kept the tables locked (they exist days ahead: try again later)."""
        try:
            return ensure_partitions(self._connection(), policy, datetime.now(UTC))
        except psycopg.errors.LockNotAvailable:
            return None

    # -- the batch ------------------------------------------------------------------------
    def ping(self) -> None:
        """Raise psycopg.OperationalError while the database is unreachable."""
        self._connection().execute("SELECT 1")
        self._conn.rollback()

    def write(
        self,
        batch: Batch,
        extra_metrics: Callable[[WriteResult], list[MetricRow]] | None = None,
    ) -> WriteResult:
        """Write the batch and move progress; `extra_metrics` sees the counts before commit.

        It lets the caller add a stats snapshot that includes this batch, in the same
        transaction, so a rolled-back batch leaves no snapshot behind.
        """
        conn = self._connection()
        try:
            with conn.transaction():
                self._advance_progress(conn, batch)
                payloads = batch.encode()
                records = 0
                if batch.records:
                    records = _insert(conn, _RECORDS, payloads.records, len(batch.records))
                duplicates = len(batch.records) - records
                alerts, alerts_text = batch.metrics, payloads.alerts
                anomalies = len(batch.anomalies)
                if batch.anomalies:
                    inserted = _insert_anomalies(conn, payloads.anomalies)
                    if inserted is not None:  # a replay: only new anomalies raise alerts
                        anomalies = len(inserted)
                        alerts = [m for m in alerts if _position(m) in inserted]
                        alerts_text = _metrics_text(alerts)
                dead = _insert_dead_letters(conn, batch.dead_letters)
                if payloads.minutes:
                    conn.execute(
                        _MARK_PENDING,
                        {"partition": min(batch.progress), "minutes": payloads.minutes},
                    )
                result = WriteResult(records, duplicates, anomalies, dead, len(alerts))
                snapshot = extra_metrics(result) if extra_metrics else []
                if alerts or snapshot:
                    _copy(conn, f"pipeline_metrics ({_METRIC_COLUMNS})",
                          alerts_text + _metrics_text(snapshot))
        except psycopg.OperationalError:
            self.close()
            raise
        return result

    def _advance_progress(self, conn: psycopg.Connection, batch: Batch) -> None:
        stale = []
        for partition, (expected, new) in batch.progress.items():
            params = {
                "group": self.group,
                "topic": self.topic,
                "partition": partition,
                "next_offset": new.next_offset,
                "new_epoch": new.log_epoch,
                "topic_id": self.topic_id,
            }
            if expected is None:
                moved = conn.execute(_CLAIM, params).rowcount
            else:
                params["expected_offset"] = expected.next_offset
                params["expected_epoch"] = expected.log_epoch
                moved = conn.execute(_ADVANCE, params).rowcount
            if moved != 1:
                stale.append(partition)
        if stale:
            raise StaleProgress(stale)


# -- COPY text format, built in one pass: psycopg's per-row formatting was the hot spot ----
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass(frozen=True)
class _Target:
    """A table written by COPY, its staging twin, and the duplicate-free fallback insert."""

    table: str
    stage: str
    columns: str
    fallback: str


_RECORDS = _Target(
    "heartbeat_records", "stage_records",
    "customer_id, event_timestamp, heart_rate, log_epoch, kafka_partition, kafka_offset",
    _INSERT_RECORDS,
)
_ANOMALIES = _Target(
    "heartbeat_anomalies", "stage_anomalies",
    "customer_id, event_timestamp, heart_rate, anomaly_type, raw_payload, log_epoch, "
    "kafka_partition, kafka_offset",
    _INSERT_ANOMALIES,
)
_METRIC_COLUMNS = (
    "metric_name, metric_value, customer_id, log_epoch, kafka_partition, kafka_offset, labels"
)


def _copy(conn: psycopg.Connection, target: str, data: str | bytes) -> None:
    binary = isinstance(data, bytes)
    statement = f"COPY {target} FROM STDIN" + (" (FORMAT binary)" if binary else "")
    with conn.cursor().copy(statement) as copy:
        copy.write(data if binary else data.encode())


def _insert(conn: psycopg.Connection, target: _Target, data: str | bytes, rows: int) -> int:
    """COPY straight into the table; if a row is already there, redo it without duplicates.

    Replays are rare (progress is stored with the rows), so the fast path nearly always
    wins; the fallback stages the rows and inserts with ON CONFLICT DO NOTHING, which
    PostgreSQL runs about a third slower. Returns the number of rows inserted.
    """
    try:
        with conn.transaction():  # a savepoint: a conflict undoes only this COPY
            _copy(conn, f"{target.table} ({target.columns})", data)
        return rows
    except psycopg.errors.UniqueViolation:
        _copy(conn, target.stage, data)
        return conn.execute(target.fallback).rowcount


def _insert_anomalies(conn: psycopg.Connection, data: str) -> set[tuple[int, int, int]] | None:
    """Anomalies by COPY; after a replay, the (epoch, partition, offset) of those inserted.

    None means every row was new (the fast path), so every alert of the batch is written.
    """
    try:
        with conn.transaction():
            _copy(conn, f"{_ANOMALIES.table} ({_ANOMALIES.columns})", data)
        return None
    except psycopg.errors.UniqueViolation:
        _copy(conn, _ANOMALIES.stage, data)
        return set(conn.execute(_ANOMALIES.fallback).fetchall())


def _insert_dead_letters(conn: psycopg.Connection, rows: list[DeadLetterRow]) -> int:
    """Dead letters not stored yet (rare: row by row COPY, NUL made visible in reasons)."""
    if not rows:
        return 0
    with conn.cursor().copy(
        "COPY stage_dead_letters (log_epoch, kafka_partition, kafka_offset, message_key, "
        "raw_value, reason) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row((*row[:5], row[5].replace("\x00", "\\x00")))
    return conn.execute(_INSERT_DEAD_LETTERS).rowcount


def _position(metric: MetricRow) -> tuple[int | None, int | None, int | None]:
    return metric.log_epoch, metric.kafka_partition, metric.kafka_offset


_customer_id = itemgetter(0)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MINUTE = timedelta(minutes=1)
_MINUTE_US = 60_000_000
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_BINARY_TRAILER = b"\xff\xff"
_record_structs: dict[int, struct.Struct] = {}


def _record_struct(id_length: int) -> struct.Struct:
    """Binary COPY layout of a record row: 6 fields, each length-prefixed."""
    layout = _record_structs.get(id_length)
    if layout is None:
        layout = _record_structs[id_length] = struct.Struct(f">hi{id_length}siqiiiiiiiq")
    return layout


def _minute_number(when: datetime) -> int:
    return (when - _PG_EPOCH) // _MINUTE


def encode_records(rows: list[RecordRow], minutes: set[int] | None = None) -> bytes:
    """Records in COPY's binary format, grouped by customer; adds their minutes to `minutes`.

    Binary is about three times cheaper to build than text, and PostgreSQL skips parsing
    timestamps. Grouped by customer_id, the primary key's first column, consecutive rows
    land on neighbouring primary-key pages, which made PostgreSQL's COPY about a fifth
    faster. The sort is stable and on the id alone: comparing aware datetimes cost twice
    as much, and a customer's readings come from one partition, already in order.
    """
    out = [_BINARY_HEADER]
    append = out.append
    seen = set() if minutes is None else minutes
    add_minute = seen.add
    for customer, when, bpm, epoch, partition, offset in sorted(rows, key=_customer_id):
        encoded = customer.encode()
        micros = (when - _PG_EPOCH) // _MICROSECOND
        add_minute(micros // _MINUTE_US)
        append(
            _record_struct(len(encoded)).pack(
                6, len(encoded), encoded, 8, micros, 4, bpm, 4, epoch, 4, partition, 8, offset,
            )
        )
    append(_BINARY_TRAILER)
    return b"".join(out)


def _anomalies_text(rows: list[AnomalyRow]) -> str:
    return "".join(
        [
            f"{customer}\t{when.isoformat()}\t{bpm}\t{kind}\t{raw.translate(_COPY_ESCAPES)}"
            f"\t{epoch}\t{partition}\t{offset}\n"
            for customer, when, bpm, kind, raw, epoch, partition, offset in rows
        ]
    )


def _metrics_text(rows: list[MetricRow]) -> str:
    def value(v: object) -> str:
        return "\\N" if v is None else str(v)

    return "".join(
        [
            f"{m.metric_name}\t{m.metric_value!r}\t{value(m.customer_id)}\t{value(m.log_epoch)}"
            f"\t{value(m.kafka_partition)}\t{value(m.kafka_offset)}"
            f"\t{orjson.dumps(m.labels).decode().translate(_COPY_ESCAPES)}\n"
            for m in rows
        ]
    )
