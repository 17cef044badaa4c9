"""Session-wide real services: one embedded PostgreSQL and one embedded broker per test run.

Started on free loopback ports in a temp folder, through the same classes the platform
uses, and shared by every integration test. Factory fixtures hand each test its own
database and topic so tests never see each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from heartbeat_platform.config import Settings, load_settings
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.postgres import EmbeddedPostgres
from heartbeat_platform.local.services import Endpoints


@pytest.fixture(scope="session")
def embedded_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("services") / "postgres")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(tmp_path_factory.mktemp("services") / "broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def services(embedded_postgres: EmbeddedPostgres, embedded_broker: EmbeddedBroker) -> Endpoints:
    return Endpoints(embedded_postgres.url(), embedded_broker.bootstrap_servers)


@pytest.fixture
def database_factory(embedded_postgres: EmbeddedPostgres) -> Callable[[], str]:
    """Make an empty database of its own for a test; returns its URL."""

    def make() -> str:
        return embedded_postgres.ensure_database(f"test_{uuid.uuid4().hex[:12]}")

    return make


@pytest.fixture
def database_url(database_factory: Callable[[], str]) -> str:
    return database_factory()


@pytest.fixture
def topic_name() -> str:
    return f"heartbeat-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings_factory(
    services: Endpoints, tmp_path: Path, topic_name: str
) -> Callable[..., Settings]:
    """Settings pointing at the session's services, a test's topic and database."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": services.database_url,
            "kafka_bootstrap_servers": services.bootstrap_servers,
            "kafka_topic": topic_name,
            # a group of its own too: on the embedded broker a group whose members were
            # killed mid-test can stall the next test's join for minutes
            "kafka_group_id": f"group-{topic_name}",
            "heartbeat_state_dir": tmp_path / "state",
            "_env_file": None,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn
