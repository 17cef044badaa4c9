"""The ceilings the ingest stages are read against, measured in the same run: PostgreSQL's
binary COPY of the writer's own rows, and validate + classify without any I/O."""

from __future__ import annotations

import time

from heartbeat_platform import readiness
from heartbeat_platform.config import Settings
from heartbeat_platform.domain.events import (
    HeartbeatClass,
    classify_heart_rate,
    encode_event,
    validate_message,
)
from heartbeat_platform.storage.copy_format import encode_records
from heartbeat_platform.storage.database import connect


def copy_baseline(database_url: str, events: int, settings: Settings) -> float:
    """Binary COPY of prebuilt rows, in the consumer's batch size, into an empty table."""
    gen = readiness.generator(settings, seed=4)
    readings = [validate_message(encode_event(e)) for e in gen.generate_events(events)]
    rows = [
        (r.customer_id, r.timestamp, r.heart_rate, 0, i % 3, i)
        for i, r in enumerate(readings)
        if classify_heart_rate(r.heart_rate) is HeartbeatClass.NORMAL
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


def parse_baseline(events: int, settings: Settings) -> float:
    """Validate + classify per second on prebuilt payloads: the consumer's CPU ceiling."""
    generated = readiness.generator(settings, seed=5).generate_events(events)
    payloads = [encode_event(e) for e in generated]
    started = time.perf_counter()
    for raw in payloads:
        classify_heart_rate(validate_message(raw).heart_rate)
    return round(events / (time.perf_counter() - started), 1)
