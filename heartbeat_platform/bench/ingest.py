"""The ingest stages: producer throughput, and end to end at a fixed rate (reading to stored
row, opening reading to webhook receipt). Consume to PostgreSQL is `processes.consume_process`
on a preloaded topic."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime

from heartbeat_platform import readiness
from heartbeat_platform.alerting.receiver import Receipt, ReceiverProcess
from heartbeat_platform.bench.processes import PeakRss, child_env, cli, last_json
from heartbeat_platform.bench.services import endpoints
from heartbeat_platform.config import Settings
from heartbeat_platform.storage.database import connect, one_row
from heartbeat_platform.storage.progress import load_progress
from heartbeat_platform.streaming.producer import HeartbeatProducer, ProducerReport

ALERT_DELAY_S = 0  # the latency stage's HEARTBEAT_ALERT_DELAY_S (see end_to_end)


def produce(settings: Settings, events: int) -> ProducerReport:
    """The same seeded events into the settings' topic, as fast as delivery allows."""
    with HeartbeatProducer(readiness.producer_config(settings, endpoints(settings))) as producer:
        return producer.run(readiness.generator(settings, seed=1), events=events)


def end_to_end(settings: Settings, rate: float, seconds: float) -> dict:
    """Reading to stored row, and opening reading to webhook receipt, at `rate`. With no
    alarm-condition delay: the generator's anomalies are independent, so none lasts the
    default 10 s and at the defaults nothing would fire to be measured (README, Alerts)."""
    receiver = ReceiverProcess()
    consumer = subprocess.Popen(
        cli("consume", "--json", "--stop-when-idle", "5"),
        env={**child_env(settings), "HEARTBEAT_ALERT_WEBHOOK_URL": receiver.url,
             "HEARTBEAT_ALERT_DELAY_S": str(ALERT_DELAY_S)},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    peak = PeakRss(consumer.pid)
    try:
        with HeartbeatProducer(
            readiness.producer_config(settings, endpoints(settings))
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
    consumed = last_json(out)
    consumed["peak_rss_mb"] = peak.result(consumed["peak_rss_mb"])
    with connect(endpoints(settings).database_url) as conn:
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
        "alerts": {**alert_latency(receipts, started_at, undelivered),
                   "alert_delay_s": ALERT_DELAY_S},
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
    requests = len({(r.received_at, r.key) for r in receipts})  # a storm's group is one
    if not delays:
        return {"notifications": len(receipts), "requests": requests, "firing_measured": 0,
                "undelivered_at_stop": undelivered}
    return {
        "notifications": len(receipts),
        "requests": requests,
        "firing_measured": len(delays),
        "notify_p50_ms": round(delays[len(delays) // 2] * 1000, 1),
        "notify_p99_ms": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000, 1),
        "notify_max_ms": round(delays[-1] * 1000, 1),
        "undelivered_at_stop": undelivered,
    }


def _wait_for_delivery(settings: Settings, timeout: float) -> None:
    """Until the outbox is delivered (the consumer's delivery thread), or `timeout`."""
    deadline = time.monotonic() + timeout
    with connect(endpoints(settings).database_url) as conn:
        while time.monotonic() < deadline:
            pending = one_row(conn.execute(
                "SELECT count(*) FROM alert_outbox WHERE done_at IS NULL"
            ))[0]
            if not pending:
                return
            time.sleep(0.5)


def _wait_for_offsets(settings: Settings, offsets: dict[int, list[int]], timeout: float) -> None:
    """Until the consumer's stored progress is past every delivered offset; TimeoutError
    after `timeout`."""
    database_url = endpoints(settings).database_url
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = load_progress(
            database_url, settings.kafka_group_id, settings.kafka_topic, offsets
        )
        if all(p in stored and stored[p].next_offset > end for p, (_, end) in offsets.items()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"consumer did not reach offsets {offsets} within {timeout}s")
