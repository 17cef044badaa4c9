"""The producer and consumer jobs against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import time

import dagster as dg
import pytest
import requests
from dagster import DagsterRunStatus
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.loader import LoadingContextForTest
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.test_utils import create_run_for_test
from prometheus_client.parser import text_string_to_metric_families

from heartbeat_platform import readiness
from heartbeat_platform.definitions import defs
from heartbeat_platform.defs.asset_keys import (
    ALERT_EPISODES,
    ANOMALIES,
    DEAD_LETTERS,
    METRICS,
    RECORDS,
)
from heartbeat_platform.defs.ingest.jobs import CONSUMER_JOB
from heartbeat_platform.defs.landing.checks import EVALUATORS
from heartbeat_platform.defs.monitoring.quality import every_five_minutes
from heartbeat_platform.local.process import free_port
from heartbeat_platform.streaming.consumer import HeartbeatConsumer
from heartbeat_platform.streaming.lag import log_end_offsets

LANDED = """SELECT (SELECT count(*) FROM heartbeat_records)
                + (SELECT count(*) FROM heartbeat_anomalies)
                + (SELECT count(*) FROM heartbeat_dead_letters)"""


def consumer_connections_closed(db, wait_s: float = 15.0) -> bool:
    """No other client on the test database (a backend exits just after its client closes)."""
    deadline = time.monotonic() + wait_s
    while True:
        others = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()[0]
        if others == 0 or time.monotonic() > deadline:
            return others == 0
        time.sleep(0.2)


def consumer_config(**config) -> dict:
    return {"ops": {"consume_heartbeats": {"config": {"progress_interval_s": 0, **config}}}}


def observations(result: dg.ExecuteInProcessResult) -> list[dict]:
    return [
        {k: v.value for k, v in e.asset_observation_data.asset_observation.metadata.items()}
        for e in result.get_asset_observation_events()
    ]


def test_producer_job_sends_the_requested_events(platform_settings) -> None:
    """Run config `events` and `rate` reach the producer; progress lands on the topic asset."""
    result = defs.get_job_def("heartbeat_producer").execute_in_process(
        run_config={"ops": {"produce_heartbeats": {"config": {
            "events": 700, "rate": 0, "progress_interval_s": 0,
        }}}}
    )
    assert result.success
    ends = log_end_offsets(platform_settings.kafka_bootstrap_servers, platform_settings.kafka_topic)
    assert sum(ends.values()) == 700
    assert observations(result)[-1]["producer_delivered"] == 700


def test_producer_job_refuses_events_and_duration_together(platform_settings) -> None:
    """`events` and `duration` are alternatives, as on the CLI."""
    result = defs.get_job_def("heartbeat_producer").execute_in_process(
        run_config={"ops": {"produce_heartbeats": {"config": {"events": 10, "duration": 5}}}},
        raise_on_error=False,
    )
    assert not result.success


def test_consumer_job_lands_every_message_and_reports_progress(produce, db) -> None:
    """The consumer job writes what the topic holds and reports counts, not per message."""
    produce(1_500)
    instance = dg.DagsterInstance.ephemeral()
    result = defs.get_job_def("heartbeat_consumer").execute_in_process(
        run_config=consumer_config(stop_when_idle=1.5), instance=instance
    )
    assert result.success
    assert db.execute(LANDED).fetchone()[0] == 1_500
    final = observations(result)[-1]
    assert final["consumer_messages"] == 1_500
    anomalies = db.execute("SELECT count(*) FROM heartbeat_anomalies").fetchone()[0]
    assert final["consumer_anomalies"] == anomalies > 0
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert sum("consumer progress" in m for m in messages) >= 2  # one per report, not message
    assert any("consumer stopped" in m for m in messages)


def test_consumer_job_materialises_the_landing_tables_it_wrote_and_serves_metrics(
    produce, db, monkeypatch
) -> None:
    """The landing tables' freshness comes from the consumer run: each report materialises
    the tables it wrote since the previous one (rows, last reading time); with
    HEARTBEAT_METRICS_PORT set the run serves Prometheus /metrics on that port."""
    port = free_port()
    monkeypatch.setenv("HEARTBEAT_METRICS_PORT", str(port))
    # no alarm-condition delay: the generator's isolated anomalies fire episodes at once
    monkeypatch.setenv("HEARTBEAT_ALERT_DELAY_S", "0")
    produce(1_500)
    instance = dg.DagsterInstance.ephemeral()
    result = defs.get_job_def("heartbeat_consumer").execute_in_process(
        run_config=consumer_config(stop_when_idle=1.5), instance=instance
    )
    assert result.success
    written: dict[dg.AssetKey, int] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        metadata = {k: v.value for k, v in materialization.metadata.items()}
        what = "transitions" if materialization.asset_key == ALERT_EPISODES else "rows_written"
        assert metadata[f"{what}_since_last_report"] > 0  # nothing reported without news
        written[materialization.asset_key] = metadata[f"{what}_by_run"]
        if materialization.asset_key in (RECORDS, ANOMALIES):
            assert metadata["last_reading_at"] > 0
    records, anomalies, notifications = db.execute(
        "SELECT (SELECT count(*) FROM heartbeat_records), (SELECT count(*) FROM "
        "heartbeat_anomalies), (SELECT count(*) FROM alert_outbox)"
    ).fetchone()
    assert notifications > 0  # ~80 anomalies among 1,500 readings open episodes
    assert written == {
        RECORDS: records, ANOMALIES: anomalies, METRICS: anomalies, ALERT_EPISODES: notifications,
    }
    assert DEAD_LETTERS not in written  # generated readings are all valid messages
    assert instance.get_latest_materialization_event(RECORDS) is not None

    scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if not sample.labels
    }
    assert samples["heartbeat_consumer_messages_total"] == 1_500


def test_the_consumer_run_evaluates_the_landing_checks_with_its_materialisations(
    produce,
) -> None:
    """The UI shows a check's result only for the asset's newest materialisation (or one
    made by the check's own run). The consumer run materialises the landing tables at every
    report, so it evaluates their checks itself: each check's newest execution is the
    consumer run's, passed, and Dagster counts it as evaluated for the newest
    materialisation (the test behind the asset page's checks). Meanwhile the schedule
    skips; with no consumer alive it runs them."""
    produce(1_500)
    with dg.instance_for_test() as instance:  # a schedule's context needs a stored instance
        _consumer_checks_shown_and_schedule_skips(instance)


def _consumer_checks_shown_and_schedule_skips(instance: dg.DagsterInstance) -> None:
    result = defs.get_job_def("heartbeat_consumer").execute_in_process(
        run_config=consumer_config(stop_when_idle=1.5, checks_interval_s=0), instance=instance
    )
    assert result.success
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(EVALUATORS))
    assert set(latest) == set(EVALUATORS)
    for key, record in latest.items():
        assert record.run_id == result.run_id, key
        assert record.status is AssetCheckExecutionRecordStatus.SUCCEEDED, key

    async def shown_for_latest_materialisation() -> dict:
        loading = LoadingContextForTest(instance)
        return {key: await r.targets_latest_materialization(loading) for key, r in latest.items()}

    assert asyncio.run(shown_for_latest_materialisation()) == dict.fromkeys(EVALUATORS, True)

    def schedule_tick():
        return every_five_minutes(dg.build_schedule_context(instance=instance))

    assert isinstance(schedule_tick(), dg.RunRequest)  # the run above has finished
    create_run_for_test(instance, job_name=CONSUMER_JOB, status=DagsterRunStatus.STARTED)
    assert isinstance(schedule_tick(), dg.SkipReason)


def test_a_dagster_interrupt_stops_the_consumer_cleanly(platform_settings, produce, db) -> None:
    """Dagster terminates a run by raising DagsterExecutionInterruptedError from a signal
    handler; the consumer must let it through, close its connections and keep whole batches,
    so the next run resumes without loss or duplicates."""
    produce(20_000)
    consumer = HeartbeatConsumer(
        readiness.consumer_config(
            platform_settings, readiness.prepare(platform_settings).endpoints, batch_size=500
        )
    )

    def interrupt(_signum, _frame):
        raise DagsterExecutionInterruptedError()

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 8.0)
    try:
        with pytest.raises(DagsterExecutionInterruptedError):
            consumer.run()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    assert consumer_connections_closed(db)
    stored = db.execute("SELECT sum(next_offset) FROM consumer_progress").fetchone()[0] or 0
    assert db.execute(LANDED).fetchone()[0] == stored  # only whole batches, with their progress

    result = defs.get_job_def("heartbeat_consumer").execute_in_process(
        run_config=consumer_config(stop_when_idle=1.5)
    )
    assert result.success
    assert db.execute(LANDED).fetchone()[0] == 20_000
