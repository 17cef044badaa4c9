"""The cold tier: compaction of hot days into packs, reading both tiers, cold retention.

A day's readings move from its hot partitions (`heartbeat_records_pYYYYMMDD`,
`heartbeat_anomalies_pYYYYMMDD`) into `heartbeat_cold` (sql/012), one pack per customer
and UTC hour (format: domain/cold_pack.py), in ONE transaction:

1. lock the day's two hot partitions against writers and other compactions (SHARE ROW
   EXCLUSIVE: readers go on; a late reading for the day waits for the commit, then lands
   hot again for the next run; a second compaction of the day gives up after 2 s);
2. refuse the day if an anomaly's stored class is not the class of its rate (the pack
   derives the class from the rate);
3. take the hot rows, and the cold rows already packed for the customer-hours they touch
   (a day compacted before, now with late readings); a hot reading that repeats a cold one
   (same customer and time, both records or both anomalies) is dropped, as the hot
   tables' primary keys (sql/007) would have;
4. note per customer what the copy must hold: count, sum and sum of squares of the rates,
   and a checksum of (time, rate, payload) of every reading;
5. replace those customer-hours' packs with packs of all their rows;
6. unpack the new packs in SQL and compare them, customer by customer, with step 4; any
   difference raises and rolls everything back;
7. empty the hot day (TRUNCATE) and record the day in `heartbeat_cold_days`; commit.

A crash anywhere before the commit leaves the hot day as it was and the cold tier as it
was (PostgreSQL rolls the transaction back); after it, the readings are cold only. Either
way each reading is in exactly one tier, which is what `heartbeat_readings` reads. A day
whose hot partitions are empty has nothing to do: compacting again changes nothing.
"""

from __future__ import annotations

import heapq
import logging
import re
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import repeat
from typing import NamedTuple

import psycopg
from psycopg import sql

from heartbeat_platform.domain.cold_pack import ColdReading, Pack, unpack_columns
from heartbeat_platform.domain.retention import DROP_GRACE, day_start
from heartbeat_platform.gc_tuning import fewer_gc_pauses
from heartbeat_platform.storage.database import one_row
from heartbeat_platform.storage.partitions import DDL_LOCK_TIMEOUT, partition_days

log = logging.getLogger(__name__)

STEPS = ("locked", "checked", "gathered", "expected", "packed", "verified", "emptied")
_COLD_PARTITION = re.compile(r"^heartbeat_cold_p(\d{8})$")


class ColdCopyMismatch(RuntimeError):
    """The cold copy of a day differs from its hot rows: nothing was changed."""


class ClassMismatch(RuntimeError):
    """A hot anomaly's stored class is not its rate's class: the day stays hot."""


@dataclass(frozen=True)
class Compacted:
    day: date
    readings: int  # hot readings moved to cold by this run
    merged_into: int  # cold readings already packed that were repacked with them
    duplicates_dropped: int  # hot readings that repeated a cold one
    packs: int  # customer-hours written
    seconds: float

    def as_metadata(self) -> dict:
        return {"day": str(self.day), "readings_moved": self.readings,
                "cold_readings_repacked": self.merged_into,
                "duplicate_records_dropped": self.duplicates_dropped,
                "packs_written": self.packs, "seconds": round(self.seconds, 3)}


@dataclass
class CompactionReport:
    compacted: list[Compacted] = field(default_factory=list)
    busy: list[date] = field(default_factory=list)  # a lock was not free: next run
    refused: dict[date, str] = field(default_factory=dict)  # day -> why it stays hot
    cold_days_dropped: list[date] = field(default_factory=list)

    def as_metadata(self) -> dict:
        return {
            "days_compacted": [c.as_metadata() for c in self.compacted],
            "readings_moved": sum(c.readings for c in self.compacted),
            "days_busy_retry_next_run": [str(d) for d in self.busy],
            "days_refused": {str(d): why for d, why in self.refused.items()},
            "cold_days_dropped": [str(d) for d in self.cold_days_dropped],
        }


def _names(day: date) -> tuple[str, str]:
    return f"heartbeat_records_p{day:%Y%m%d}", f"heartbeat_anomalies_p{day:%Y%m%d}"


# The rows a customer-hour's packs are built from and checked against: hot rows and the
# cold rows they merge with, as (customer_id, event_timestamp, heart_rate, raw_payload).
_CHECKSUM = """
    count(*)::bigint AS n, sum(heart_rate)::numeric AS s,
    sum(heart_rate::numeric * heart_rate) AS ss,
    sum(hashtextextended(
        ((extract(epoch FROM event_timestamp) * 1000000)::bigint)::text || ':'
        || heart_rate::text || ':' || coalesce('p' || raw_payload, 'n'), 0)::numeric) AS h
"""

_PACK = """
INSERT INTO heartbeat_cold (hour, readings, customer_id, seconds, micro_step, micros, bpm,
                            bpm_wide, payloads)
SELECT hour, count(*), customer_id,
       array_agg((sec - prev)::smallint ORDER BY o),
       max(step),
       string_agg(CASE WHEN top = 0 THEN ''::bytea
                       WHEN top < 256 THEN substring(int4send(scaled) FROM 4 FOR 1)
                       WHEN top < 65536 THEN substring(int4send(scaled) FROM 3 FOR 2)
                       ELSE substring(int4send(scaled) FROM 2 FOR 3) END, ''::bytea ORDER BY o),
       string_agg(CASE WHEN heart_rate BETWEEN 1 AND 255 THEN set_byte('\\x00', 0, heart_rate)
                       ELSE '\\x00' END, ''::bytea ORDER BY o),
       array_agg(heart_rate ORDER BY o) FILTER (WHERE heart_rate NOT BETWEEN 1 AND 255),
       array_agg(CASE WHEN raw_payload IS NULL  -- a record: no payload to rebuild
                           OR raw_payload = heartbeat_canonical_payload(customer_id,
                                                                        event_timestamp,
                                                                        heart_rate)
                      THEN NULL ELSE raw_payload END ORDER BY o)
FROM (  -- the widest entry of `micros` in the pack
    SELECT *, max(scaled) OVER (PARTITION BY customer_id, hour) AS top
    FROM (  -- each microsecond in steps of the pack's gcd
        SELECT *, CASE WHEN step = 0 THEN 0 ELSE us / step END AS scaled
        FROM (
            SELECT *, heartbeat_gcd(us) OVER (PARTITION BY customer_id, hour) AS step
            FROM (
                SELECT customer_id, hour, heart_rate, raw_payload, event_timestamp,
                       off / 1000000 AS sec, (off % 1000000)::integer AS us,
                       coalesce(lag(off / 1000000) OVER w, 0) AS prev,
                       row_number() OVER w AS o
                FROM (
                    SELECT customer_id, heart_rate, raw_payload, event_timestamp,
                           date_trunc('hour', event_timestamp, 'UTC') AS hour,
                           (extract(epoch FROM event_timestamp) * 1000000)::bigint
                           - (extract(epoch FROM date_trunc('hour', event_timestamp, 'UTC'))
                              * 1000000)::bigint AS off
                    FROM (SELECT * FROM cold_incoming UNION ALL SELECT * FROM cold_old) AS r
                ) AS r
                WINDOW w AS (PARTITION BY customer_id, hour
                             ORDER BY event_timestamp, heart_rate,
                                      raw_payload COLLATE "C" NULLS FIRST)
            ) AS r
        ) AS r
    ) AS r
) AS r
GROUP BY customer_id, hour
"""


# The transaction's scratch tables (ON COMMIT DROP too, for a connection that is not in
# autocommit and calls again before its commit).
_DROP_SCRATCH = "DROP TABLE IF EXISTS cold_incoming, cold_keys, cold_old, cold_expected"


def compact_day(
    conn: psycopg.Connection, day: date, *,
    after_step: Callable[[str], None] | None = None,
) -> Compacted:
    """Move one UTC day from the hot tier into the cold tier (module docstring). Run on an
    autocommit connection; `after_step(name)` is called after each step (tests make one
    raise, to show a crash there loses and doubles nothing)."""
    started = time.perf_counter()
    step = after_step or (lambda name: None)
    records, anomalies = _names(day)
    lo, hi = day_start(day), day_start(day) + timedelta(days=1)
    existing = partition_days(conn)
    if day not in existing["heartbeat_records"] or day not in existing["heartbeat_anomalies"]:
        return Compacted(day, 0, 0, 0, 0, time.perf_counter() - started)
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        conn.execute("SELECT heartbeat_ensure_cold_partition(%s)", (day,))
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        conn.execute(sql.SQL("LOCK TABLE {}, {} IN SHARE ROW EXCLUSIVE MODE").format(
            sql.Identifier(records), sql.Identifier(anomalies)))
        conn.execute(_DROP_SCRATCH)  # left by an earlier call in the caller's transaction
        step("locked")
        wrong = one_row(conn.execute(sql.SQL(
            "SELECT count(*) FROM {} WHERE anomaly_type <> heartbeat_class(heart_rate)"
        ).format(sql.Identifier(anomalies))))[0]
        if wrong:
            raise ClassMismatch(
                f"{wrong} anomalies of {day} are stored with a class that is not their "
                "rate's (heartbeat_class): the day stays hot"
            )
        step("checked")
        conn.execute(sql.SQL(
            "CREATE TEMP TABLE cold_incoming ON COMMIT DROP AS "
            "SELECT customer_id, event_timestamp, heart_rate, NULL::text AS raw_payload "
            "FROM {} UNION ALL "
            "SELECT customer_id, event_timestamp, heart_rate, raw_payload FROM {}"
        ).format(sql.Identifier(records), sql.Identifier(anomalies)))
        incoming = one_row(conn.execute("SELECT count(*) FROM cold_incoming"))[0]
        if not incoming:
            conn.execute(_DROP_SCRATCH)
            return Compacted(day, 0, 0, 0, 0, time.perf_counter() - started)
        conn.execute(
            "CREATE TEMP TABLE cold_keys ON COMMIT DROP AS "
            "SELECT DISTINCT customer_id, date_trunc('hour', event_timestamp, 'UTC') AS hour "
            "FROM cold_incoming"
        )
        conn.execute(
            "CREATE TEMP TABLE cold_old ON COMMIT DROP AS "
            "SELECT c.customer_id, u.event_timestamp, u.heart_rate, u.raw_payload "
            "FROM heartbeat_cold c JOIN cold_keys k USING (customer_id, hour), "
            "heartbeat_cold_unpack(c.customer_id, c.hour, c.seconds, c.micro_step, "
            "c.micros, c.bpm, c.bpm_wide, c.payloads) u WHERE c.hour >= %s AND c.hour < %s",
            (lo, hi),
        )
        merged = one_row(conn.execute("SELECT count(*) FROM cold_old"))[0]
        duplicates = conn.execute(
            "DELETE FROM cold_incoming i USING cold_old o "
            "WHERE (i.raw_payload IS NULL) = (o.raw_payload IS NULL) "
            "AND i.customer_id = o.customer_id AND i.event_timestamp = o.event_timestamp"
        ).rowcount
        step("gathered")
        conn.execute(
            f"CREATE TEMP TABLE cold_expected ON COMMIT DROP AS SELECT customer_id, {_CHECKSUM}"
            " FROM (SELECT * FROM cold_incoming UNION ALL SELECT * FROM cold_old) AS r"
            " GROUP BY customer_id"
        )
        step("expected")
        conn.execute(
            "DELETE FROM heartbeat_cold c USING cold_keys k WHERE c.customer_id = k.customer_id "
            "AND c.hour = k.hour AND c.hour >= %s AND c.hour < %s", (lo, hi),
        )
        packs = conn.execute(_PACK).rowcount
        step("packed")
        differ = conn.execute(
            f"WITH actual AS (SELECT customer_id, {_CHECKSUM} FROM ("
            " SELECT c.customer_id, u.* FROM heartbeat_cold c JOIN cold_keys k"
            " USING (customer_id, hour), heartbeat_cold_unpack(c.customer_id, c.hour,"
            " c.seconds, c.micro_step, c.micros, c.bpm, c.bpm_wide, c.payloads) u"
            " WHERE c.hour >= %s AND c.hour < %s) AS r"
            " GROUP BY customer_id)"
            " SELECT customer_id FROM actual a FULL JOIN cold_expected e USING (customer_id)"
            " WHERE (a.n, a.s, a.ss, a.h) IS DISTINCT FROM (e.n, e.s, e.ss, e.h)"
            " ORDER BY 1 LIMIT 5",
            (lo, hi),
        ).fetchall()
        if differ:
            raise ColdCopyMismatch(
                f"the cold copy of {day} differs from its hot rows for customers "
                f"{', '.join(c for (c,) in differ)}: nothing changed"
            )
        step("verified")
        conn.execute("SELECT heartbeat_truncate_hot_day(%s)", (day,))
        conn.execute(
            "INSERT INTO heartbeat_cold_days AS d (day, readings) "
            "SELECT %s, coalesce(sum(readings), 0) FROM heartbeat_cold "
            "WHERE hour >= %s AND hour < %s "
            "ON CONFLICT (day) DO UPDATE SET readings = excluded.readings, "
            "compacted_at = clock_timestamp(), compactions = d.compactions + 1",
            (day, lo, hi),
        )
        conn.execute(_DROP_SCRATCH)
        step("emptied")
    done = Compacted(day, incoming - duplicates, merged, duplicates, packs,
                     time.perf_counter() - started)
    log.info("compacted %s: %d readings into %d packs (%d repacked, %d duplicates dropped)",
             day, done.readings, packs, merged, duplicates)
    return done


def due_days(conn: psycopg.Connection, now: datetime, hot_days: int) -> list[date]:
    """Hot days over for at least `hot_days` that still hold readings (never compacted, or
    late readings arrived since)."""
    existing = partition_days(conn)
    days = sorted(set(existing["heartbeat_records"]) & set(existing["heartbeat_anomalies"]))
    due = []
    for day in days:
        if day_start(day) + timedelta(days=1 + hot_days) > now:
            break
        records, anomalies = _names(day)
        holds = one_row(conn.execute(sql.SQL(
            "SELECT EXISTS (SELECT FROM {}) OR EXISTS (SELECT FROM {})"
        ).format(sql.Identifier(records), sql.Identifier(anomalies))))[0]
        if holds:
            due.append(day)
    return due


def cold_days(conn: psycopg.Connection) -> list[date]:
    """The days the cold tier has a partition for."""
    rows = conn.execute(
        """SELECT child.relname FROM pg_inherits
           JOIN pg_class child ON child.oid = pg_inherits.inhrelid
           WHERE pg_inherits.inhparent = 'heartbeat_cold'::regclass"""
    ).fetchall()
    days = []
    for (name,) in rows:
        match = _COLD_PARTITION.match(name)
        if match:
            days.append(datetime.strptime(match.group(1), "%Y%m%d").date())
    return sorted(days)


def drop_expired_cold_days(
    conn: psycopg.Connection, now: datetime, retention_days: int
) -> list[date]:
    """Drop whole the cold days that ended more than `retention_days` ago (and the grace)."""
    cutoff = now - timedelta(days=retention_days) - DROP_GRACE
    dropped = []
    for day in cold_days(conn):
        if day_start(day) + timedelta(days=1) > cutoff:
            break
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
            conn.execute("SELECT heartbeat_drop_cold_day(%s)", (day,))
        dropped.append(day)
        log.info("dropped cold day %s (older than the cold retention)", day)
    return dropped


def compact_due(
    conn: psycopg.Connection, now: datetime, hot_days: int, cold_retention_days: int
) -> CompactionReport:
    """Compact every due day (oldest first), then drop the expired cold days."""
    report = CompactionReport()
    for day in due_days(conn, now, hot_days):
        try:
            report.compacted.append(compact_day(conn, day))
        except psycopg.errors.LockNotAvailable:
            report.busy.append(day)
        except (ClassMismatch, ColdCopyMismatch) as exc:
            log.error("%s", exc)
            report.refused[day] = str(exc)
    report.cold_days_dropped = drop_expired_cold_days(conn, now, cold_retention_days)
    return report



def hot_day_digest(conn: psycopg.Connection, day: date) -> dict[str, tuple]:
    """Per customer, the (count, sum, sum of squares, checksum) of the day's hot rows:
    the note compaction checks its packs against (step 4), to hold a compacted day to its
    hot original after the commit (the bench does)."""
    records, anomalies = _names(day)
    rows = conn.execute(sql.SQL(
        f"SELECT customer_id, {_CHECKSUM} FROM ("
        "SELECT customer_id, event_timestamp, heart_rate, NULL::text AS raw_payload FROM {} "
        "UNION ALL SELECT customer_id, event_timestamp, heart_rate, raw_payload FROM {}"
        ") AS r GROUP BY customer_id"
    ).format(sql.Identifier(records), sql.Identifier(anomalies))).fetchall()
    return {customer: tuple(rest) for customer, *rest in rows}


def cold_day_digest(conn: psycopg.Connection, day: date) -> dict[str, tuple]:
    """`hot_day_digest` of the day's cold packs, unpacked in SQL (heartbeat_cold_unpack)."""
    lo = day_start(day)
    rows = conn.execute(
        f"SELECT customer_id, {_CHECKSUM} FROM ("
        " SELECT c.customer_id, u.* FROM heartbeat_cold c, heartbeat_cold_unpack("
        " c.customer_id, c.hour, c.seconds, c.micro_step, c.micros, c.bpm, c.bpm_wide,"
        " c.payloads) u WHERE c.hour >= %s AND c.hour < %s) AS r GROUP BY customer_id",
        (lo, lo + timedelta(days=1)),
    ).fetchall()
    return {customer: tuple(rest) for customer, *rest in rows}


# -- reading ----------------------------------------------------------------------------------
class StoredReading(NamedTuple):
    event_timestamp: datetime  # UTC
    heart_rate: int
    reading_class: str
    raw_payload: str | None
    tier: str  # "hot" or "cold"


# The hot rows of [start, end), in heartbeat_readings' order.
_HOT_READINGS = """
SELECT event_timestamp, heart_rate, heartbeat_class(heart_rate), raw_payload, 'hot'::text
FROM (SELECT event_timestamp, heart_rate, NULL::text AS raw_payload FROM heartbeat_records
      WHERE customer_id = %(c)s AND event_timestamp >= %(a)s AND event_timestamp < %(b)s
      UNION ALL
      SELECT event_timestamp, heart_rate, raw_payload FROM heartbeat_anomalies
      WHERE customer_id = %(c)s AND event_timestamp >= %(a)s AND event_timestamp < %(b)s) AS r
ORDER BY event_timestamp, heart_rate, raw_payload COLLATE "C" NULLS FIRST
"""
# The customer's packs that can hold a reading of [start, end): the primary key's range
# (customer_id, hour) in each day partition the hours fall in.
_COLD_PACKS = """
SELECT hour, seconds, micro_step, micros, bpm, coalesce(bpm_wide, '{}'), payloads
FROM heartbeat_cold
WHERE customer_id = %(c)s AND hour >= date_trunc('hour', %(a)s::timestamptz, 'UTC')
  AND hour < %(b)s
ORDER BY hour
"""


def _order(reading: StoredReading) -> tuple[datetime, int, bool, str]:
    """heartbeat_readings' order: time, rate, payload (NULL first, then as collation C)."""
    return (reading.event_timestamp, reading.heart_rate, reading.raw_payload is not None,
            reading.raw_payload or "")


def readings(
    conn: psycopg.Connection, customer_id: str, start: datetime, end: datetime
) -> list[StoredReading]:
    """One customer's readings of [start, end) from both tiers, in time order, times in
    UTC: the same rows as the SQL function heartbeat_readings, but the packs are fetched
    as they are stored (binary) and unpacked here column by column
    (`cold_pack.unpack_columns`), several times faster than unpacking them in SQL."""
    params = {"c": customer_id, "a": start, "b": end}
    with conn.cursor(binary=True) as cur:
        hot = [StoredReading(when.astimezone(UTC), *rest)
               for when, *rest in cur.execute(_HOT_READINGS, params)]
        packs = cur.execute(_COLD_PACKS, params).fetchall()
    with fewer_gc_pauses():  # millions of tuples, no cycles: default passes tripled the time
        cold = _unpacked(customer_id, start, end, packs)
    if not hot:
        return cold
    if not cold:
        return hot
    return list(heapq.merge(hot, cold, key=_order))


def _unpacked(customer_id: str, start: datetime, end: datetime,
              packs: list[tuple]) -> list[StoredReading]:
    """The readings of [start, end) in these packs (of one customer, hour order)."""
    cold: list[StoredReading] = []
    for hour, seconds, step, micros, bpm, wide, payloads in packs:
        columns = unpack_columns(customer_id, hour, seconds, step, micros, bpm, wide, payloads)
        first = bisect_left(columns.when, start)
        last = bisect_left(columns.when, end, first)
        cold.extend(map(tuple.__new__, repeat(StoredReading), zip(
            columns.when[first:last], columns.bpm[first:last],
            columns.reading_class[first:last], columns.payload[first:last],
            repeat("cold"))))
    return cold


def write_pack(conn: psycopg.Connection, customer_id: str, packed: Pack) -> None:
    """Store a pack built in Python (domain.cold_pack.pack) as its row: what tests and
    the benchmark use to hold the SQL unpacking to the Python one."""
    conn.execute("SELECT heartbeat_ensure_cold_partition(%s)", (packed.hour.date(),))
    conn.execute(
        "INSERT INTO heartbeat_cold (hour, readings, customer_id, seconds, micro_step, micros, "
        "bpm, bpm_wide, payloads) VALUES (%s, %s, %s, %s::smallint[], %s, %s, %s, "
        "%s::integer[], %s::text[])",
        (packed.hour, packed.readings, customer_id, packed.seconds, packed.micro_step,
         packed.micros,
         packed.bpm, packed.bpm_wide or None, packed.payloads),
    )


def read_pack(conn: psycopg.Connection, customer_id: str, hour: datetime) -> Pack | None:
    """A stored pack as the domain's `Pack` (to unpack it in Python)."""
    row = conn.execute(
        "SELECT hour, seconds, micro_step, micros, bpm, bpm_wide, payloads FROM heartbeat_cold "
        "WHERE customer_id = %s AND hour = %s", (customer_id, hour),
    ).fetchone()
    if row is None:
        return None
    hour_, seconds, step, micros, bpm, wide, payloads = row
    return Pack(hour_.astimezone(UTC), list(seconds), step, bytes(micros), bytes(bpm),
                wide or [], list(payloads))


def cold_readings_sql(conn: psycopg.Connection, customer_id: str, hour: datetime
                      ) -> list[ColdReading]:
    """A stored pack unpacked by SQL (heartbeat_cold_unpack), as the domain's readings."""
    rows = conn.execute(
        "SELECT u.* FROM heartbeat_cold c, heartbeat_cold_unpack(c.customer_id, c.hour, "
        "c.seconds, c.micro_step, c.micros, c.bpm, c.bpm_wide, c.payloads) u "
        "WHERE c.customer_id = %s AND c.hour = %s",
        (customer_id, hour),
    ).fetchall()
    return [ColdReading(*row) for row in rows]
