"""Dagster resources for PostgreSQL and Kafka: where the services are, as resource fields.

The fields say which services a run uses: `database_url`, `bootstrap_servers`, `topic`,
`group_id`. The definitions bind them to the environment with `dg.EnvVar` (DATABASE_URL,
KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC, KAFKA_GROUP_ID) when those are set, so the UI shows
a variable's name, never a password; every other knob (batch size, retention, TLS
properties) comes from the same settings object as the CLI (environment / `.env`). Tests
pass the fields directly.

Nothing happens on attribute access or when the code location loads. When Dagster sets a
resource up for a run, sensor or schedule (`setup_for_execution`), it checks the platform
like the pipeline's CLI commands do (services reachable, schema current, topic present),
once per process, and changes nothing on configured services: `heartbeat-platform up` (or
`init-db`) did the setup, so runs can use a role without the right to change the schema.

With no database URL and no bootstrap servers (plain `dagster dev` in a fresh clone),
both services are the embedded ones of the state folder, and that set-up step starts them
and applies the schema and creates the topic (`readiness.prepare`), which is ours to do
there. `set_up_embedded=False` turns that off.
"""

from __future__ import annotations

import functools
import logging
import os

import dagster as dg
import psycopg
from pydantic import Field, PrivateAttr, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from heartbeat_platform import readiness
from heartbeat_platform.config import Settings, load_settings
from heartbeat_platform.local.services import Endpoints
from heartbeat_platform.storage.database import connect
from heartbeat_platform.streaming.consumer_config import ConsumerConfig
from heartbeat_platform.streaming.lag import PartitionLag, consumer_lag
from heartbeat_platform.streaming.producer import ProducerConfig

log = logging.getLogger(__name__)


class OrchestrationSettings(BaseSettings):
    """Knobs of the control room only; the platform's own live in `config.Settings`."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    heartbeat_consumer_workers: int = Field(
        default=1, ge=1, description="consumer runs the supervisor keeps alive in one group"
    )
    dagster_postgres_url: str | None = Field(
        default=None,
        description="Dagster's run/event/schedule storage; unset: the `dagster` database of "
        "the platform's PostgreSQL server",
    )
    heartbeat_supervision_since: float | None = Field(
        default=None,
        description="epoch seconds; operator terminations of runs created before it are "
        "forgotten (set by `heartbeat-platform up` so each start resumes supervision)",
    )


def settings_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that give another process (Dagster's) exactly these settings."""
    return {
        name.upper(): value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        for name, value in settings.model_dump().items()
        if value is not None
    }


def consumer_workers(settings: Settings) -> int:
    """Configured workers, at most one per partition (more would sit idle in the group)."""
    wanted = OrchestrationSettings().heartbeat_consumer_workers
    if wanted > settings.kafka_partitions:
        log.warning(
            "HEARTBEAT_CONSUMER_WORKERS=%d exceeds the %d partitions of %s; using %d",
            wanted, settings.kafka_partitions, settings.kafka_topic, settings.kafka_partitions,
        )
    return min(wanted, settings.kafka_partitions)


def _endpoints(settings: Settings, set_up_embedded: bool, topic: bool) -> Endpoints:
    """The services, prepared (all embedded and set-up on) or checked."""
    all_embedded = settings.database_url is None and settings.kafka_bootstrap_servers is None
    if set_up_embedded and all_embedded:
        return _prepared(settings)
    return _checked(settings, topic)


@functools.lru_cache(maxsize=8)
def _prepared(settings: Settings) -> Endpoints:
    return readiness.prepare(settings).endpoints


@functools.lru_cache(maxsize=8)
def _checked(settings: Settings, topic: bool) -> Endpoints:
    return readiness.ready(settings, topic=topic)


class _PlatformResource(dg.ConfigurableResource):
    set_up_embedded: bool = Field(
        default=True,
        description="with no database URL and no bootstrap servers, set-up starts the "
        "embedded services, applies the schema and creates the topic (otherwise it only "
        "checks them)",
    )
    _endpoints: Endpoints | None = PrivateAttr(default=None)

    def settings(self) -> Settings:
        """The platform's settings with this resource's fields in force."""
        return load_settings(**self._settings_overrides())

    def _settings_overrides(self) -> dict[str, object]:
        return {}

    def _needs_topic(self) -> bool:
        return True

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._endpoints = _endpoints(self.settings(), self.set_up_embedded, self._needs_topic())

    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            raise dg.DagsterInvariantViolationError(
                f"{type(self).__name__} is used outside Dagster's set-up: give it a run or "
                "a sensor, or build it with dg.build_resources"
            )
        return self._endpoints


def _present(**fields: str | None) -> dict[str, object]:
    return {name: value for name, value in fields.items() if value is not None}


class PostgresResource(_PlatformResource):
    """The platform's PostgreSQL (DATABASE_URL, or the embedded server), schema current."""

    database_url: str | None = Field(
        default=None, description="postgresql://... ; unset: the embedded server"
    )

    def _settings_overrides(self) -> dict[str, object]:
        return _present(database_url=self.database_url)

    def _needs_topic(self) -> bool:
        return False

    @property
    def url(self) -> str:
        return self.endpoints().database_url

    def connect(self) -> psycopg.Connection:
        """An autocommit connection; use `with conn.transaction()` for multi-statement work."""
        return connect(self.url, autocommit=True)


class KafkaResource(_PlatformResource):
    """The platform's Kafka (bootstrap servers, or the embedded broker), topic present."""

    bootstrap_servers: str | None = Field(
        default=None, description="host:port,... ; unset: the embedded broker"
    )
    topic: str | None = Field(default=None, description="unset: KAFKA_TOPIC's default")
    group_id: str | None = Field(default=None, description="unset: KAFKA_GROUP_ID's default")
    database_url: str | None = Field(
        default=None,
        description="where the consumer stores readings and its progress (lag reads it); "
        "unset: DATABASE_URL or the embedded server",
    )

    def _settings_overrides(self) -> dict[str, object]:
        return _present(
            kafka_bootstrap_servers=self.bootstrap_servers, kafka_topic=self.topic,
            kafka_group_id=self.group_id, database_url=self.database_url,
        )

    def producer_config(self) -> ProducerConfig:
        return readiness.producer_config(self.settings(), self.endpoints())

    def consumer_config(self, **overrides: object) -> ConsumerConfig:
        return readiness.consumer_config(self.settings(), self.endpoints(), **overrides)

    def embedded_broker_memory(self) -> int | None:
        """RSS in bytes of the embedded broker these settings use; None: another Kafka."""
        from heartbeat_platform.local.broker import EmbeddedBroker
        from heartbeat_platform.local.rotation import broker_memory

        settings = self.settings()
        broker = EmbeddedBroker(settings.heartbeat_state_dir / "broker")
        return broker_memory(broker) if broker.serves(self.endpoints().bootstrap_servers) else None

    def lag(self) -> list[PartitionLag]:
        """Per-partition lag of the consumer group: log end minus the progress in PostgreSQL."""
        settings, endpoints = self.settings(), self.endpoints()
        return consumer_lag(
            endpoints.bootstrap_servers, endpoints.database_url,
            settings.kafka_topic, settings.kafka_group_id,
            kafka_overrides=settings.kafka_client_config,
        )


def _from_environment(name: str) -> dg.EnvVar | None:
    """The variable, read by Dagster in each process, when it is set; None otherwise."""
    return dg.EnvVar(name) if os.environ.get(name) else None


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "postgres": PostgresResource(database_url=_from_environment("DATABASE_URL")),
            "kafka": KafkaResource(
                bootstrap_servers=_from_environment("KAFKA_BOOTSTRAP_SERVERS"),
                topic=_from_environment("KAFKA_TOPIC"),
                group_id=_from_environment("KAFKA_GROUP_ID"),
                database_url=_from_environment("DATABASE_URL"),
            ),
        }
    )
