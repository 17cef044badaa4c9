"""History for the bench: where N readings go (`HistoryPlan`), and loading them with SQL.

Kafka would take hours to bring tens of millions of readings, so the history is drawn and
written by PostgreSQL itself (INSERT ... SELECT over generate_series), the generator's way
and as the consumer would have left it. The generator's draw and the classification are
the Python's (`domain.generator`, `domain.events`): the SQL gets their numbers as query
parameters (`HISTORY_FACTS`) and spells none of them, and
tests/integration/test_bench_history.py holds what it stores against the Python.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from heartbeat_platform.config import Settings
from heartbeat_platform.domain.events import MAX_HEART_RATE, NORMAL_HIGH, NORMAL_LOW
from heartbeat_platform.domain.generator import (
    BRADYCARDIA_RATES,
    BRADYCARDIA_SHARE,
    DESIGN_RATE,
    NORMAL_MEAN,
    NORMAL_SD,
    SENSOR_FAULT_VALUES,
    TACHYCARDIA_RATES,
)
from heartbeat_platform.storage.database import connect, one_row
from heartbeat_platform.storage.rollups import Rollup, window_start

HISTORY_CHUNK = 1_000_000  # readings per INSERT ... SELECT (one transaction, one log line)

# Readings are stored a little after their event time, as by a consumer (alerts with them):
# uniformly between these two delays.
INGEST_DELAY = (timedelta(milliseconds=20), timedelta(milliseconds=250))


class HistoryPlanError(ValueError):
    """The requested history cannot be laid out (too dense, or older than retention)."""


@dataclass(frozen=True)
class HistoryPlan:
    """Where N readings of history go: every customer reports once per `step`, in turn.

    Reading i is customer (i mod C) + 1 at tick i div C; its time is the tick's start plus
    the customer's phase ((customer - 1) / C of a step), so the history ends before `end`
    and one customer's readings never share a timestamp. Customers map to Kafka partitions
    as (customer - 1) mod P (per-customer ordering, like a keyed producer); offsets count
    each partition's messages in time order, so every (partition, offset) is used once.
    """

    readings: int
    customers: int
    kafka_partitions: int
    end: datetime
    step: timedelta  # between two readings of one customer
    chunk: int = HISTORY_CHUNK

    @classmethod
    def ending_at(
        cls,
        end: datetime,
        readings: int,
        customers: int,
        kafka_partitions: int,
        span_hours: float | None = None,
        *,
        max_span: timedelta | None = None,
        chunk: int = HISTORY_CHUNK,
    ) -> HistoryPlan:
        """At the design rate (span = readings / DESIGN_RATE s), or spread over `span_hours`."""
        if readings < 1 or customers < 1 or kafka_partitions < 1:
            raise HistoryPlanError("readings, customers and partitions must be positive")
        ticks = math.ceil(readings / customers)
        if span_hours is None:
            step = timedelta(seconds=customers / DESIGN_RATE)
        else:
            step = timedelta(hours=span_hours) / ticks
        step = timedelta(microseconds=step // timedelta(microseconds=1))
        if step < timedelta(microseconds=customers):
            raise HistoryPlanError(
                f"{readings:,} readings of {customers:,} customers do not fit in "
                f"{span_hours} hours: give a longer --history-span-hours"
            )
        plan = cls(readings, customers, kafka_partitions, end, step, chunk)
        if max_span is not None and plan.span > max_span:
            raise HistoryPlanError(
                f"the history would span {plan.span}, longer than the raw retention window "
                f"({max_span}); readings that old are dropped: shorten --history-span-hours"
            )
        return plan

    @property
    def ticks(self) -> int:
        return math.ceil(self.readings / self.customers)

    @property
    def span(self) -> timedelta:
        return self.step * self.ticks

    @property
    def start(self) -> datetime:
        return self.end - self.span

    @property
    def last_reading_at(self) -> datetime:
        """The time of reading N-1 (the last tick may be partly filled)."""
        return self.reading_time(self.readings - 1)

    def reading_time(self, index: int) -> datetime:
        """Event time of reading `index`; HISTORY_CHUNK_SQL computes the same."""
        tick, customer = divmod(index, self.customers)
        step_us = self.step // timedelta(microseconds=1)
        offset_us = tick * step_us + customer * step_us // self.customers
        return self.start + timedelta(microseconds=offset_us)

    def chunks(self) -> list[tuple[int, int]]:
        """Reading index ranges [lo, hi) of at most `chunk` readings, in time order."""
        size, total = self.chunk, self.readings
        return [(lo, min(lo + size, total)) for lo in range(0, total, size)]

    def days(self) -> tuple[date, date]:
        """First and last UTC day whose partitions the history (and its alert rows) needs."""
        latest = self.last_reading_at + INGEST_DELAY[1]
        return self.start.astimezone(UTC).date(), latest.astimezone(UTC).date()

    def windows(self, rollup: Rollup) -> list[datetime]:
        """Every window of `rollup` that holds a reading of the history."""
        moment, last = window_start(rollup, self.start), self.last_reading_at
        found = []
        while moment <= last:
            found.append(moment)
            moment += rollup.width
        return found

    def sql_params(self, lo: int, hi: int, anomaly_rate: float, fault_rate: float) -> dict:
        """HISTORY_CHUNK_SQL's layout and rates for readings [lo, hi) (with HISTORY_FACTS)."""
        return {
            "lo": lo, "hi": hi, "start": self.start, "customers": self.customers,
            "partitions": self.kafka_partitions,
            "step_us": self.step // timedelta(microseconds=1),
            "anomaly_rate": anomaly_rate, "fault_rate": fault_rate,
        }

    def describe(self) -> dict:
        return {
            "readings": self.readings,
            "customers": self.customers,
            "first_reading_at": self.start.isoformat(),
            "last_reading_at": self.last_reading_at.isoformat(),
            "span_s": round(self.span.total_seconds(), 3),
            "reading_every_s_per_customer": self.step.total_seconds(),
            "readings_per_s": round(self.readings / self.span.total_seconds(), 1),
        }


# The numbers HISTORY_CHUNK_SQL and CLASSIFY_SQL take from the Python, as query parameters.
HISTORY_FACTS: dict[str, object] = {
    # domain.events: the classification's limits
    "normal_low": NORMAL_LOW,
    "normal_high": NORMAL_HIGH,
    "max_heart_rate": MAX_HEART_RATE,
    # domain.generator: the draw
    "fault_values": list(SENSOR_FAULT_VALUES),
    "bradycardia_share": BRADYCARDIA_SHARE,
    "bradycardia_from": BRADYCARDIA_RATES.start,
    "bradycardia_span": len(BRADYCARDIA_RATES),
    "tachycardia_from": TACHYCARDIA_RATES.start,
    "tachycardia_span": len(TACHYCARDIA_RATES),
    "normal_mean": NORMAL_MEAN,
    "normal_sd": NORMAL_SD,
    # this module: when a reading is stored
    "delay_min_ms": INGEST_DELAY[0] // timedelta(milliseconds=1),
    "delay_span_ms": (INGEST_DELAY[1] - INGEST_DELAY[0]) // timedelta(milliseconds=1),
}

# `domain.events.classify_heart_rate` of the column `heart_rate` in SQL, with
# HISTORY_FACTS' limits: the anomaly type, NULL for NORMAL.
CLASSIFY_SQL = """CASE WHEN heart_rate <= 0 OR heart_rate > %(max_heart_rate)s THEN 'INVALID'
                WHEN heart_rate < %(normal_low)s THEN 'BRADYCARDIA'
                WHEN heart_rate > %(normal_high)s THEN 'TACHYCARDIA'
           END"""

# One chunk of history, drawn the generator's way (a sensor fault with `fault_rate`, else
# an anomaly with `anomaly_rate`, slow with `bradycardia_share`, else fast, else a normal
# rate: Box-Muller's N(normal_mean, normal_sd) clamped to the NORMAL range), classified as
# the consumer classifies (CLASSIFY_SQL) and written as the consumer would: NORMAL to
# heartbeat_records; anomalies with their raw JSON to heartbeat_anomalies, each with its
# alert row (as AlertManager writes it: the heart rate as the value, the Kafka position) in
# pipeline_metrics; the readings counted as the writer counts them (sql/011; as a bulk
# load, partition -1). The draws are materialised once so all three tables see the same
# readings. Answers the number of anomalies. Parameters: HistoryPlan.sql_params and
# HISTORY_FACTS.
HISTORY_CHUNK_SQL = f"""
WITH readings AS MATERIALIZED (
    SELECT customer_id, event_timestamp, kafka_partition, kafka_offset, stored_at,
           heart_rate,
           {CLASSIFY_SQL} AS anomaly_type
    FROM (
        SELECT customer_id, event_timestamp, kafka_partition, kafka_offset,
               event_timestamp + (%(delay_min_ms)s + %(delay_span_ms)s * u_delay)
                   * interval '1 millisecond' AS stored_at,
               CASE draw
                   WHEN 'fault' THEN (%(fault_values)s::int[])[
                       1 + floor(u_value * cardinality(%(fault_values)s::int[]))::int]
                   WHEN 'slow'
                       THEN %(bradycardia_from)s + floor(u_value * %(bradycardia_span)s)::int
                   WHEN 'fast'
                       THEN %(tachycardia_from)s + floor(u_value * %(tachycardia_span)s)::int
                   ELSE least(%(normal_high)s, greatest(%(normal_low)s, round(
                       %(normal_mean)s + %(normal_sd)s * sqrt(-2 * ln(1 - u_value))
                           * cos(2 * pi() * u_angle))))::int
               END AS heart_rate
        FROM (
            SELECT 'CUST_' || lpad(c::text, greatest(5, length(c::text)), '0') AS customer_id,
                   %(start)s::timestamptz + (tick * %(step_us)s + (c - 1) * %(step_us)s
                                             / %(customers)s) * interval '1 microsecond'
                       AS event_timestamp,
                   ((c - 1) %% %(partitions)s)::int AS kafka_partition,
                   -- customers of this partition per tick, times ticks, plus the rank in it
                   tick * ((%(customers)s - (c - 1) %% %(partitions)s + %(partitions)s - 1)
                           / %(partitions)s) + (c - 1) / %(partitions)s AS kafka_offset,
                   CASE WHEN u_fault < %(fault_rate)s THEN 'fault'
                        WHEN u_anomaly < %(anomaly_rate)s
                            THEN CASE WHEN u_kind < %(bradycardia_share)s THEN 'slow'
                                      ELSE 'fast' END
                   END AS draw,
                   u_value, u_angle, u_delay
            FROM (SELECT i / %(customers)s AS tick, i %% %(customers)s + 1 AS c,
                         random() AS u_fault, random() AS u_anomaly, random() AS u_kind,
                         random() AS u_value, random() AS u_angle, random() AS u_delay
                  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS i) AS draws
        ) AS placed
    ) AS drawn
), records AS (
    INSERT INTO heartbeat_records (event_timestamp, kafka_offset, ingested_at, heart_rate,
                                   log_epoch, kafka_partition, customer_id)
    SELECT event_timestamp, kafka_offset, stored_at, heart_rate, 0, kafka_partition,
           customer_id
    FROM readings WHERE anomaly_type IS NULL
), anomalies AS (
    INSERT INTO heartbeat_anomalies (customer_id, event_timestamp, heart_rate, anomaly_type,
                                     raw_payload, log_epoch, kafka_partition, kafka_offset,
                                     detected_at)
    SELECT customer_id, event_timestamp, heart_rate, anomaly_type,
           '{{"customer_id":"' || customer_id || '","heart_rate":' || heart_rate
               || ',"timestamp":"'
               || to_char(event_timestamp AT TIME ZONE 'UTC',
                          'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"}}',
           0, kafka_partition, kafka_offset, stored_at
    FROM readings WHERE anomaly_type IS NOT NULL
), alerts AS (
    INSERT INTO pipeline_metrics (metric_name, metric_value, customer_id, log_epoch,
                                  kafka_partition, kafka_offset, labels, recorded_at)
    SELECT 'alert_' || lower(anomaly_type), heart_rate, customer_id, 0, kafka_partition,
           kafka_offset, '{{"count": 1}}'::jsonb, stored_at
    FROM readings WHERE anomaly_type IS NOT NULL
), minutes AS (
    SELECT date_trunc('minute', event_timestamp, 'UTC') AS minute,
           count(*) FILTER (WHERE anomaly_type IS NULL) AS records,
           coalesce(sum(heart_rate) FILTER (WHERE anomaly_type IS NULL), 0) AS bpm_sum,
           count(*) FILTER (WHERE anomaly_type = 'BRADYCARDIA') AS bradycardia,
           count(*) FILTER (WHERE anomaly_type = 'TACHYCARDIA') AS tachycardia,
           count(*) FILTER (WHERE anomaly_type = 'INVALID') AS invalid,
           max(event_timestamp) FILTER (WHERE anomaly_type IS NULL) AS newest
    FROM readings
    GROUP BY 1
), customers_seen AS (
    SELECT customer_id, max(event_timestamp) AS newest
    FROM readings WHERE anomaly_type IS NULL GROUP BY 1
)
SELECT (SELECT sum(bradycardia + tachycardia + invalid) FROM minutes)::bigint,
       heartbeat_count_readings(-1, array_agg(minute), array_agg(records),
                                array_agg(bpm_sum::bigint), array_agg(bradycardia),
                                array_agg(tachycardia), array_agg(invalid), max(newest)),
       (SELECT heartbeat_note_customers(array_agg(customer_id), array_agg(newest),
                                        array_agg(newest)) FROM customers_seen)
FROM minutes
"""


def load_history(url: str, plan: HistoryPlan, settings: Settings,
                 log: Callable[[str], None]) -> dict:
    """`plan`'s readings stored chunk by chunk, the same every run (a fixed seed), with
    the settings' anomaly and fault rates; what was stored and how fast."""
    first_day, last_day = plan.days()
    chunks = plan.chunks()
    anomalies = 0
    started = time.perf_counter()
    with connect(url) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET work_mem = '512MB'")  # the materialised chunk stays in memory
        conn.execute("SELECT heartbeat_ensure_partitions(%s, %s)", (first_day, last_day))
        conn.execute("SELECT setseed(0.42)")  # the same history every run
        conn.commit()
        for number, (lo, hi) in enumerate(chunks, 1):
            params = plan.sql_params(
                lo, hi, settings.heartbeat_anomaly_rate, settings.heartbeat_fault_rate
            )
            anomalies += one_row(conn.execute(HISTORY_CHUNK_SQL, {**HISTORY_FACTS, **params}))[0]
            conn.commit()
            elapsed = time.perf_counter() - started
            log(f"growth: history chunk {number}/{len(chunks)}: {hi:,}/{plan.readings:,} "
                f"readings ({elapsed:.0f} s, {hi / elapsed:,.0f}/s)")
    seconds = time.perf_counter() - started
    return {
        "records": plan.readings - anomalies,
        "anomalies": anomalies,
        "alerts": anomalies,
        "load_s": round(seconds, 1),
        "loaded_per_s": round(plan.readings / seconds, 1),
        "partitions_days": [str(first_day), str(last_day)],
    }
