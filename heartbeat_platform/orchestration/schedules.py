"""Periodic work. Schedules, not `on_cron` automation: that never fires for assets whose
parents are external (see DESIGN.md), and every parent here is. Rollups are kept current
by a sensor instead of a fixed cron: it asks PostgreSQL which windows the consumer marked
pending and launches a run for exactly those partitions."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from heartbeat_platform.orchestration.assets import (
    ANOMALIES,
    RECORDS,
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
MAX_RUNS_PER_TICK = 12  # a backlog of late windows is worked off over several ticks


@dg.sensor(
    jobs=list(ROLLUP_JOBS.values()),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 30 s: one run per rollup partition holding settled pending windows "
    "(fleet minutes a few seconds after they close, customer hours a minute after, days "
    "once their hours are done; late readings mark their window again).",
)
def rollup_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    with postgres.connect() as conn:
        runs = pending_runs(conn, datetime.now(UTC))
    requested = 0
    for rollup, partition_start, marked_at in runs:
        if requested == MAX_RUNS_PER_TICK:
            break
        key = partition_start.astimezone(UTC).strftime(_PARTITION_KEY_FORMAT[rollup])
        requested += 1
        yield dg.RunRequest(
            job_name=ROLLUP_JOBS[rollup].name,
            partition_key=key,
            # a window marked again later gets a new run; the same marks never run twice
            run_key=f"{rollup}:{key}:{marked_at.isoformat()}",
            run_config={"ops": {rollup.table: {"config": {"pending_only": True}}}},
        )
    if not requested:
        yield dg.SkipReason("no settled pending rollup window")


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
