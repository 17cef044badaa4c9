"""`heartbeat-platform up`: services, schema, topic, then Dagster's webserver and daemon.

Start: the embedded PostgreSQL and broker start (or are reused, or the configured ones are
used), the schema is applied and the topic created; Dagster gets its own `dagster`
database and a DAGSTER_HOME under the state folder; `dagster-webserver` and
`dagster-daemon run` start on 127.0.0.1 with the platform's settings in their environment,
so every run uses exactly the services prepared here. The supervisor sensor, running by
default, then launches the consumer by itself; `demo` also launches the producer.

Stop (Ctrl-C, SIGTERM or SIGHUP): the webserver is stopped at once (it runs no runs), every
unfinished run is terminated (queued ones are canceled); runs inside a step are waited for,
so the consumer commits and the producer flushes; runs with no step running (starting, or
between steps: under load a step's processes take tens of seconds to boot) have nothing
under way and are not waited for: their processes are killed. Then the daemon is stopped
with every process it started (each program runs in a process group of its own), then the
embedded services this call started, and one line says what was stopped and how long it
took.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
import requests
import yaml
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.execution.stats import StepEventStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster_graphql import DagsterGraphQLClient
from filelock import FileLock, Timeout

from heartbeat_platform import readiness
from heartbeat_platform.config import Settings
from heartbeat_platform.defs.ingest.jobs import PRODUCER_JOB, ROLE_TAG
from heartbeat_platform.defs.resources import (
    OrchestrationSettings,
    consumer_workers,
    settings_environment,
)
from heartbeat_platform.local.process import port_open
from heartbeat_platform.local.rotation import BrokerGuard, BrokerRotation
from heartbeat_platform.local.services import Endpoints, LocalServices
from heartbeat_platform.storage.database import ensure_database, sqlalchemy_url


def config_file(name: str) -> Path:
    """workspace.yaml: packaged in a wheel under `_dagster`, else the repo root."""
    packaged = Path(__file__).resolve().parent / "_dagster" / name
    return packaged if packaged.exists() else Path(__file__).resolve().parents[1] / name


# The deployed instance (storage in PostgreSQL); the repo-root dagster.yaml is `dagster dev`'s.
INSTANCE_CONFIG = Path(__file__).resolve().with_name("dagster_instance.yaml")


HOST = "127.0.0.1"
DEMO_RATE = 50.0  # events/s of the producer `--demo` starts
UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class UpError(RuntimeError):
    """`up` cannot start; the message says what to do."""


def run_up(settings: Settings, port: int = 3000, demo: bool = False) -> int:
    """Run the platform until Ctrl-C / SIGTERM; 0 after a clean stop, 1 if it could not start.

    Whatever it started, it stops, and then prints one line saying what and how long it took.
    """
    stop = threading.Event()
    report = StopReport()
    with _signals_set(stop, report):
        code = _run(settings, port, demo, stop, report)
        line = report.line()
        if line:
            print(line, flush=True)
    return code


def _run(
    settings: Settings, port: int, demo: bool, stop: threading.Event, report: StopReport
) -> int:
    services = LocalServices(settings)
    with contextlib.ExitStack() as cleanup:
        try:
            if port_open(HOST, port):
                raise UpError(f"port {port} is in use: pass another with --port")
            home = settings.heartbeat_state_dir / "dagster"
            home.mkdir(parents=True, exist_ok=True)
            _hold_lock(home, cleanup)
            cleanup.callback(_stop_services, services, report)
            prepared = readiness.prepare(settings, services)
            _guard_broker(settings, services, prepared.endpoints, cleanup)
            orchestration = OrchestrationSettings()
            storage_url = dagster_storage_url(settings, services, orchestration)
            write_instance_config(home, consumer_workers(settings))
            env = child_environment(settings, prepared.endpoints, home, storage_url)
            os.environ.update(DAGSTER_HOME=str(home), DAGSTER_POSTGRES_URL=storage_url)
            instance = cleanup.enter_context(DagsterInstance.from_config(str(home)))
            if settings.database_url is None and orchestration.dagster_postgres_url is None:
                fail_orphaned_runs(instance)
            processes = _start_dagster(home, port, env)
            cleanup.callback(_shutdown, instance, processes, report)
            url = f"http://{HOST}:{port}"
            if not _wait_until_serving(url, processes, stop):
                return 0 if stop.is_set() else _died(processes)
            print(f"Dagster UI: {url}  (logs in {home / 'process-logs'}; Ctrl-C stops everything)")
            if demo:
                _launch_demo_producer(port, stop)
            while not stop.wait(1.0):
                if any(p.poll() is not None for p in processes.values()):
                    return _died(processes)
            print("stopping: terminating runs, then Dagster, then the services started here",
                  flush=True)
            return 0
        except UpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            report.begin()  # before the cleanup: a signal's earlier time is kept


@dataclass
class RunsStopped:
    """What `stop_runs` did to the runs it found unfinished."""

    terminated: list[str] = field(default_factory=list)  # asked to stop, and did
    canceled: list[str] = field(default_factory=list)  # queued: canceled before they started
    idle: list[DagsterRun] = field(default_factory=list)  # starting, or between steps
    timed_out: list[DagsterRun] = field(default_factory=list)  # in a step after the timeout

    def describe(self) -> str:
        """E.g. "2 runs terminated, 1 queued run canceled", or "no runs in progress"."""
        kinds: list[tuple[list, str, str]] = [
            (self.terminated, "run", "terminated"),
            (self.canceled, "queued run", "canceled"),
            (self.idle, "run", "stopped with no step running"),
            (self.timed_out, "run", "killed after the wait"),
        ]
        parts = [f"{_count(len(runs), noun)} {what}" for runs, noun, what in kinds if runs]
        return ", ".join(parts) or "no runs in progress"


@dataclass
class StopReport:
    """What a stop of `up` stopped, for its final line."""

    began: float | None = None  # time.monotonic() of the signal, or of the end of the run
    runs: RunsStopped | None = None  # set once Dagster was stopped
    services: list[str] = field(default_factory=list)  # embedded services stopped

    def begin(self) -> None:
        if self.began is None:
            self.began = time.monotonic()

    def line(self, now: float | None = None) -> str | None:
        """One line, e.g. "stopped Dagster (2 runs terminated), the embedded PostgreSQL and
        broker in 6.2 s"; None when nothing was stopped."""
        stopped = [f"Dagster ({self.runs.describe()})"] if self.runs is not None else []
        names = [_SERVICE_NAMES[s] for s in ("postgres", "broker") if s in self.services]
        if names:
            stopped.append("the embedded " + " and ".join(names))
        if not stopped:
            return None
        seconds = (now if now is not None else time.monotonic()) - (self.began or 0.0)
        return f"stopped {', '.join(stopped)} in {seconds:.1f} s"


_SERVICE_NAMES = {"postgres": "PostgreSQL", "broker": "broker"}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _stop_services(services: LocalServices, report: StopReport) -> None:
    report.services = list(services.started)
    services.stop_started()


# -- configuration ----------------------------------------------------------------------------
def dagster_storage_url(
    settings: Settings, services: LocalServices, orchestration: OrchestrationSettings
) -> str:
    """Dagster's storage: DAGSTER_POSTGRES_URL, else the `dagster` database of the same server."""
    if orchestration.dagster_postgres_url:
        url = orchestration.dagster_postgres_url
    elif settings.database_url is None:
        url = services.postgres.ensure_database("dagster")
    else:
        url = _ensure_database(settings.database_url, "dagster")
    return url if url.startswith("postgresql+") else sqlalchemy_url(url, "psycopg2")


def _ensure_database(database_url: str, name: str) -> str:
    try:
        return ensure_database(database_url, name)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise UpError(
            f"cannot create database {name!r} for Dagster's storage ({exc}); create it or "
            "set DAGSTER_POSTGRES_URL"
        ) from None


def write_instance_config(home: Path, workers: int) -> None:
    """instance.yaml as home/dagster.yaml, the consumer run limit set to the configured workers."""
    config = yaml.safe_load(INSTANCE_CONFIG.read_text())
    runs = config["concurrency"]["runs"]
    for limit in runs["tag_concurrency_limits"]:
        if limit["key"] == ROLE_TAG and limit.get("value") == "consumer":
            limit["limit"] = workers
    runs["max_concurrent_runs"] = max(runs["max_concurrent_runs"], workers + 4)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def child_environment(
    settings: Settings, endpoints: Endpoints, home: Path, storage_url: str
) -> dict[str, str]:
    """The platform's settings as environment variables, services resolved to their endpoints.

    The Dagster processes, their code servers and runs read settings like the CLI does; with
    these they see the same topic, group and services, and start nothing themselves.
    """
    env = {**os.environ, **settings_environment(settings)}
    env.update(
        DATABASE_URL=endpoints.database_url,
        KAFKA_BOOTSTRAP_SERVERS=endpoints.bootstrap_servers,
        DAGSTER_HOME=str(home),
        DAGSTER_POSTGRES_URL=storage_url,
        HEARTBEAT_SUPERVISION_SINCE=str(time.time()),
    )
    return env


# -- processes --------------------------------------------------------------------------------
def _guard_broker(
    settings: Settings, services: LocalServices, endpoints: Endpoints,
    cleanup: contextlib.ExitStack,
) -> None:
    """The embedded broker keeps every message in memory: rotate its log at the limit
    (`local.rotation`), and finish a rotation an earlier `up` left half done. Apache
    Kafka (`--broker kafka`) keeps its log on disk and enforces retention: no rotation."""
    if settings.kafka_bootstrap_servers is not None or settings.heartbeat_local_broker == "kafka":
        return
    rotation = BrokerRotation(settings, services.broker, endpoints.database_url)
    guard = BrokerGuard(rotation, settings.heartbeat_broker_check_interval_s)
    guard.start()
    cleanup.callback(guard.stop)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if `up` itself is killed, so Dagster is not orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start_dagster(home: Path, port: int, env: dict[str, str]) -> dict[str, subprocess.Popen]:
    logs = home / "process-logs"  # not "logs": Dagster moves that folder away
    logs.mkdir(exist_ok=True)
    workspace = ["-w", str(config_file("workspace.yaml"))]
    commands = {
        "webserver": [sys.executable, "-m", "dagster_webserver", "-h", HOST, "-p", str(port),
                      *workspace],
        "daemon": [sys.executable, "-m", "dagster._daemon", "run", *workspace],
    }
    processes = {}
    for name, command in commands.items():
        with (logs / f"{name}.log").open("ab") as out:
            processes[name] = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,  # Ctrl-C reaches `up` only, which stops runs first
                preexec_fn=_die_with_parent,
            )
    return processes


def _wait_until_serving(url: str, processes: dict, stop: threading.Event) -> bool:
    while not stop.is_set():
        if any(p.poll() is not None for p in processes.values()):
            return False
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/server_info", timeout=2).ok:
                return True
        stop.wait(1.0)
    return False


def _launch_demo_producer(port: int, stop: threading.Event) -> None:
    """Launch the producer run once the code location has loaded (retrying until then)."""
    client = DagsterGraphQLClient(HOST, port_number=port)
    config = {"ops": {"produce_heartbeats": {"config": {"rate": DEMO_RATE}}}}
    deadline = time.monotonic() + 300
    while not stop.is_set():
        try:
            run_id = client.submit_job_execution(PRODUCER_JOB, run_config=config)
        except Exception as exc:  # noqa: BLE001 - the location may still be loading
            if time.monotonic() > deadline:
                print(f"could not launch the demo producer: {exc}", file=sys.stderr)
                return
            stop.wait(2.0)
        else:
            print(f"demo: producer run {run_id[:8]} sends {DEMO_RATE:.0f} readings/s")
            return


def _died(processes: dict[str, subprocess.Popen]) -> int:
    dead = [name for name, p in processes.items() if p.poll() is not None]
    print(f"error: Dagster {' and '.join(dead)} exited; see its log", file=sys.stderr)
    return 1


# -- runs -------------------------------------------------------------------------------------
def fail_orphaned_runs(instance: DagsterInstance) -> None:
    """Runs left 'in progress' by a session that died: their code server is gone, so nothing
    would ever finish them, and the supervisor would count a dead consumer as alive."""
    for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTING,
                                                      DagsterRunStatus.STARTED,
                                                      DagsterRunStatus.CANCELING])):
        if not _code_server_alive(run.tags.get(GRPC_INFO_TAG)):
            instance.report_run_failed(run, "the session that ran it ended without stopping it")


def _code_server_alive(grpc_info: str | None) -> bool:
    if not grpc_info:
        return False
    info = yaml.safe_load(grpc_info)  # JSON is YAML
    if info.get("socket"):
        return Path(info["socket"]).exists()
    return port_open(info.get("host") or "localhost", int(info["port"]))


def stop_runs(instance: DagsterInstance, timeout: float = 90.0) -> RunsStopped:
    """Terminate every unfinished run (and any the daemon starts meanwhile); wait, up to
    `timeout` seconds, for the runs that were inside a step to finish.

    A run with no op executing (still starting, or between steps) is asked too but not waited
    for: the processes of its next step may take tens of seconds to boot before they can
    notice (measured under load: 30 s of a 37 s stop), and it has nothing under way to finish
    cleanly. Those, and the runs still unfinished after `timeout`, are returned in `idle` and
    `timed_out`.
    """
    asked: set[str] = set()
    working: set[str] = set()  # seen inside a step: waited for until they finish
    stopped = RunsStopped()
    deadline = time.monotonic() + timeout
    while True:
        runs = instance.get_runs(RunsFilter(statuses=UNFINISHED))
        working |= {run.run_id for run in runs if _in_a_step(instance, run)}
        # those inside a step first: they take longest to stop (the consumer reports its
        # assets and checks as it closes)
        for run in sorted(runs, key=lambda run: run.run_id not in working):
            if run.run_id in asked or run.status is DagsterRunStatus.CANCELING:
                continue
            asked.add(run.run_id)
            if run.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED):
                instance.report_run_canceled(run, "heartbeat-platform up is stopping")
                stopped.canceled.append(run.run_id)
            else:
                with contextlib.suppress(Exception):  # its process may be gone already
                    instance.run_launcher.terminate(run.run_id)
        unfinished = {run.run_id for run in runs} - set(stopped.canceled)
        if not working & unfinished or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    for run in instance.get_runs(RunsFilter(statuses=UNFINISHED)):
        if run.run_id not in stopped.canceled:
            (stopped.timed_out if run.run_id in working else stopped.idle).append(run)
    left = {run.run_id for run in [*stopped.idle, *stopped.timed_out]}
    stopped.terminated = [
        run_id for run_id in asked if run_id not in left and run_id not in stopped.canceled
    ]
    return stopped


def _in_a_step(instance: DagsterInstance, run: DagsterRun) -> bool:
    """Is an op of the run executing (it may be writing, and stops cleanly when asked)?
    Not when its next step's process is still booting after the last one ended."""
    return any(
        step.status is StepEventStatus.IN_PROGRESS
        for step in instance.get_run_step_stats(run.run_id)
    )


def _shutdown(
    instance: DagsterInstance, processes: dict[str, subprocess.Popen], report: StopReport
) -> None:
    # The webserver runs no runs (the queue's daemon launches them all, from its own code
    # server): it stops meanwhile (seconds under load) instead of after them.
    _signal_group(processes["webserver"], signal.SIGTERM)
    runs = stop_runs(instance)
    _kill_run_processes(processes.values())
    _stop_groups(processes.values())
    for run, why in [
        *[(run, "no step was running; its process was stopped with up") for run in runs.idle],
        *[(run, "did not stop in time; its process was killed") for run in runs.timed_out],
    ]:
        now = instance.get_run_by_id(run.run_id)  # it may have ended by itself meanwhile
        if now is not None and now.status in UNFINISHED:
            instance.report_run_canceled(now, why)
    report.runs = runs


def _kill_run_processes(processes: Iterable[subprocess.Popen]) -> None:
    """SIGKILL what the code servers still run once `stop_runs` is done: the processes of runs
    with no op executing (or out of time). A code server waits for its runs before it exits,
    and they would first boot only to notice the termination (20 s under load, measured)."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            for server in psutil.Process(process.pid).children(recursive=True):
                if "grpc" not in server.cmdline():
                    continue
                for child in server.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if "resource_tracker" not in " ".join(child.cmdline()):
                            child.kill()


def _stop_groups(processes: Iterable[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM the process groups (the programs, their code servers, their runs) together,
    then SIGKILL those still alive after `timeout` seconds.

    Once a program itself has exited, what is left of its group (its code servers, which wait
    for a heartbeat that will not come: seconds) serves no one and is killed at once."""
    alive = list(processes)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in alive:
            _signal_group(process, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_group_alive(p) for p in alive):
            for process in alive:
                if process.poll() is not None:
                    _signal_group(process, signal.SIGKILL)
            time.sleep(0.2)
        alive = [p for p in alive if _group_alive(p)]
        if not alive:
            return


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _group_alive(process: subprocess.Popen) -> bool:
    process.poll()  # reap the leader
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- plumbing ---------------------------------------------------------------------------------
def _hold_lock(home: Path, cleanup: contextlib.ExitStack) -> None:
    lock = FileLock(str(home / "up.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UpError(
            f"`heartbeat-platform up` already runs for this state folder ({home.parent})"
        ) from None
    cleanup.callback(lock.release)


@contextlib.contextmanager
def _signals_set(stop: threading.Event, report: StopReport) -> Iterator[None]:
    def handler(_signum: int, _frame: object) -> None:
        report.begin()
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
