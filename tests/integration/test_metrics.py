"""Prometheus /metrics of a running consumer and producer, scraped over HTTP."""

from __future__ import annotations

import threading
import time
import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from heartbeat_platform import metrics, readiness
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.producer import HeartbeatProducer


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_running_consumer_and_producer_report_on_metrics(settings_factory, database_url):
    settings = settings_factory(database_url=database_url, heartbeat_consume_batch_size=500)
    endpoints = readiness.prepare(settings).endpoints
    registry = CollectorRegistry()
    port = metrics.serve(registry, 0)
    consumer = HeartbeatConsumer(readiness.consumer_config(settings, endpoints),
                                 metrics=registry)
    running = threading.Thread(target=consumer.run, daemon=True)
    running.start()
    assert consumer.assigned.wait(60)
    with HeartbeatProducer(readiness.producer_config(settings, endpoints),
                           metrics=registry) as producer:
        report = producer.run(readiness.generator(settings, 3), events=3_000, rate=3_000)
        during = scrape(port)
    deadline = time.monotonic() + 60
    while consumer.stats.messages_consumed < 3_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    after = scrape(port)
    consumer.request_stop()
    running.join(30)

    assert report.delivered == 3_000
    assert after[("heartbeat_producer_messages_total", (("outcome", "delivered"),))] == 3_000
    assert after[("heartbeat_producer_messages_total", (("outcome", "failed"),))] == 0
    assert during[("heartbeat_consumer_messages_total", ())] < 3_000  # it moves
    assert after[("heartbeat_consumer_messages_total", ())] == 3_000
    rows = sum(value for (name, labels), value in after.items()
               if name == "heartbeat_consumer_rows_total"
               and labels != (("table", "pipeline_metrics"),))
    assert rows == 3_000  # records + anomalies + dead letters
    lags = {labels: value for (name, labels), value in after.items()
            if name == "heartbeat_consumer_lag_messages"}
    assert len(lags) == 3 and set(lags.values()) == {0.0}
    assert after[("heartbeat_consumer_batch_messages_count", ())] >= 6
    assert after[("heartbeat_consumer_batch_messages_sum", ())] == 3_000
    assert after[("heartbeat_consumer_end_to_end_seconds_count", ())] > 0
    assert after[("heartbeat_consumer_database_unavailable", ())] == 0

