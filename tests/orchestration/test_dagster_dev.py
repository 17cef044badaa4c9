"""A Dagster user's first command: `dagster dev` in the repository, nothing set.

It runs in a folder holding the repository's root files (dagster.yaml, pyproject.toml,
workspace.yaml: a fresh clone after `pip install -e .`, without a developer's .env or
.heartbeat), with no DAGSTER_HOME, DATABASE_URL or KAFKA_BOOTSTRAP_SERVERS and the state
folder in tmp. Dagster keeps its runs in its local default storage; the definitions start
the embedded PostgreSQL and broker on first use and set them up, so the supervised consumer
run comes up by itself. Stopping leaves no process behind.

Slow (a minute or two on two cores): the daemon launches the consumer, which starts both
embedded services and applies the schema.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import yaml

from heartbeat_platform.config import Settings
from heartbeat_platform.definitions import defs
from heartbeat_platform.launcher import INSTANCE_CONFIG
from heartbeat_platform.local.process import free_port
from heartbeat_platform.local.services import LocalServices
from heartbeat_platform.storage.migrations import check_schema

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_FILES = ("dagster.yaml", "pyproject.toml", "workspace.yaml")
LOCATION = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
  name location { name } jobs { name } assetNodes { assetKey { path } } } } } }"""
CONSUMER_RUNS = """{ runsOrError(filter: {pipelineName: "heartbeat_consumer"}) {
  ... on Runs { results { runId status } } } }"""
UNFINISHED_RUNS = """{ runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED]}) {
  ... on Runs { results { runId status } } } }"""
TERMINATE = """mutation($runId: String!) { terminateRun(runId: $runId) { __typename } }"""
INSTANCE = "{ instance { info } }"


def test_the_root_dagster_yaml_is_the_deployed_instance_without_its_storage() -> None:
    """`dagster dev` gets the same queue, consumer limit and run monitoring as `up`/compose."""
    dev = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    deployed = yaml.safe_load(INSTANCE_CONFIG.read_text())
    storage = deployed.pop("storage")
    assert storage == {"postgres": {"postgres_url": {"env": "DAGSTER_POSTGRES_URL"}}}
    assert "storage" not in dev  # Dagster's local default: nothing to set
    assert dev == deployed


def wait_for(condition: Callable[[], Any], timeout: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except requests.RequestException:
            result = None
        if result:
            return result
        time.sleep(2.0)
    pytest.fail(f"timed out waiting for {what}; dagster dev said:\n{log.read_text()[-4000:]}")


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    folder = tmp_path / "clone"
    folder.mkdir()
    for name in ROOT_FILES:
        shutil.copy(REPO_ROOT / name, folder / name)
    return folder


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    # what `heartbeat-platform down` does: the embedded services outlive the runs by design
    local_services(state).stop_all()


def local_services(state_dir: Path) -> LocalServices:
    """The embedded services of that state folder, whatever this test process's env says."""
    return LocalServices(Settings(
        _env_file=None, heartbeat_state_dir=state_dir,
        database_url=None, kafka_bootstrap_servers=None,
    ))


@pytest.mark.dagster
@pytest.mark.postgres  # the definitions start the embedded services
@pytest.mark.broker
def test_dagster_dev_in_a_fresh_clone_serves_the_platform(clone: Path, state_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        name: value for name, value in os.environ.items()
        if not name.startswith(("DAGSTER_", "HEARTBEAT_", "KAFKA_", "POSTGRES"))
        and name != "DATABASE_URL"
    }
    env["HEARTBEAT_STATE_DIR"] = str(state_dir)
    log = clone.parent / "dagster-dev.log"
    dagster = Path(sys.executable).with_name("dagster")
    with log.open("wb") as out, _sigint_at_default_in_children():
        process = subprocess.Popen(
            [str(dagster), "dev", "--host", "127.0.0.1", "--port", str(port)],
            cwd=clone, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        )
    spawned: set[psutil.Process] = set()

    def query(text: str, **variables: Any) -> dict:
        response = requests.post(
            f"{url}/graphql", json={"query": text, "variables": variables}, timeout=30
        )
        response.raise_for_status()
        return response.json()["data"]

    def consumer_runs() -> list[dict]:
        spawned.update(psutil.Process(process.pid).children(recursive=True))
        return query(CONSUMER_RUNS)["runsOrError"]["results"]

    try:
        wait_for(lambda: requests.get(f"{url}/server_info", timeout=5).ok, 180,
                 "the webserver", log)

        def location() -> dict | None:
            nodes = query(LOCATION)["repositoriesOrError"].get("nodes")
            return nodes[0] if nodes else None

        repository = wait_for(location, 180, "the code location", log)
        assert repository["location"]["name"] == "heartbeat_platform"
        jobs = {job["name"] for job in repository["jobs"]}
        assert {job.name for job in defs.resolve_all_job_defs()} <= jobs
        assets = {"/".join(node["assetKey"]["path"]) for node in repository["assetNodes"]}
        assert {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()
                } <= assets
        info = query(INSTANCE)["instance"]["info"]
        # the root dagster.yaml: Dagster's local storage, the consumer limit of `up`
        assert "run_storage: SqliteRunStorage" in info and "key: heartbeat/role" in info

        # The supervisor launches the consumer; its first use of the resources starts the
        # embedded services of the state folder and applies the schema.
        started = wait_for(
            lambda: [r for r in consumer_runs() if r["status"] == "STARTED"], 300,
            "a running consumer", log,
        )
        services = local_services(state_dir)

        def schema_ready() -> bool:
            database_url = services.current().database_url
            if not database_url:
                return False
            try:
                check_schema(database_url)
            except Exception:  # noqa: BLE001 - still migrating
                return False
            return True

        wait_for(schema_ready, 180, "the embedded database's schema", log)
        assert services.current().bootstrap_servers

        # Stopping `dagster dev` does not stop its runs (README "The control room"): terminate
        # first the consumer and any scheduled run in flight (no_signal runs every minute).
        for run in started:
            query(TERMINATE, runId=run["runId"])
        wait_for(
            lambda: all(r["status"] in ("CANCELED", "FAILURE", "SUCCESS")
                        for r in consumer_runs()),
            120, "the consumer run to stop", log,
        )
        for run in query(UNFINISHED_RUNS)["runsOrError"]["results"]:
            query(TERMINATE, runId=run["runId"])
        wait_for(lambda: not query(UNFINISHED_RUNS)["runsOrError"]["results"], 120,
                 "every run to finish", log)
    finally:
        spawned.update(_descendants(process.pid))
        with suppress(ProcessLookupError, psutil.Error):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            still = _command_lines([process.pid, *(p.pid for p in _descendants(process.pid))])
            with suppress(ProcessLookupError, psutil.Error):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            pytest.fail(f"dagster dev did not stop within 90 s of SIGINT; still running: {still}")
    # Every process of dagster dev's session ends; the embedded servers run in sessions of
    # their own (they outlive runs by design) and the state_dir fixture stops them.
    _, alive = psutil.wait_procs([p for p in spawned if _session(p) == process.pid], timeout=30)
    for leftover in alive:
        leftover.kill()
    assert not alive, [p.pid for p in alive]
    # Not asserted: that Dagster removed its temporary home. A scheduled run still finishing
    # at the SIGINT (pipeline_health runs every minute) writes into it after dagster dev
    # removed it (seen once in CI); that cleanup is Dagster's, not the platform's.


@contextmanager
def _sigint_at_default_in_children() -> Iterator[None]:
    """Start children with SIGINT at its default action, whatever this process inherited.

    A script that starts pytest in the background (as CI runners may) has it ignore SIGINT,
    and its children inherit that. Dagster then ignores SIGTERM too (`setup_interrupt_handlers`
    copies SIGINT's disposition to SIGTERM): `dagster dev`, its webserver and code servers
    stop only on SIGKILL, which is how this test hung in CI. A signal with a handler is reset
    to its default at exec, so a handler here, for the Popen call, gives children the default.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _command_lines(pids: list[int]) -> list[str]:
    lines = []
    for pid in pids:
        try:
            lines.append(" ".join(psutil.Process(pid).cmdline())[:160])
        except psutil.Error:
            continue
    return lines


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _session(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except ProcessLookupError:
        return None
