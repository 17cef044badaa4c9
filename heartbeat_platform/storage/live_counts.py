"""What a batch adds to the counts the dashboard and vw_pipeline_summary read (sql/011).

The writer calls these in the batch's transaction with the rows it actually inserted (a
repeat the tables refused counts nothing): readings per minute and in all, and the
customers whose newest valid reading moved to a later minute, so no panel and no view
column has to count raw readings (README, "The dashboard when the rollups lag").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg

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
_KINDS = {"BRADYCARDIA": 2, "TACHYCARDIA": 3, "INVALID": 4}


@dataclass(frozen=True, slots=True)
class BatchCounts:
    per_minute: dict[int, list[int]]  # minute number -> [records, bpm sum, brady, tachy, invalid]
    newest_by_customer: dict[str, datetime]  # each customer's newest valid reading

    @property
    def newest_record(self) -> datetime | None:
        return max(self.newest_by_customer.values(), default=None)


def count_batch(records: Iterable[RecordRow], anomalies: Iterable[AnomalyRow]) -> BatchCounts:
    per_minute: dict[int, list[int]] = {}
    newest: dict[str, datetime] = {}
    for customer, when, bpm, *_ in records:
        counts = per_minute.get(minute := minute_number(when))
        if counts is None:
            counts = per_minute[minute] = [0, 0, 0, 0, 0]
        counts[0] += 1
        counts[1] += bpm
        seen = newest.get(customer)
        if seen is None or when > seen:
            newest[customer] = when
    for _, when, _, kind, *_ in anomalies:
        counts = per_minute.get(minute := minute_number(when))
        if counts is None:
            counts = per_minute[minute] = [0, 0, 0, 0, 0]
        counts[_KINDS[kind]] += 1
    return BatchCounts(per_minute, newest)


def moved_customers(counts: BatchCounts, known: dict[str, int]) -> dict[str, datetime]:
    """Customers whose newest valid reading is in a later minute than `known` (customer ->
    minute number of the customers table's last_reading_at) says: those rows to write."""
    return {
        customer: when for customer, when in counts.newest_by_customer.items()
        if minute_number(when) > known.get(customer, -1)
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
