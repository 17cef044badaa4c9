"""What `up` hands Dagster: its storage database and the platform's settings."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster import DagsterEventType, DagsterRunStatus
from dagster._core.events import DagsterEvent, StepSuccessData
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._core.test_utils import create_run_for_test

from heartbeat_platform.config import load_settings
from heartbeat_platform.defs.resources import OrchestrationSettings
from heartbeat_platform.launcher import (
    RunsStopped,
    StopReport,
    child_environment,
    dagster_storage_url,
    fail_orphaned_runs,
    stop_runs,
)
from heartbeat_platform.local.process import free_port
from heartbeat_platform.local.services import Endpoints, LocalServices


def test_dagster_gets_a_dagster_database_on_the_configured_server(
    settings_factory, database_url: str, use_settings
) -> None:
    """With DATABASE_URL set, Dagster's storage is the same server's `dagster` database,
    created when missing and spelled with the psycopg2 scheme dagster-postgres needs."""
    settings = use_settings(settings_factory(database_url=database_url))
    url = dagster_storage_url(settings, LocalServices(settings), OrchestrationSettings())
    assert url.startswith("postgresql+psycopg2://") and url.endswith("/dagster")
    with psycopg.connect(url.replace("postgresql+psycopg2://", "postgresql://")) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "dagster"


def test_an_explicit_dagster_url_wins_and_gets_the_psycopg2_scheme(
    settings_factory, use_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = use_settings(settings_factory())
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql://d:secret@db.example:5432/runs")
    url = dagster_storage_url(settings, LocalServices(settings), OrchestrationSettings())
    assert url == "postgresql+psycopg2://d:secret@db.example:5432/runs"


def test_dagster_processes_see_the_same_settings(
    settings_factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Runs read settings from their environment: they must get this `up`'s, not defaults."""
    settings = settings_factory(
        kafka_group_id="group-x", heartbeat_consume_batch_size=123, heartbeat_customer_count=42
    )
    endpoints = Endpoints("postgresql://u@127.0.0.1:1/h", "127.0.0.1:2")
    env = child_environment(settings, endpoints, tmp_path / "home", "postgresql+psycopg2://x")
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen = load_settings()
    assert seen.model_dump() == settings.model_copy(
        update={"database_url": endpoints.database_url,
                "kafka_bootstrap_servers": endpoints.bootstrap_servers}
    ).model_dump()
    assert env["DAGSTER_HOME"] == str(tmp_path / "home")
    assert float(env["HEARTBEAT_SUPERVISION_SINCE"]) > 0


def _run(instance: dg.DagsterInstance, status: DagsterRunStatus, tags: dict | None = None):
    return create_run_for_test(instance, job_name="heartbeat_consumer", status=status, tags=tags)


def test_runs_whose_code_server_is_gone_are_failed_at_start(tmp_path: Path) -> None:
    """After a crash or reboot a run stays 'started' forever; the supervisor would count a
    dead consumer as alive. A run whose code server still answers is left alone."""
    instance = dg.DagsterInstance.ephemeral()
    socket = tmp_path / "server.sock"
    socket.touch()
    gone = _run(instance, DagsterRunStatus.STARTED,
                {GRPC_INFO_TAG: json.dumps({"host": "localhost", "port": free_port()})})
    alive = _run(
        instance, DagsterRunStatus.STARTED, {GRPC_INFO_TAG: json.dumps({"socket": str(socket)})}
    )
    fail_orphaned_runs(instance)
    assert instance.get_run_by_id(gone.run_id).status is DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(alive.run_id).status is DagsterRunStatus.STARTED


def _step_event(instance: dg.DagsterInstance, run, kind: DagsterEventType, data=None) -> None:
    event = DagsterEvent(kind.value, job_name=run.job_name, step_key="op",
                         event_specific_data=data)
    instance.report_dagster_event(event, run_id=run.run_id)


def test_stop_runs_cancels_queued_runs_and_reports_what_is_left() -> None:
    """Runs not started yet are canceled outright; one that cannot be reached is left over:
    as `timed_out` when it was inside a step, as `idle` when it was starting or between
    steps (its next step's processes still booting)."""
    instance = dg.DagsterInstance.ephemeral()
    queued = _run(instance, DagsterRunStatus.NOT_STARTED)
    stuck = _run(instance, DagsterRunStatus.STARTED)  # no code server to ask
    _step_event(instance, stuck, DagsterEventType.STEP_START)
    starting = _run(instance, DagsterRunStatus.STARTING)
    between = _run(instance, DagsterRunStatus.STARTED)
    _step_event(instance, between, DagsterEventType.STEP_START)
    _step_event(instance, between, DagsterEventType.STEP_SUCCESS, StepSuccessData(1.0))
    stopped = stop_runs(instance, timeout=3)
    assert instance.get_run_by_id(queued.run_id).status is DagsterRunStatus.CANCELED
    assert stopped.canceled == [queued.run_id]
    assert [run.run_id for run in stopped.timed_out] == [stuck.run_id]
    assert {run.run_id for run in stopped.idle} == {starting.run_id, between.run_id}
    assert stopped.terminated == []


@pytest.mark.timeout(300)  # a guard, not a measurement: waiting would mean the hour below
def test_stop_runs_does_not_wait_for_runs_with_no_step_running() -> None:
    """A run still booting is asked to stop but not waited for (it has done nothing yet):
    with no run inside a step, stop_runs returns without using its timeout."""
    instance = dg.DagsterInstance.ephemeral()
    starting = _run(instance, DagsterRunStatus.STARTED)  # launched, its op not begun
    stopped = stop_runs(instance, timeout=3600)
    assert [run.run_id for run in stopped.idle] == [starting.run_id]
    assert stopped.timed_out == []


def test_the_final_line_says_what_was_stopped_and_how_long_it_took() -> None:
    report = StopReport(began=100.0)
    assert report.line(now=101.0) is None  # nothing stopped (e.g. the port was in use)
    report.runs = RunsStopped(terminated=["a", "b"], canceled=["c"])
    report.services = ["broker", "postgres"]
    assert report.line(now=106.24) == (
        "stopped Dagster (2 runs terminated, 1 queued run canceled), the embedded PostgreSQL "
        "and broker in 6.2 s"
    )
    assert StopReport(began=0.0, runs=RunsStopped()).line(now=3.0) == (
        "stopped Dagster (no runs in progress) in 3.0 s"
    )
    assert StopReport(began=0.0, services=["postgres"]).line(now=0.4) == (
        "stopped the embedded PostgreSQL in 0.4 s"
    )
