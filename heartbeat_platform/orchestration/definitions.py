"""The one Definitions object of the platform, loaded by workspace.yaml."""

from __future__ import annotations

import dagster as dg

from heartbeat_platform.orchestration import assets, checks, jobs, schedules, sensors
from heartbeat_platform.orchestration.resources import KafkaResource, PostgresResource

defs = dg.Definitions(
    assets=assets.all_assets,
    asset_checks=checks.all_checks,
    jobs=[
        jobs.heartbeat_consumer,
        jobs.heartbeat_producer,
        schedules.health_snapshot_job,
        schedules.data_quality_job,
        schedules.raw_partitions_job,
        *schedules.ROLLUP_JOBS.values(),
    ],
    schedules=[
        schedules.every_minute, schedules.every_five_minutes, schedules.hourly_retention,
    ],
    sensors=[sensors.heartbeat_consumer_supervisor, schedules.rollup_sensor],
    resources={"postgres": PostgresResource(), "kafka": KafkaResource()},
)
