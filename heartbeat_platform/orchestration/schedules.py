"""Periodic work. Schedules, not `on_cron` automation: that never fires for assets whose
parents are external (see DESIGN.md), and every parent here is. Rollups are kept current
by a sensor instead of a fixed cron: it asks PostgreSQL which windows the consumer marked
pending and launches a run for exactly those partitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from heartbeat_platform.orchestration.assets import (
    ANOMALIES,
    RECORDS,
    ROLLUPS_START,
    customer_daily_bpm_stats,
    customer_hourly_bpm_stats,
    fleet_minute_stats,
    pipeline_health_snapshot,
    raw_partitions,
)
from heartbeat_platform.orchestration.resources import PostgresResource
from heartbeat_platform.storage.rollups import Rollup, pending_runs

health_snapshot_job = dg.define_asset_job(
    "pipeline_health",
    selection=dg.AssetSelection.assets(pipeline_health_snapshot),
    description="Record throughput, consumer lag, error and anomaly rates, dead letters.",
)

data_quality_job = dg.define_asset_job(
    "data_quality",
    selection=dg.AssetSelection.checks_for_assets(RECORDS, ANOMALIES),
    description="The data-quality checks on heartbeat_records and heartbeat_anomalies, over "
    "the readings of the last hour.",
)

raw_partitions_job = dg.define_asset_job(
    "storage_retention",
    selection=dg.AssetSelection.assets(raw_partitions),
    description="Create the day partitions ahead, drop expired days, prune old rollup rows.",
)

ROLLUP_JOBS = {
    Rollup.FLEET_MINUTE: dg.define_asset_job(
        "fleet_minute_rollup", selection=dg.AssetSelection.assets(fleet_minute_stats),
    ),
    Rollup.CUSTOMER_HOURLY: dg.define_asset_job(
        "customer_hourly_rollup", selection=dg.AssetSelection.assets(customer_hourly_bpm_stats),
    ),
    Rollup.CUSTOMER_DAILY: dg.define_asset_job(
        "customer_daily_rollup", selection=dg.AssetSelection.assets(customer_daily_bpm_stats),
    ),
}
_PARTITION_KEY_FORMAT = {
    Rollup.FLEET_MINUTE: "%Y-%m-%d-%H:%M",
    Rollup.CUSTOMER_HOURLY: "%Y-%m-%d-%H:%M",
    Rollup.CUSTOMER_DAILY: "%Y-%m-%d",
}
ROLLUPS_FIRST_PARTITION = datetime.fromisoformat(ROLLUPS_START).replace(tzinfo=UTC)
MAX_RUNS_PER_TICK = 12  # a backlog of late windows is worked off over several ticks
# Marks still there this long after their last change mean the run that took them failed
# (its transaction put them back): a new run key every interval retries it.
RETRY_AFTER = timedelta(minutes=10)


@dg.sensor(
    jobs=list(ROLLUP_JOBS.values()),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 30 s: one run per rollup partition holding settled pending windows "
    "(fleet minutes a few seconds after they close, customer hours a minute after, days "
    "once their hours are done; late readings mark their window again).",
)
def rollup_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    now = datetime.now(UTC)
    with postgres.connect() as conn:
        runs = pending_runs(conn, now)
    requested, too_old = 0, 0
    for rollup, partition_start, marked_at in runs:
        if requested == MAX_RUNS_PER_TICK:
            break
        if partition_start < ROLLUPS_FIRST_PARTITION:
            too_old += 1  # no Dagster partition: `heartbeat-platform maintain` computes it
            continue
        key = partition_start.astimezone(UTC).strftime(_PARTITION_KEY_FORMAT[rollup])
        requested += 1
        yield dg.RunRequest(
            job_name=ROLLUP_JOBS[rollup].name,
            partition_key=key,
            run_key=rollup_run_key(rollup, key, marked_at, now),
            run_config={"ops": {rollup.table: {"config": {"pending_only": True}}}},
        )
    if too_old:
        context.log.warning(
            "%d pending rollup partitions start before %s, the first Dagster partition: run "
            "`heartbeat-platform maintain` to compute them", too_old, ROLLUPS_START,
        )
    if not requested:
        yield dg.SkipReason("no settled pending rollup window in a Dagster partition")


def rollup_run_key(rollup: Rollup, key: str, marked_at: datetime, now: datetime) -> str:
    """The same marks give the same key (Dagster runs a key once); a window marked again
    gets a new one, and marks older than RETRY_AFTER a new one every RETRY_AFTER, so the
    windows of a failed run are retried."""
    run_key = f"{rollup}:{key}:{marked_at.isoformat()}"
    if now - marked_at >= RETRY_AFTER:
        run_key += f":retry-{int((now - marked_at) / RETRY_AFTER)}"
    return run_key


every_minute = dg.ScheduleDefinition(
    name="pipeline_health_every_minute",
    job=health_snapshot_job,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

every_five_minutes = dg.ScheduleDefinition(
    name="data_quality_every_5_minutes",
    job=data_quality_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

hourly_retention = dg.ScheduleDefinition(
    name="storage_retention_hourly",
    job=raw_partitions_job,
    cron_schedule="7 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
