"""What a batch adds to the counts the dashboard and vw_pipeline_summary read (sql/011).

The writer calls these in the batch's transaction with the rows it actually inserted (a
repeat the tables refused counts nothing): readings per minute and in all, and the
customers whose newest valid reading moved to a later minute, so no panel and no view
column has to count raw readings (README, "The dashboard when the rollups lag").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from heartbeat_platform.domain.events import HeartbeatClass
from heartbeat_platform.storage.copy_format import (
    MINUTE,
    PG_EPOCH,
    AnomalyRow,
    RecordRow,
    minute_number,
)

COUNT_READINGS = (
    "SELECT heartbeat_count_readings(%s, %s::timestamptz[], %s::bigint[], %s::bigint[], "
    "%s::bigint[], %s::bigint[], %s::bigint[], %s::timestamptz)"
)
NOTE_CUSTOMERS = (
    "SELECT heartbeat_note_customers(%s::text[], %s::timestamptz[], %s::timestamptz[])"
)
KNOWN_CUSTOMERS = "SELECT customer_id, last_reading_at FROM customers"
# an anomaly's class -> its place in a minute's counts (after records and the bpm sum), in
# the domain's order, which is the order of heartbeat_count_readings' count arguments
_KINDS = {kind.value: 2 + i
          for i, kind in enumerate(k for k in HeartbeatClass if k is not HeartbeatClass.NORMAL)}
_MICROSECOND = timedelta(microseconds=1)
_MINUTE_US = 60_000_000


@dataclass(frozen=True, slots=True)
class BatchCounts:
    # minute number -> [records, bpm sum, bradycardia, tachycardia, invalid]
    per_minute: dict[int, list[int]] = field(default_factory=dict)
    # each customer's newest valid reading, microseconds since PG_EPOCH
    newest_micros: dict[str, int] = field(default_factory=dict)

    @property
    def newest_record(self) -> datetime | None:
        newest = max(self.newest_micros.values(), default=None)
        return None if newest is None else PG_EPOCH + newest * _MICROSECOND

    def add_anomalies(self, anomalies: Iterable[AnomalyRow]) -> None:
        per_minute = self.per_minute
        for _, when, _, kind, *_ in anomalies:
            counts = per_minute.get(minute := minute_number(when))
            if counts is None:
                counts = per_minute[minute] = [0, 0, 0, 0, 0]
            counts[_KINDS[kind]] += 1


def count_batch(records: Iterable[RecordRow], anomalies: Iterable[AnomalyRow]) -> BatchCounts:
    """The counts of these rows (the writer's batches count their records while encoding
    them: `copy_format.encode_records`)."""
    counts = BatchCounts()
    per_minute, newest = counts.per_minute, counts.newest_micros
    for customer, when, bpm, *_ in records:
        micros = (when - PG_EPOCH) // _MICROSECOND
        minute_counts = per_minute.get(minute := micros // _MINUTE_US)
        if minute_counts is None:
            minute_counts = per_minute[minute] = [0, 0, 0, 0, 0]
        minute_counts[0] += 1
        minute_counts[1] += bpm
        if micros > newest.get(customer, -1):
            newest[customer] = micros
    counts.add_anomalies(anomalies)
    return counts


def moved_customers(counts: BatchCounts, known: dict[str, int]) -> dict[str, datetime]:
    """Customers whose newest valid reading is in a later minute than `known` (customer ->
    minute number of the customers table's last_reading_at) says: those rows to write."""
    return {
        customer: PG_EPOCH + micros * _MICROSECOND
        for customer, micros in counts.newest_micros.items()
        if micros // _MINUTE_US > known.get(customer, -1)
    }


def write(conn: psycopg.Connection, partition: int, counts: BatchCounts,
          known: dict[str, int]) -> None:
    """Add `counts` under `partition` and note the customers that moved; `known` follows."""
    minutes = sorted(counts.per_minute)
    if minutes:
        columns = list(zip(*(counts.per_minute[m] for m in minutes), strict=True))
        conn.execute(COUNT_READINGS, (
            partition, [PG_EPOCH + m * MINUTE for m in minutes], *map(list, columns),
            counts.newest_record,
        ))
    moved = moved_customers(counts, known)
    if moved:
        customers = sorted(moved)
        times = [moved[c] for c in customers]
        # first_reading_at: the batch's newest until the rollup merges in the exact first
        conn.execute(NOTE_CUSTOMERS, (customers, times, times))
        known.update((c, minute_number(t)) for c, t in moved.items())


def load_known(conn: psycopg.Connection) -> dict[str, int]:
    return {
        customer: minute_number(at)
        for customer, at in conn.execute(KNOWN_CUSTOMERS) if at is not None
    }
