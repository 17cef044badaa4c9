"""The supervisor: keeps HEARTBEAT_CONSUMER_WORKERS consumer runs alive in one consumer group.

The decision is a pure function of the consumer job's run history (`decide`), so it is
tested on seeded histories; the sensor only reads the history from the instance. It
never talks to Kafka.

The rules, in the UI's words:
- a run that failed (the op raised, or its process died) is replaced at the next tick;
- a run an operator terminated ("Terminate" on the run, status Canceled) stays stopped,
  and so does its worker slot. Launching the heartbeat_consumer job again ("Launchpad" ->
  "Launch run", or "Re-execute" on the canceled run) resumes supervision: from then on
  that run is kept alive and replaced when it fails;
- a run canceled while still queued never ran: it does not stop anything;
- runs created before HEARTBEAT_SUPERVISION_SINCE do not count as terminations, so each
  `heartbeat-platform up` starts the consumer afresh (its Ctrl-C cancels runs too).
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import dagster as dg
from dagster import DagsterRunStatus

from heartbeat_platform.config import load_settings
from heartbeat_platform.defs.ingest import jobs
from heartbeat_platform.defs.resources import OrchestrationSettings, consumer_workers

SENSOR_NAME = "heartbeat_consumer_supervisor"
HISTORY_LIMIT = 100  # a pause marker cannot be older: no run is created while paused
ALIVE = frozenset(
    {
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    }
)
TERMINATED = frozenset({DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED})


@dataclass(frozen=True)
class ConsumerRun:
    run_id: str
    status: DagsterRunStatus
    created: float  # epoch seconds
    started: bool  # it left the queue; a run canceled while queued never ran
    by_supervisor: bool  # launched by this sensor (not by a person, not a re-execution)


@dataclass(frozen=True)
class Decision:
    launch: int
    reason: str


def decide(history: Iterable[ConsumerRun], workers: int, since: float | None = None) -> Decision:
    """How many consumer runs to launch now so that `workers` run, minus operator stops."""
    runs = sorted(history, key=lambda r: r.created)
    alive = sum(r.status in ALIVE for r in runs)
    stopped: list[ConsumerRun] = []
    for run in runs:
        if since is not None and run.created < since:
            continue
        if not run.by_supervisor and stopped:
            stopped.pop()  # a person launched the consumer again: supervision resumes
        if run.status in TERMINATED and run.started:
            stopped.append(run)
    wanted = max(0, workers - len(stopped))
    launch = max(0, wanted - alive)
    reason = f"{alive} of {workers} consumer runs alive"
    if stopped:
        reason += (
            f"; {len(stopped)} stopped by an operator (latest: run {stopped[-1].run_id[:8]}), "
            "left stopped until heartbeat_consumer is launched again"
        )
    if launch:
        reason += f"; launching {launch}"
    return Decision(launch, reason)


def consumer_history(instance: dg.DagsterInstance) -> list[ConsumerRun]:
    records = instance.get_run_records(
        dg.RunsFilter(job_name=jobs.CONSUMER_JOB), limit=HISTORY_LIMIT
    )
    return [
        ConsumerRun(
            run_id=r.dagster_run.run_id,
            status=r.dagster_run.status,
            created=r.create_timestamp.timestamp(),
            started=r.start_time is not None,
            by_supervisor=r.dagster_run.tags.get("dagster/sensor_name") == SENSOR_NAME
            and "dagster/parent_run_id" not in r.dagster_run.tags,
        )
        for r in records
    ]


@dg.sensor(
    name=SENSOR_NAME,
    # By name, not `job=`: a JobDefinition target makes Definitions rebuild the sensor to
    # bind the resources, and Dagster 1.13 then warns about a beta `owners` parameter.
    job_name=jobs.CONSUMER_JOB,
    minimum_interval_seconds=20,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keeps HEARTBEAT_CONSUMER_WORKERS heartbeat_consumer runs alive (default 1, "
    "at most one per partition): replaces failed runs, leaves runs an operator terminated "
    "stopped until heartbeat_consumer is launched again.",
)
def heartbeat_consumer_supervisor(
    context: dg.SensorEvaluationContext,
) -> Iterator[dg.RunRequest | dg.SkipReason]:
    decision = decide(
        consumer_history(context.instance),
        consumer_workers(load_settings()),
        OrchestrationSettings().heartbeat_supervision_since,
    )
    if not decision.launch:
        yield dg.SkipReason(decision.reason)
        return
    context.log.info(decision.reason)
    for _ in range(decision.launch):
        yield dg.RunRequest()
