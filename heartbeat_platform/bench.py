"""`heartbeat-platform bench`: what the producer and the consumer really do, as JSON.

Every stage runs against the configured (or embedded) broker and a dedicated database
`heartbeat_bench` on the same PostgreSQL server, recreated per run so table sizes are
comparable. The consumer runs as a separate `heartbeat-platform consume` process with the
exactly-once bookkeeping on, as in production; its peak RSS is that process's.

Stages:
- producer: N events, as fast as possible, counted when delivered (acks=all);
- consume_to_postgres: the same N events preloaded in the topic, consumed to PostgreSQL
  by a fresh group; rows committed per second from the first message to the last commit;
- end_to_end: a fixed produce rate for a fixed time while a consumer runs; latency is
  the committed row's `ingested_at` minus the event's own timestamp, p50 / p99;
- baselines, measured in the same run for ratios: binary COPY of the same rows, encoded
  as the writer does, into the same indexed table (PostgreSQL's ceiling), and validate +
  classify without I/O;
- growth (only with `history` > 0; README "With history: does it keep its speed?"): N
  readings of history are loaded with SQL (INSERT ... SELECT over generate_series: Kafka
  would take hours), ending where this run started, and their rollups computed as a
  running platform would
  have; then the same number of events is consumed again into the database that now holds
  history (the ratio to the empty-table rate above is the number that matters), the
  rollups are brought up to date, every Grafana panel and template variable is timed
  (median of 5 runs) for the last 6 hours and the last 7 days, and the bytes each stored
  reading costs are measured and projected to a day at the design rate;
- dashboard_states (with `history`, before growth; alone with `dashboard_only`): every
  panel and variable on a database of its own holding the history, idle, with the rollups
  an hour behind and with them current (README "The dashboard when the rollups lag").
"""

from __future__ import annotations

import json
import math
import os
import platform as host
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg

from heartbeat_platform import grafana_queries, readiness
from heartbeat_platform.alerting.receiver import Receipt, ReceiverProcess
from heartbeat_platform.config import Settings
from heartbeat_platform.domain.events import classify_heart_rate, encode_event, validate_message
from heartbeat_platform.local.services import Endpoints
from heartbeat_platform.storage.copy_format import encode_records
from heartbeat_platform.storage.database import connect, ensure_database, one_row
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.storage.partitions import RAW_TABLES
from heartbeat_platform.storage.progress import load_progress
from heartbeat_platform.storage.rollups import Rollup, mark_pending, refresh_pending, window_start
from heartbeat_platform.streaming.producer import HeartbeatProducer, ProducerReport
from heartbeat_platform.streaming.topics import ensure_topic

BENCH_DATABASE = "heartbeat_bench"


def run_bench(
    settings: Settings,
    events: int = 400_000,
    latency_rate: float = 10_000,
    latency_seconds: float = 15,
    history: int = 0,
    history_span_hours: float | None = None,
    dashboard_only: bool = False,
    log=lambda message: None,
) -> dict:
    """`dashboard_only`: only `dashboard_states` on `history` readings (no other stage)."""
    # Every event the stages produce is stamped after this moment; the history ends here.
    started_at = datetime.now(UTC)
    plan = None
    if history:
        plan = HistoryPlan.ending_at(
            started_at, history, settings.heartbeat_customer_count,
            settings.kafka_partitions, history_span_hours,
            max_span=timedelta(days=settings.heartbeat_raw_retention_days),
        )
    elif dashboard_only:
        raise HistoryPlanError("--dashboard-only measures the dashboard on history: "
                               "give --history N")
    endpoints = readiness.prepare(settings).endpoints
    if dashboard_only:
        on_server = settings.model_copy(update={
            "database_url": endpoints.database_url,
            "kafka_bootstrap_servers": endpoints.bootstrap_servers,
        })
        return {"dashboard_states": dashboard_states(on_server, history, history_span_hours, log)}
    database_url = _fresh_database(endpoints.database_url)
    bench = settings.model_copy(
        update={
            "database_url": database_url,
            "kafka_bootstrap_servers": endpoints.bootstrap_servers,
        }
    )
    results: dict = {
        "events": events,
        "machine": {"cpus": os.cpu_count(), "python": host.python_version()},
        "batch_size": settings.heartbeat_consume_batch_size,
    }

    topic = _topic(bench)
    log(f"producer: {events:,} events to {topic}")
    report = _produce(_on(bench, topic), events)
    results["producer"] = {
        "events_per_s": round(report.delivered / report.seconds, 1),
        "delivered": report.delivered,
        "failed": report.failed,
        "uncertain": report.uncertain,
        "seconds": round(report.seconds, 3),
    }

    log("consume_to_postgres: consumer process on the preloaded topic")
    load_before_consume = os.getloadavg()[0]
    consumed = _consume_process(_on(bench, topic), stop_when_idle=3)
    results["consume_to_postgres"] = {
        "rows_per_s": consumed["messages_per_s"],
        "messages": consumed["messages"],
        "busy_seconds": consumed["busy_seconds"],
        "consumer_peak_rss_mb": consumed["peak_rss_mb"],
    }

    log(f"end_to_end: {latency_rate:,.0f} events/s for {latency_seconds:.0f}s")
    results["end_to_end"] = _end_to_end(_on(bench, _topic(bench)), latency_rate, latency_seconds)

    log("baselines: binary COPY ceiling, validate + classify")
    results["baselines"] = {
        "copy_rows_per_s": _copy_baseline(database_url, events, settings),
        "validate_classify_per_s": _parse_baseline(events, settings),
    }
    results["consumer_peak_rss_mb"] = max(
        results["consume_to_postgres"]["consumer_peak_rss_mb"],
        results["end_to_end"]["consumer_peak_rss_mb"],
    )
    if plan is not None:
        results["dashboard_states"] = dashboard_states(
            bench, history, history_span_hours, log)
        results["growth"] = _growth(
            bench, plan, events, results["consume_to_postgres"]["rows_per_s"],
            load_before_consume, log,
        )
        results["consumer_peak_rss_mb"] = max(
            results["consumer_peak_rss_mb"],
            results["growth"]["consume_to_postgres"]["consumer_peak_rss_mb"],
        )
    return results


# -- stages -------------------------------------------------------------------------------
def _end_to_end(settings: Settings, rate: float, seconds: float) -> dict:
    """Reading to stored row, and opening reading to webhook receipt, at `rate`."""
    receiver = ReceiverProcess()
    consumer = subprocess.Popen(
        _cli("consume", "--json", "--stop-when-idle", "5"),
        env={**_env(settings), "HEARTBEAT_ALERT_WEBHOOK_URL": receiver.url},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    peak = _PeakRss(consumer.pid)
    try:
        with HeartbeatProducer(
            readiness.producer_config(settings, _endpoints(settings))
        ) as producer:
            # One event first, through the same producer: the consumer has joined its group
            # and the producer is connected before the clock starts.
            warmup = producer.run(readiness.generator(settings, seed=2), events=1)
            _wait_for_offsets(settings, warmup.delivered_offsets, timeout=60)
            started_at = time.time()
            report = producer.run(
                readiness.generator(settings, seed=3), rate=rate, duration=seconds
            )
        _wait_for_offsets(settings, report.delivered_offsets, timeout=120)
        _wait_for_delivery(settings, timeout=60)
    finally:
        out, _ = consumer.communicate(timeout=120)
        receipts = receiver.receipts()
    consumed = _last_json(out)
    consumed["peak_rss_mb"] = peak.result(consumed["peak_rss_mb"])
    with connect(_endpoints(settings).database_url) as conn:
        undelivered = one_row(conn.execute(
            "SELECT count(*) FROM alert_outbox WHERE done_at IS NULL"
        ))[0]
        p50, p99, rows = one_row(conn.execute(
            """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ingested_at - event_timestamp),
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY ingested_at - event_timestamp),
                      count(*)
               FROM heartbeat_records WHERE event_timestamp >= to_timestamp(%s)""",
            (started_at,),
        ))
    return {
        "produced_per_s": round(report.delivered / report.seconds, 1),
        "latency_p50_ms": round(p50.total_seconds() * 1000, 1),
        "latency_p99_ms": round(p99.total_seconds() * 1000, 1),
        "rows_measured": rows,
        "consumer_peak_rss_mb": consumed["peak_rss_mb"],
        "alerts": alert_latency(receipts, started_at, undelivered),
    }


def alert_latency(receipts: list[Receipt], since: float, undelivered: int) -> dict:
    """Opening reading (its timestamp, stamped at produce) to the webhook's receipt of the
    episode's `firing` notification, for episodes opened by readings after `since`."""
    delays = sorted(
        r.received_at - datetime.fromisoformat(r.first_reading_at).timestamp()
        for r in receipts
        if r.state == "firing" and r.first_reading_at is not None
        and datetime.fromisoformat(r.first_reading_at).timestamp() >= since
    )
    if not delays:
        return {"notifications": len(receipts), "firing_measured": 0,
                "undelivered_at_stop": undelivered}
    return {
        "notifications": len(receipts),
        "firing_measured": len(delays),
        "notify_p50_ms": round(delays[len(delays) // 2] * 1000, 1),
        "notify_p99_ms": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000, 1),
        "notify_max_ms": round(delays[-1] * 1000, 1),
        "undelivered_at_stop": undelivered,
    }


def _wait_for_delivery(settings: Settings, timeout: float) -> None:
    """Until the outbox is delivered (the consumer's delivery thread), or `timeout`."""
    deadline = time.monotonic() + timeout
    with connect(_endpoints(settings).database_url) as conn:
        while time.monotonic() < deadline:
            pending = one_row(conn.execute(
                "SELECT count(*) FROM alert_outbox WHERE done_at IS NULL"
            ))[0]
            if not pending:
                return
            time.sleep(0.5)


def _copy_baseline(database_url: str, events: int, settings: Settings) -> float:
    """Binary COPY of prebuilt rows, in the consumer's batch size, into an empty table."""
    gen = readiness.generator(settings, seed=4)
    readings = [validate_message(encode_event(e)) for e in gen.generate_events(events)]
    rows = [
        (r.customer_id, r.timestamp, r.heart_rate, 0, i % 3, i)
        for i, r in enumerate(readings)
        if 40 <= r.heart_rate <= 180
    ]
    size = settings.heartbeat_consume_batch_size
    chunks = [encode_records(rows[i : i + size]) for i in range(0, len(rows), size)]
    with connect(database_url) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("TRUNCATE heartbeat_records")
        conn.commit()
        started = time.perf_counter()
        for chunk in chunks:
            with conn.cursor().copy(
                "COPY heartbeat_records (customer_id, event_timestamp, heart_rate, log_epoch, "
                "kafka_partition, kafka_offset) FROM STDIN (FORMAT binary)"
            ) as copy:
                copy.write(chunk)
            conn.commit()
        elapsed = time.perf_counter() - started
    return round(len(rows) / elapsed, 1)


def _parse_baseline(events: int, settings: Settings) -> float:
    generated = readiness.generator(settings, seed=5).generate_events(events)
    payloads = [encode_event(e) for e in generated]
    started = time.perf_counter()
    for raw in payloads:
        classify_heart_rate(validate_message(raw).heart_rate)
    return round(events / (time.perf_counter() - started), 1)


# -- growth: the same work on a database that holds history --------------------------------
DESIGN_RATE = 10_000  # readings a second: 10,000 customers, one each (README "Performance")
HISTORY_CHUNK = 1_000_000  # readings per INSERT ... SELECT (one transaction, one log line)
QUERY_RUNS = 5  # each dashboard query runs this often; the median is reported
QUERY_RANGES = {"6h": timedelta(hours=6), "7d": timedelta(days=7)}
QUERY_CUSTOMER = "CUST_00001"  # the $customer variable: a real customer of the history
QUERY_TIMEOUT_S = 30  # the statement_timeout of Grafana's role (sql/003)
# The targets (benchmark numbers, never test assertions).
TARGETS = {
    "consume_ratio_min": 0.8,
    "query_ms_max": 200,
    "rollups_catch_up_s_max": 5,
    "bytes_per_reading_max": 180,
}


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
        """At the design rate (span = readings / 10,000 s), or spread over `span_hours`."""
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
        """Event time of reading `index`; the SQL below computes the same."""
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
        latest = self.last_reading_at + _MAX_INGEST_DELAY
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


# Readings are stored a little after their event time, as by a consumer; alerts with them.
_MAX_INGEST_DELAY = timedelta(milliseconds=250)

# One chunk of history, drawn the generator's way (a sensor fault with `fault_rate`, else
# an anomaly with `anomaly_rate`, half slow, half fast, else N(75, 15) clamped to 40..180)
# and written as the consumer would: NORMAL to heartbeat_records; anomalies with their raw
# JSON to heartbeat_anomalies, each with its alert row (as AlertManager writes it: the
# heart rate as the value, the Kafka position) in pipeline_metrics; the readings counted as
# the writer counts them (sql/011; as a bulk load, partition -1). The draws are
# materialised once so all three tables see the same readings. Answers the number of
# anomalies.
_HISTORY_CHUNK_SQL = """
WITH readings AS MATERIALIZED (
    SELECT customer_id, event_timestamp, kafka_partition, kafka_offset, anomaly_type,
           event_timestamp + (20 + 230 * u_delay) * interval '1 millisecond' AS stored_at,
           CASE anomaly_type
               WHEN 'INVALID' THEN (ARRAY[0, -1, 301, 400])[1 + floor(u_value * 4)::int]
               WHEN 'BRADYCARDIA' THEN 15 + floor(u_value * 25)::int
               WHEN 'TACHYCARDIA' THEN 181 + floor(u_value * 40)::int
               ELSE least(180, greatest(40, round(
                   75 + 15 * sqrt(-2 * ln(1 - u_value)) * cos(2 * pi() * u_angle))))::int
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
               CASE WHEN u_fault < %(fault_rate)s THEN 'INVALID'
                    WHEN u_anomaly < %(anomaly_rate)s
                        THEN CASE WHEN u_kind < 0.5 THEN 'BRADYCARDIA' ELSE 'TACHYCARDIA' END
               END AS anomaly_type,
               u_value, u_angle, u_delay
        FROM (SELECT i / %(customers)s AS tick, i %% %(customers)s + 1 AS c,
                     random() AS u_fault, random() AS u_anomaly, random() AS u_kind,
                     random() AS u_value, random() AS u_angle, random() AS u_delay
              FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS i) AS draws
    ) AS placed
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
           '{"customer_id":"' || customer_id || '","heart_rate":' || heart_rate
               || ',"timestamp":"'
               || to_char(event_timestamp AT TIME ZONE 'UTC',
                          'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"}',
           0, kafka_partition, kafka_offset, stored_at
    FROM readings WHERE anomaly_type IS NOT NULL
), alerts AS (
    INSERT INTO pipeline_metrics (metric_name, metric_value, customer_id, log_epoch,
                                  kafka_partition, kafka_offset, labels, recorded_at)
    SELECT 'alert_' || lower(anomaly_type), heart_rate, customer_id, 0, kafka_partition,
           kafka_offset, '{"count": 1}'::jsonb, stored_at
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



def _growth(
    settings: Settings, plan: HistoryPlan, events: int, empty_rate: float,
    load_before_empty: float, log: Callable[[str], None],
) -> dict:
    url = _endpoints(settings).database_url
    growth: dict = {"history_loaded_with": "SQL", "history": plan.describe()}
    # The machine may be shared: the 1-minute load average as each measurement started.
    load = growth["load_average_1m"] = {"consume_empty": round(load_before_empty, 2)}

    log(f"growth: loading {plan.readings:,} readings of history with SQL "
        f"({plan.start:%H:%M:%S}..{plan.end:%H:%M:%S} UTC, "
        f"one per customer every {plan.step.total_seconds():g} s)")
    growth["history"].update(_load_history(url, plan, settings, log))

    log("growth: rollups of the history (it was already running: they would exist)")
    with connect(url) as conn:
        for rollup in (Rollup.FLEET_MINUTE, Rollup.CUSTOMER_HOURLY):
            mark_pending(conn, rollup, plan.windows(rollup))
        conn.commit()
        initial = _refresh_all(conn)
    growth["rollups_initial_s"] = initial["seconds"]
    growth["rollups_initial"] = initial["rollups"]

    log("growth: VACUUM ANALYZE")
    started = time.perf_counter()
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    growth["vacuum_analyze_s"] = round(time.perf_counter() - started, 1)

    topic = _topic(settings)
    log(f"growth: producer: {events:,} events to {topic}")
    produced = _produce(_on(settings, topic), events)
    log("growth: consume_to_postgres: consumer process, database with history")
    load["consume_with_history"] = round(os.getloadavg()[0], 2)
    consumed = _consume_process(_on(settings, topic), stop_when_idle=3)
    growth["consume_to_postgres"] = {
        "rows_per_s_empty": empty_rate,
        "rows_per_s_with_history": consumed["messages_per_s"],
        "ratio": round(consumed["messages_per_s"] / empty_rate, 3),
        "messages": consumed["messages"],
        "delivered": produced.delivered,
        "busy_seconds": consumed["busy_seconds"],
        "consumer_peak_rss_mb": consumed["peak_rss_mb"],
    }

    log("growth: bringing the rollups up to date after the consume")
    load["rollups_catch_up"] = round(os.getloadavg()[0], 2)
    with connect(url) as conn:
        catch_up = _refresh_all(conn)
    growth["rollups_catch_up_s"] = catch_up["seconds"]
    growth["rollups_catch_up"] = catch_up["rollups"]

    log(f"growth: dashboard queries, median of {QUERY_RUNS} runs per range")
    load["queries"] = round(os.getloadavg()[0], 2)
    growth["queries"] = _dashboard_timings(url, log)

    log("growth: bytes per stored reading")
    growth["storage"] = _storage(url)
    growth["targets"] = _targets(growth)
    return growth


def _load_history(url: str, plan: HistoryPlan, settings: Settings, log) -> dict:
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
            anomalies += one_row(conn.execute(_HISTORY_CHUNK_SQL, params))[0]
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


def catch_up_moment(now: datetime) -> datetime:
    """A moment at which every window that holds a reading up to `now` is settled.

    `refresh_pending` computes a window once it closed and its settle time passed: the
    widest rollup (a day) decides. Passing this moment brings every rollup up to date.
    """
    return now + max(rollup.width + rollup.settle() for rollup in Rollup)


def _refresh_all(conn: psycopg.Connection) -> dict:
    started = time.perf_counter()
    results = refresh_pending(conn, catch_up_moment(datetime.now(UTC)))
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "rollups": {
            r.rollup.value: {
                "windows": r.windows, "rows": r.rows, "readings": int(r.readings),
                "seconds": round(r.seconds, 3),
            }
            for r in results
        },
    }


def _dashboard_timings(url: str, log) -> dict:
    dashboard_path = grafana_queries.dashboard_file()
    dashboard = json.loads(Path(dashboard_path).read_text())
    queries = grafana_queries.panel_queries(dashboard)
    timings: dict = {
        "dashboard": Path(dashboard_path).name,
        "runs": QUERY_RUNS,
        "variables": {"customer": QUERY_CUSTOMER},
        "as_role": "heartbeat_grafana_reader",
    }
    with connect(url, autocommit=True) as conn:
        # Grafana's role and its limits: read-only, and a slow panel is cut off at 30 s.
        conn.execute("SET ROLE heartbeat_grafana_reader")
        conn.execute(f"SET statement_timeout = '{QUERY_TIMEOUT_S}s'")
        for label, span in QUERY_RANGES.items():
            now = datetime.now(UTC)
            interval = grafana_queries.grafana_interval(span)
            ctx = grafana_queries.QueryContext(
                time_from=now - span, time_to=now, interval=interval,
                variables={"customer": QUERY_CUSTOMER},
            )
            measured = {
                name: _time_query(conn, grafana_queries.expand(sql, ctx))
                for name, sql in queries
            }
            slowest = max(measured, key=lambda n: measured[n]["median_ms"])
            timings[label] = {
                "interval_s": interval.total_seconds(),
                "median_ms": {name: m["median_ms"] for name, m in measured.items()},
                "rows": {name: m["rows"] for name, m in measured.items()},
                "timed_out": sorted(n for n, m in measured.items() if m.get("timed_out")),
                "slowest": slowest,
                "slowest_ms": measured[slowest]["median_ms"],
            }
            log(f"growth: queries over {label}: slowest {slowest!r} "
                f"{measured[slowest]['median_ms']} ms")
    return timings


def _time_query(conn: psycopg.Connection, sql: str) -> dict:
    """Median wall time of QUERY_RUNS executions with all rows fetched, as Grafana reads them."""
    runs, rows = [], 0
    for _ in range(QUERY_RUNS):
        started = time.perf_counter()
        try:
            rows = len(conn.execute(sql).fetchall())
        except psycopg.errors.QueryCanceled:
            return {"median_ms": QUERY_TIMEOUT_S * 1000, "rows": None, "timed_out": True}
        runs.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(runs), 1), "rows": rows}


# -- the dashboard in the states where its raw tail used to grow (issue 23) ----------------
STATES_DATABASE = "heartbeat_bench_dashboard"
IDLE = timedelta(hours=6)  # "no reading for 6 hours"
BEHIND = timedelta(hours=1)  # "rollups one hour behind while readings arrive"
TAIL = timedelta(minutes=2)  # readings at the design rate before each measurement
# The hour behind holds one reading per customer every BEHIND_STEP (the panels never read
# it raw: only its pending marks, and one customer's readings in the drill-down); its last
# TAIL arrives at the design rate, as the raw tail the panels do read.
BEHIND_STEP = timedelta(seconds=10)
STATES = ("idle_6h", "rollups_behind_1h", "rollups_current")


def dashboard_states(settings: Settings, history: int, span_hours: float | None,
                     log: Callable[[str], None] = lambda message: None) -> dict:
    """Every panel and variable timed (Grafana's role, 6 h and 7 d) on a database of its own
    holding `history` readings that end IDLE before now, in three states, in this order:
    - idle_6h: no reading since, rollups current;
    - rollups_behind_1h: an hour of readings since (the last TAIL at the design rate),
      none rolled up (a stopped Dagster daemon);
    - rollups_current: the rollups brought up to date at now (a minute settles 5 s after it
      closes), then another TAIL of readings at the design rate up to now.
    Each state reports its raw tail and the minutes not rolled up next to the timings.
    """
    url = ensure_database(_endpoints(settings).database_url, STATES_DATABASE, recreate=True)
    migrate(url)
    now = datetime.now(UTC)
    plan = HistoryPlan.ending_at(
        now - IDLE, history, settings.heartbeat_customer_count, settings.kafka_partitions,
        span_hours, max_span=timedelta(days=settings.heartbeat_raw_retention_days) - IDLE,
    )
    result: dict = {"history": plan.describe()}
    log(f"dashboard states: loading {history:,} readings ending {IDLE} ago")
    result["history"].update(_load_history(url, plan, settings, log))
    with connect(url) as conn:
        for rollup in (Rollup.FLEET_MINUTE, Rollup.CUSTOMER_HOURLY):
            mark_pending(conn, rollup, plan.windows(rollup))
        conn.commit()
        result["rollups_initial_s"] = _refresh_all(conn)["seconds"]
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    states: dict = {}
    states["idle_6h"] = _state(url, "idle_6h", log)

    now = datetime.now(UTC)
    customers = settings.heartbeat_customer_count
    sparse = HistoryPlan.ending_at(
        now - TAIL, math.floor(BEHIND / BEHIND_STEP) * customers, customers,
        settings.kafka_partitions, BEHIND.total_seconds() / 3600,
    )
    _arrive(url, sparse, settings, log)
    end = _arrive_until(url, max(sparse.end, datetime.now(UTC) - TAIL),
                        datetime.now(UTC) + _load_estimate(customers), settings, log)
    states["rollups_behind_1h"] = _state(url, "rollups_behind_1h", log)

    with connect(url) as conn:
        _refresh_settled(conn)
    _arrive_until(url, max(end, datetime.now(UTC) - TAIL),
                  datetime.now(UTC) + _load_estimate(customers), settings, log)
    with connect(url) as conn:
        _refresh_settled(conn)
    states["rollups_current"] = _state(url, "rollups_current", log)
    result["states"] = states
    result["slowest"] = {
        name: {"query": s["slowest"], "range": s["slowest_range"], "median_ms": s["slowest_ms"]}
        for name, s in states.items()
    }
    result["target_ms"] = TARGETS["query_ms_max"]
    result["met"] = all(s["slowest_ms"] < TARGETS["query_ms_max"] for s in states.values())
    return result


def _load_estimate(customers: int) -> timedelta:
    """About how long loading TAIL at the design rate takes (SQL loads ~40,000 readings a
    second here): readings are stamped up to then, so the tail is full when measured."""
    return timedelta(seconds=TAIL.total_seconds() * DESIGN_RATE / 40_000)


def _arrive(url: str, plan: HistoryPlan, settings: Settings, log) -> None:
    """`plan`'s readings stored and their minutes marked pending, as a consumer leaves them."""
    _load_history(url, plan, settings, log)
    with connect(url) as conn:
        mark_pending(conn, Rollup.FLEET_MINUTE, plan.windows(Rollup.FLEET_MINUTE))
        conn.commit()


def _arrive_until(url: str, since: datetime, until: datetime, settings: Settings,
                  log) -> datetime:
    """Readings at the design rate in [since, until) (whole ticks, so never a reading of the
    plan before); returns where they end."""
    customers = settings.heartbeat_customer_count
    step = timedelta(seconds=customers / DESIGN_RATE)
    ticks = math.floor((until - since) / step)
    if ticks < 1:
        return since
    plan = HistoryPlan.ending_at(until, ticks * customers, customers, settings.kafka_partitions)
    _arrive(url, plan, settings, log)
    return plan.end


def _refresh_settled(conn: psycopg.Connection) -> None:
    """What the scheduled rollups do: every window settled at this moment."""
    refresh_pending(conn, datetime.now(UTC))


_STATE_SQL = """
SELECT (SELECT max(minute) FROM fleet_minute_stats),
       heartbeat_raw_tail_start(now()),
       (SELECT count(heart_rate) FROM heartbeat_records
        WHERE event_timestamp >= heartbeat_raw_tail_start(now())),
       (SELECT count(*) FROM heartbeat_minutes_not_rolled_up('-infinity', now())),
       (SELECT max(event_timestamp) FROM heartbeat_records
        WHERE event_timestamp > now() - interval '8 days' AND heart_rate > 0)
"""


def _state(url: str, name: str, log) -> dict:
    with connect(url) as conn:
        rolled, tail_start, tail, not_rolled, newest = one_row(conn.execute(_STATE_SQL))
    timings = _dashboard_timings(url, lambda message: log(f"{name}: {message}"))
    slowest = max(QUERY_RANGES, key=lambda label: timings[label]["slowest_ms"])
    return {
        "newest_rolled_up_minute": rolled.isoformat() if rolled else None,
        "raw_tail_start": tail_start.isoformat(),
        "raw_tail_readings": tail,
        "minutes_not_rolled_up": not_rolled,
        "newest_reading": newest.isoformat() if newest else None,
        "queries": timings,
        "slowest": timings[slowest]["slowest"],
        "slowest_range": slowest,
        "slowest_ms": timings[slowest]["slowest_ms"],
    }


# Every table of the schema with its indexes and TOAST; a partitioned one summed over its
# partitions. The raw tables are one part; every other table (the rollups, the customer
# list, pending marks, consumer progress) is the rollup part, whatever the schema adds.
_TABLE_BYTES = """
SELECT relname,
       CASE WHEN relkind = 'p'
            THEN (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)
                  FROM pg_partition_tree(pg_class.oid))
            ELSE pg_total_relation_size(pg_class.oid) END::bigint
FROM pg_class
WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p')
  AND NOT relispartition
ORDER BY 2 DESC, 1
"""


def _storage(url: str) -> dict:
    with connect(url) as conn:
        sizes: dict[str, int] = dict(conn.execute(_TABLE_BYTES).fetchall())
        readings = one_row(conn.execute(
            "SELECT (SELECT count(*) FROM heartbeat_records) "
            "+ (SELECT count(*) FROM heartbeat_anomalies)"
        ))[0]
    raw = sum(size for table, size in sizes.items() if table in RAW_TABLES)
    summary = storage_summary(raw, sum(sizes.values()) - raw, readings)
    return {**summary, "raw_tables": list(RAW_TABLES), "table_bytes": sizes}


def storage_summary(raw_bytes: int, rollup_bytes: int, readings: int,
                    rate: float = DESIGN_RATE) -> dict:
    """Bytes per stored reading, raw and rollup parts, and GB (10^9 bytes) a day at `rate`."""
    per_day = rate * 86_400

    def per_reading(size: int) -> float:
        return size / readings

    return {
        "readings_stored": readings,
        "raw_bytes": raw_bytes,
        "rollup_bytes": rollup_bytes,
        "bytes_per_reading": round(per_reading(raw_bytes + rollup_bytes), 1),
        "raw_bytes_per_reading": round(per_reading(raw_bytes), 1),
        "rollup_bytes_per_reading": round(per_reading(rollup_bytes), 1),
        "projected_at_readings_per_s": rate,
        "projected_gb_per_day": round(per_reading(raw_bytes + rollup_bytes) * per_day / 1e9, 1),
        "projected_raw_gb_per_day": round(per_reading(raw_bytes) * per_day / 1e9, 1),
        "projected_rollup_gb_per_day": round(per_reading(rollup_bytes) * per_day / 1e9, 1),
    }


def _targets(growth: dict) -> dict:
    """The issue's targets next to what this run measured (met: True / False / None)."""
    ratio = growth["consume_to_postgres"]["ratio"]
    slowest = [
        growth["queries"][label]["slowest_ms"]
        for label in QUERY_RANGES if label in growth["queries"]
    ]
    catch_up = growth["rollups_catch_up_s"]
    per_reading = growth["storage"]["bytes_per_reading"]
    return {
        "consume_ratio": {"min": TARGETS["consume_ratio_min"], "measured": ratio,
                          "met": ratio >= TARGETS["consume_ratio_min"]},
        "slowest_query_ms": {"max": TARGETS["query_ms_max"],
                             "measured": max(slowest) if slowest else None,
                             "met": max(slowest) < TARGETS["query_ms_max"] if slowest else None},
        "rollups_catch_up_s": {"max": TARGETS["rollups_catch_up_s_max"], "measured": catch_up,
                               "met": catch_up < TARGETS["rollups_catch_up_s_max"]},
        "bytes_per_reading": {"max": TARGETS["bytes_per_reading_max"], "measured": per_reading,
                              "met": per_reading <= TARGETS["bytes_per_reading_max"]},
    }


# -- helpers ------------------------------------------------------------------------------
def _fresh_database(database_url: str) -> str:
    """The bench database, recreated on the same server so table sizes compare; its URL."""
    url = ensure_database(database_url, BENCH_DATABASE, recreate=True)
    migrate(url)
    return url


def _endpoints(settings: Settings) -> Endpoints:
    """The concrete services of the bench's settings (`run_bench` sets both from
    `readiness.prepare(...).endpoints`); an error if either is unset."""
    if settings.database_url is None or settings.kafka_bootstrap_servers is None:
        raise ValueError(
            "bench settings need DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS set to the "
            "prepared services (readiness.prepare(...).endpoints)"
        )
    return Endpoints(settings.database_url, settings.kafka_bootstrap_servers)


def _produce(settings: Settings, events: int) -> ProducerReport:
    """The same seeded events into the settings' topic, as fast as delivery allows."""
    with HeartbeatProducer(readiness.producer_config(settings, _endpoints(settings))) as producer:
        return producer.run(readiness.generator(settings, seed=1), events=events)


def _topic(settings: Settings) -> str:
    name = f"heartbeat-bench-{uuid.uuid4().hex[:8]}"
    ensure_topic(_endpoints(settings).bootstrap_servers, name, settings.kafka_partitions,
                 overrides=settings.kafka_client_config)
    return name


def _on(settings: Settings, topic: str) -> Settings:
    """The bench's settings for one stage: its own topic and consumer group."""
    return settings.model_copy(
        update={"kafka_topic": topic, "kafka_group_id": f"bench-{uuid.uuid4().hex[:8]}"}
    )


def _env(settings: Settings) -> dict[str, str]:
    endpoints = _endpoints(settings)
    return {
        **os.environ,
        "DATABASE_URL": endpoints.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": endpoints.bootstrap_servers,
        "KAFKA_TOPIC": settings.kafka_topic,
        "KAFKA_GROUP_ID": settings.kafka_group_id,
        "HEARTBEAT_CONSUME_BATCH_SIZE": str(settings.heartbeat_consume_batch_size),
    }


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "heartbeat_platform", *args]


def _consume_process(settings: Settings, stop_when_idle: float) -> dict:
    process = subprocess.Popen(
        _cli("consume", "--json", "--stop-when-idle", str(stop_when_idle)),
        env=_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    peak = _PeakRss(process.pid)
    try:
        out, err = process.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"bench consumer failed: {err[-2000:]}")
    consumed = _last_json(out)
    consumed["peak_rss_mb"] = peak.result(consumed["peak_rss_mb"])
    return consumed


class _PeakRss:
    """A child process's own peak RSS, read from /proc while it runs (Linux).

    The child's ru_maxrss cannot tell: Linux copies the parent's memory high-water mark
    into a child at fork and keeps it across exec, so a consumer started by this process
    reports at least this process's peak (which the baselines raise past 1 GB). VmHWM in
    /proc/<pid>/status belongs to the new program alone. The consumer idles for seconds
    before it exits (--stop-when-idle), so the last reading holds its peak.
    """

    INTERVAL_S = 0.05

    def __init__(self, pid: int):
        self._path = Path(f"/proc/{pid}/status")
        self._peak_kb: int | None = None
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:
            try:
                status = self._path.read_text()
            except OSError:
                return  # gone (or no /proc here)
            hwm = [line for line in status.splitlines() if line.startswith("VmHWM:")]
            if not hwm:
                return  # exited: a zombie has no memory left to report
            self._peak_kb = max(self._peak_kb or 0, int(hwm[0].split()[1]))
            time.sleep(self.INTERVAL_S)

    def result(self, reported_mb: float) -> float:
        """Peak RSS in MB; the child's own figure where /proc could not be read."""
        self._thread.join(timeout=5)
        return reported_mb if self._peak_kb is None else round(self._peak_kb / 1024, 1)


def _last_json(output: str) -> dict:
    start = output.find("{")
    return json.loads(output[start:])


def _wait_for_offsets(settings: Settings, offsets: dict[int, list[int]], timeout: float) -> None:
    database_url = _endpoints(settings).database_url
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = load_progress(
            database_url, settings.kafka_group_id, settings.kafka_topic, offsets
        )
        if all(p in stored and stored[p].next_offset > end for p, (_, end) in offsets.items()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"consumer did not reach offsets {offsets} within {timeout}s")


def write_json(results: dict, path: Path | None) -> str:
    text = json.dumps(results, indent=2)
    if path:
        path.write_text(text + "\n")
    return text
