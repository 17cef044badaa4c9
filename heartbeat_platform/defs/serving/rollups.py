"""Rollups: fleet per minute, customer per hour and per day, kept far longer than the raw
readings. Time-window partitioned assets (a partition reads its own window only; backfills
re-run any range), kept current by a sensor instead of a fixed cron: it asks PostgreSQL
which windows the consumer marked pending and launches a run for exactly those partitions."""

import warnings
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg
from psycopg import sql
from pydantic import Field, ValidationError

from heartbeat_platform.config import load_settings
from heartbeat_platform.defs.asset_keys import ANOMALIES, RECORDS
from heartbeat_platform.defs.resources import PostgresResource
from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.storage.rollups import Rollup, first_window, pending_runs, refresh

PREVIEW_ROWS = 10


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def partitions_start(retention: RetentionPolicy, now: datetime) -> str:
    """The first rollup partition offered: the oldest UTC day whose raw readings the
    platform keeps (HEARTBEAT_RAW_RETENTION_DAYS), when the code location loads.

    A partition is recomputed from its raw rows, so an older one has nothing to be built
    from (a backfill there would keep the rows as they are, see storage.rollups); offering
    it would only show hundreds of hours as "missing" in the UI. The start moves on each
    time the definitions load (each `up`, each code location reload): a location that
    stays loaded for days shows those days' partitions too, materialised or not."""
    return retention.days_to_create(now)[0].isoformat()


def _retention() -> RetentionPolicy:
    try:
        return load_settings().retention
    except ValidationError:  # the runs report the bad setting; the definitions still load
        return RetentionPolicy()


ROLLUPS_START = partitions_start(_retention(), datetime.now(UTC))


class RollupConfig(dg.Config):
    pending_only: bool = Field(
        default=False,
        description="Recompute only the windows the consumer marked pending (the rollup "
        "sensor's runs). Off: every window of the partition range (a backfill).",
    )


def _refresh_rollup(
    context: dg.AssetExecutionContext, config: RollupConfig, postgres: PostgresResource,
    rollup: Rollup, preview_order: str,
) -> dg.MaterializeResult:
    """Recompute the partition's windows from their own raw rows; what was done as metadata."""
    window = context.partition_time_window
    with postgres.connect() as conn:
        result = refresh(
            conn, rollup, window.start, window.end, pending_only=config.pending_only,
            now=datetime.now(UTC),
        )
        cursor = conn.execute(
            sql.SQL("SELECT * FROM {} WHERE {} >= %s AND {} < %s ORDER BY {} LIMIT {}").format(
                sql.Identifier(rollup.table), sql.Identifier(rollup.key),
                sql.Identifier(rollup.key), sql.SQL(preview_order), sql.Literal(PREVIEW_ROWS),
            ),
            _key_bounds(rollup, window.start, window.end),
        )
        columns = [c.name for c in cursor.description or ()]
        preview = _markdown_table(columns, cursor.fetchall())
    return dg.MaterializeResult(
        metadata={
            "windows_recomputed": result.windows,
            "rows_written": result.rows,
            "readings_summarised": result.readings,
            "pending_only": config.pending_only,
            "seconds": round(result.seconds, 3),
            "preview": dg.MetadataValue.md(preview),
        }
    )


def _key_bounds(rollup: Rollup, start, end) -> tuple:
    if rollup is Rollup.CUSTOMER_DAILY:
        return start.date(), end.date()
    return start, end


hourly = dg.HourlyPartitionsDefinition(start_date=f"{ROLLUPS_START}-00:00", end_offset=1)
daily = dg.DailyPartitionsDefinition(start_date=ROLLUPS_START, end_offset=1)


def _rollup_asset(**kwargs):
    """@dg.asset for a rollup: a backfill of many windows runs a day at a time per run, not
    one run per hour.

    `backfill_policy` is a beta parameter of @dg.asset in Dagster 1.13 and the only way to
    get multi-partition runs (no stable alternative exists), so its BetaWarning is ignored
    here, for these decorators only; every other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*`backfill_policy`.*", category=dg.BetaWarning
        )
        return dg.asset(
            group_name="rollups",
            kinds={"postgres", "table"},
            backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=24),
            **kwargs,
        )


@_rollup_asset(
    description="Whole fleet per minute: readings, active customers, BPM average/min/max/"
    "stddev, anomalies by type (each reading once). A partition is one hour of minutes; "
    "each minute's raw readings are read once, into customer_minute_stats, and the fleet "
    "minutes and the `customers` table are built from them. The rollup "
    "sensor recomputes the minutes the consumer marked pending, within a minute.",
    deps=[RECORDS, ANOMALIES],
    partitions_def=hourly,
)
def fleet_minute_stats(
    context: dg.AssetExecutionContext, config: RollupConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    return _refresh_rollup(context, config, postgres, Rollup.FLEET_MINUTE, "minute DESC")


@_rollup_asset(
    description="Per customer and hour: readings, BPM average/min/max/stddev, first and last "
    "reading, anomalies by type. Built from the hour's customer minutes (customer_minute_"
    "stats) once the hour has closed, and again when late readings change one of them.",
    deps=[RECORDS, ANOMALIES],
    partitions_def=hourly,
)
def customer_hourly_bpm_stats(
    context: dg.AssetExecutionContext, config: RollupConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    return _refresh_rollup(
        context, config, postgres, Rollup.CUSTOMER_HOURLY, "hour DESC, customer_id"
    )


@_rollup_asset(
    description="Per customer and UTC day: the original design's daily statistics, built "
    "from the day's 24 hourly rows (sums keep the average and deviation exact).",
    deps=[customer_hourly_bpm_stats],
    partitions_def=daily,
)
def customer_daily_bpm_stats(
    context: dg.AssetExecutionContext, config: RollupConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    return _refresh_rollup(
        context, config, postgres, Rollup.CUSTOMER_DAILY, "day DESC, customer_id"
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
    "once their hours are done; late readings mark their window again). Partitions before "
    "the first reading are reported materialized with 0 readings.",
)
def rollup_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource
) -> dg.SensorResult:
    now = datetime.now(UTC)
    with postgres.connect() as conn:
        runs = pending_runs(conn, now)
        first = first_window(conn)
    requests: list[dg.RunRequest] = []
    too_old = 0
    for rollup, partition_start, marked_at in runs:
        if len(requests) == MAX_RUNS_PER_TICK:
            break
        if partition_start < ROLLUPS_FIRST_PARTITION:
            too_old += 1  # no Dagster partition: `heartbeat-platform maintain` computes it
            continue
        key = partition_start.astimezone(UTC).strftime(_PARTITION_KEY_FORMAT[rollup])
        requests.append(dg.RunRequest(
            job_name=ROLLUP_JOBS[rollup].name,
            partition_key=key,
            run_key=rollup_run_key(rollup, key, marked_at, now),
            run_config={"ops": {rollup.table: {"config": {"pending_only": True}}}},
        ))
    if too_old:
        context.log.warning(
            "%d pending rollup partitions start before %s, the first Dagster partition: run "
            "`heartbeat-platform maintain` to compute them", too_old, ROLLUPS_START,
        )
    return dg.SensorResult(
        run_requests=requests,
        asset_events=nothing_before(context.instance, first, now) if first else [],
        skip_reason=None if requests else "no settled pending rollup window in a Dagster "
        "partition",
    )


ROLLUP_PARTITIONS = ((fleet_minute_stats, hourly), (customer_hourly_bpm_stats, hourly),
                     (customer_daily_bpm_stats, daily))


def nothing_before(
    instance: dg.DagsterInstance, first: datetime, now: datetime
) -> list[dg.AssetMaterialization]:
    """The partitions that end before the first minute holding readings have nothing to
    roll up: reported materialized once, with 0 readings, so the catalog does not show the
    hours before the platform's first reading as missing (README, "Dagster")."""
    events = []
    for asset, partitions in ROLLUP_PARTITIONS:
        done = instance.get_materialized_partitions(asset.key)
        for key in partitions.get_partition_keys(current_time=now):
            if partitions.time_window_for_partition_key(key).end > first:
                break
            if key not in done:
                events.append(dg.AssetMaterialization(
                    asset.key, partition=key, description="before the first reading: "
                    "nothing to roll up", metadata={"readings_summarised": 0},
                ))
    return events


def rollup_run_key(rollup: Rollup, key: str, marked_at: datetime, now: datetime) -> str:
    """The same marks give the same key (Dagster runs a key once); a window marked again
    gets a new one, and marks older than RETRY_AFTER a new one every RETRY_AFTER, so the
    windows of a failed run are retried."""
    run_key = f"{rollup}:{key}:{marked_at.isoformat()}"
    if now - marked_at >= RETRY_AFTER:
        run_key += f":retry-{int((now - marked_at) / RETRY_AFTER)}"
    return run_key


