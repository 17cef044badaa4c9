"""Supervisor decisions over seeded run histories, and the sensor reading a real history."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster import DagsterRunStatus as S
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.test_utils import create_run_for_test

from heartbeat_platform.defs.ingest.jobs import CONSUMER_JOB
from heartbeat_platform.defs.ingest.supervisor import (
    SENSOR_NAME,
    ConsumerRun,
    consumer_history,
    decide,
    heartbeat_consumer_supervisor,
)


def run(created: float, status: S, started: bool = True, by_supervisor: bool = True) -> ConsumerRun:
    return ConsumerRun(f"run-{created:g}", status, created, started, by_supervisor)


def manual(created: float, status: S) -> ConsumerRun:
    return run(created, status, by_supervisor=False)


@pytest.mark.parametrize(
    ("history", "workers", "launch"),
    [
        pytest.param([], 1, 1, id="nothing ran yet -> start one"),
        pytest.param([run(1, S.FAILURE)], 1, 1, id="failed -> relaunch"),
        pytest.param([run(1, S.SUCCESS)], 1, 1, id="ended (idle stop) -> relaunch"),
        pytest.param([run(1, S.STARTED)], 1, 0, id="running -> nothing"),
        pytest.param([run(1, S.QUEUED, started=False)], 1, 0, id="queued -> nothing"),
        pytest.param([run(1, S.CANCELED)], 1, 0, id="canceled by operator -> stays stopped"),
        pytest.param([run(1, S.CANCELING)], 1, 0, id="being canceled -> stays stopped"),
        pytest.param(
            [run(1, S.CANCELED, started=False)], 1, 1, id="canceled while queued -> relaunch"
        ),
        pytest.param(
            [run(1, S.CANCELED), manual(2, S.FAILURE)], 1, 1,
            id="operator launched again, that run failed -> supervised again",
        ),
        pytest.param(
            [run(1, S.CANCELED), manual(2, S.STARTED)], 1, 0, id="operator's run alive -> nothing"
        ),
        pytest.param(
            [run(1, S.CANCELED), manual(2, S.CANCELED)], 1, 0,
            id="operator's own run terminated -> stays stopped",
        ),
        pytest.param([run(1, S.STARTED)], 3, 2, id="below target -> launch the missing ones"),
        pytest.param(
            [run(1, S.STARTED), run(2, S.CANCELED), run(3, S.FAILURE)], 3, 1,
            id="one of three stopped by operator -> keep the other two",
        ),
        pytest.param([run(1, S.STARTED), run(2, S.STARTED)], 1, 0, id="above target -> nothing"),
    ],
)
def test_decide(history: list[ConsumerRun], workers: int, launch: int) -> None:
    assert decide(history, workers).launch == launch


def test_terminations_before_since_are_forgotten() -> None:
    """`heartbeat-platform up` starts supervision afresh: its own Ctrl-C cancels runs too."""
    history = [run(1, S.CANCELED)]
    assert decide(history, 1, since=2).launch == 1
    assert decide(history, 1, since=0.5).launch == 0


def test_reason_tells_the_operator_how_to_resume() -> None:
    reason = decide([run(1, S.CANCELED)], 1).reason
    assert "stopped by an operator" in reason and "heartbeat_consumer is launched again" in reason


def _history_instance(*runs: tuple[S, dict[str, str]]) -> dg.DagsterInstance:
    """An instance holding consumer runs that started (RUN_START recorded), then ended."""
    instance = dg.DagsterInstance.ephemeral()
    for status, tags in runs:
        created = create_run_for_test(instance, job_name=CONSUMER_JOB, tags=tags)
        instance.report_dagster_event(
            DagsterEvent(DagsterEventType.RUN_START.value, job_name=CONSUMER_JOB), created.run_id
        )
        if status is S.CANCELED:
            instance.report_run_canceled(created)
        else:
            instance.report_run_failed(created)
    return instance


def test_the_sensor_reads_who_launched_and_how_runs_ended() -> None:
    """Sensor tags mark supervised runs; a re-execution counts as the operator's launch."""
    by_sensor = {"dagster/sensor_name": SENSOR_NAME}
    instance = _history_instance(
        (S.CANCELED, by_sensor),
        (S.FAILURE, {**by_sensor, "dagster/parent_run_id": "x"}),
    )
    history = sorted(consumer_history(instance), key=lambda r: r.created)
    assert [(r.status, r.started, r.by_supervisor) for r in history] == [
        (S.CANCELED, True, True),
        (S.FAILURE, True, False),
    ]
    # the re-execution resumed supervision and then failed: the sensor replaces it
    context = dg.build_sensor_context(instance=instance)
    requests = list(heartbeat_consumer_supervisor(context))
    assert len(requests) == 1 and isinstance(requests[0], dg.RunRequest)


def test_the_sensor_leaves_a_terminated_consumer_stopped() -> None:
    instance = _history_instance((S.CANCELED, {"dagster/sensor_name": SENSOR_NAME}))
    (result,) = heartbeat_consumer_supervisor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and "stopped by an operator" in result.skip_message
