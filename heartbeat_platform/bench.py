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
  classify without I/O.
"""

from __future__ import annotations

import json
import os
import platform as host
import subprocess
import sys
import time
import uuid
from pathlib import Path

from heartbeat_platform import platform
from heartbeat_platform.config import Settings
from heartbeat_platform.domain.events import classify_heart_rate, encode_event, validate_message
from heartbeat_platform.local.services import Endpoints
from heartbeat_platform.storage.database import connect, ensure_database
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.storage.writer import BatchWriter, encode_records
from heartbeat_platform.streaming.producer import HeartbeatProducer
from heartbeat_platform.streaming.topics import ensure_topic

BENCH_DATABASE = "heartbeat_bench"


def run_bench(
    settings: Settings,
    events: int = 400_000,
    latency_rate: float = 10_000,
    latency_seconds: float = 15,
    log=lambda message: None,
) -> dict:
    endpoints = platform.prepare(settings).endpoints
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
    with HeartbeatProducer(
        platform.producer_config(_on(bench, topic), _endpoints(bench))
    ) as producer:
        report = producer.run(platform.generator(settings, seed=1), events=events)
    results["producer"] = {
        "events_per_s": round(report.delivered / report.seconds, 1),
        "delivered": report.delivered,
        "failed": report.failed,
        "seconds": round(report.seconds, 3),
    }

    log("consume_to_postgres: consumer process on the preloaded topic")
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
    return results


# -- stages -------------------------------------------------------------------------------
def _end_to_end(settings: Settings, rate: float, seconds: float) -> dict:
    consumer = subprocess.Popen(
        _cli("consume", "--json", "--stop-when-idle", "5"), env=_env(settings),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        with HeartbeatProducer(
            platform.producer_config(settings, _endpoints(settings))
        ) as producer:
            # One event first, through the same producer: the consumer has joined its group
            # and the producer is connected before the clock starts.
            warmup = producer.run(platform.generator(settings, seed=2), events=1)
            _wait_for_offsets(settings, warmup.delivered_offsets, timeout=60)
            started_at = time.time()
            report = producer.run(
                platform.generator(settings, seed=3), rate=rate, duration=seconds
            )
        _wait_for_offsets(settings, report.delivered_offsets, timeout=120)
    finally:
        out, _ = consumer.communicate(timeout=120)
    consumed = _last_json(out)
    with connect(settings.database_url) as conn:
        p50, p99, rows = conn.execute(
            """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ingested_at - event_timestamp),
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY ingested_at - event_timestamp),
                      count(*)
               FROM heartbeat_records WHERE event_timestamp >= to_timestamp(%s)""",
            (started_at,),
        ).fetchone()
    return {
        "produced_per_s": round(report.delivered / report.seconds, 1),
        "latency_p50_ms": round(p50.total_seconds() * 1000, 1),
        "latency_p99_ms": round(p99.total_seconds() * 1000, 1),
        "rows_measured": rows,
        "consumer_peak_rss_mb": consumed["peak_rss_mb"],
    }


def _copy_baseline(database_url: str, events: int, settings: Settings) -> float:
    """Binary COPY of prebuilt rows, in the consumer's batch size, into an empty table."""
    gen = platform.generator(settings, seed=4)
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
    generated = platform.generator(settings, seed=5).generate_events(events)
    payloads = [encode_event(e) for e in generated]
    started = time.perf_counter()
    for raw in payloads:
        classify_heart_rate(validate_message(raw).heart_rate)
    return round(events / (time.perf_counter() - started), 1)


# -- helpers ------------------------------------------------------------------------------
def _fresh_database(database_url: str) -> str:
    """The bench database, recreated on the same server so table sizes compare; its URL."""
    url = ensure_database(database_url, BENCH_DATABASE, recreate=True)
    migrate(url)
    return url


def _endpoints(settings: Settings) -> Endpoints:
    return Endpoints(settings.database_url, settings.kafka_bootstrap_servers)


def _topic(settings: Settings) -> str:
    name = f"heartbeat-bench-{uuid.uuid4().hex[:8]}"
    ensure_topic(settings.kafka_bootstrap_servers, name, settings.kafka_partitions)
    return name


def _on(settings: Settings, topic: str) -> Settings:
    """The bench's settings for one stage: its own topic and consumer group."""
    return settings.model_copy(
        update={"kafka_topic": topic, "kafka_group_id": f"bench-{uuid.uuid4().hex[:8]}"}
    )


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "KAFKA_TOPIC": settings.kafka_topic,
        "KAFKA_GROUP_ID": settings.kafka_group_id,
        "HEARTBEAT_CONSUME_BATCH_SIZE": str(settings.heartbeat_consume_batch_size),
    }


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "heartbeat_platform", *args]


def _consume_process(settings: Settings, stop_when_idle: float) -> dict:
    result = subprocess.run(
        _cli("consume", "--json", "--stop-when-idle", str(stop_when_idle)),
        env=_env(settings), capture_output=True, text=True, timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(f"bench consumer failed: {result.stderr[-2000:]}")
    return _last_json(result.stdout)


def _last_json(output: str) -> dict:
    start = output.find("{")
    return json.loads(output[start:])


def _wait_for_offsets(settings: Settings, offsets: dict[int, list[int]], timeout: float) -> None:
    writer = BatchWriter(settings.database_url, settings.kafka_group_id, settings.kafka_topic)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            stored = writer.load_progress(offsets)
            if all(p in stored and stored[p].next_offset > end for p, (_, end) in offsets.items()):
                return
            time.sleep(0.1)
        raise TimeoutError(f"consumer did not reach offsets {offsets} within {timeout}s")
    finally:
        writer.close()


def write_json(results: dict, path: Path | None) -> str:
    text = json.dumps(results, indent=2)
    if path:
        path.write_text(text + "\n")
    return text
