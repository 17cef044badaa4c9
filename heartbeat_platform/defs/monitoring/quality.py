"""The data-quality checks of the landing tables (`defs/landing/checks.py`), every five
minutes. Schedules, not `on_cron` automation: that never fires for assets whose parents
are external (README, "The control room"), and every parent here is.

While a consumer run is alive it evaluates these checks itself, with the materialisations
it reports (`defs/ingest/jobs.py`): the UI shows a check's result only for the newest
materialisation or for one made by the check's own run, so results of a separate run would
read "Not evaluated" 30 s later. The schedule then skips, and runs them when no consumer
runs (the newest materialisation stays the newest, so its result stays shown)."""

import dagster as dg
from dagster import DagsterRunStatus, RunsFilter

from heartbeat_platform.defs.asset_keys import ANOMALIES, RECORDS
from heartbeat_platform.defs.ingest.jobs import CONSUMER_JOB

CONSUMER_ALIVE = [
    DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]

data_quality_job = dg.define_asset_job(
    "data_quality",
    selection=dg.AssetSelection.checks_for_assets(RECORDS, ANOMALIES),
    description="The data-quality checks on heartbeat_records and heartbeat_anomalies, over "
    "the readings of the last hour (a running consumer evaluates them itself).",
)


def consumer_alive(instance: dg.DagsterInstance) -> bool:
    runs = instance.get_runs(RunsFilter(job_name=CONSUMER_JOB, statuses=CONSUMER_ALIVE), limit=1)
    return bool(runs)


@dg.schedule(
    name="data_quality_every_5_minutes",
    job=data_quality_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="The landing checks every five minutes, unless a heartbeat_consumer run is "
    "alive: it evaluates them with its own materialisations.",
)
def every_five_minutes(context: dg.ScheduleEvaluationContext):
    if consumer_alive(context.instance):
        return dg.SkipReason(
            "a heartbeat_consumer run is alive and evaluates the checks with its "
            "materialisations"
        )
    return dg.RunRequest()
