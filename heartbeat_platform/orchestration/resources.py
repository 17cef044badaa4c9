"""Dagster resources for PostgreSQL and Kafka, built from the same settings as the CLI.

Settings are read when a run, sensor or schedule uses them (environment / `.env`, exactly
as `heartbeat-platform` reads them), never when the code location loads: loading the
definitions starts nothing. The first use in a process checks the platform like the
pipeline's CLI commands do (services reachable, schema current, topic present) and, on
configured services, changes nothing: `heartbeat-platform up` (or `init-db`) did the setup,
so runs can use a role without the right to change the schema or create topics.

With neither DATABASE_URL nor KAFKA_BOOTSTRAP_SERVERS set (plain `dagster dev` in a fresh
clone), both services are the embedded ones of the state folder: the first use starts them
and does the setup (`readiness.prepare`: schema, day partitions, topic), which is ours to
do there. `set_up_embedded=False` turns that off.
"""

from __future__ import annotations

import functools
import logging

import dagster as dg
import psycopg
from pydantic import Field, SecretStr
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


@functools.lru_cache(maxsize=8)
def _database_url(settings: Settings, set_up_embedded: bool) -> str:
    if set_up_embedded and _all_embedded(settings):
        return _endpoints(settings, set_up_embedded).database_url
    return readiness.ready(settings, topic=False).database_url


@functools.lru_cache(maxsize=8)
def _endpoints(settings: Settings, set_up_embedded: bool) -> Endpoints:
    if set_up_embedded and _all_embedded(settings):
        return readiness.prepare(settings).endpoints
    return readiness.ready(settings)


def _all_embedded(settings: Settings) -> bool:
    return settings.database_url is None and settings.kafka_bootstrap_servers is None


class _PlatformResource(dg.ConfigurableResource):
    set_up_embedded: bool = Field(
        default=True,
        description="with no DATABASE_URL and no KAFKA_BOOTSTRAP_SERVERS, the first use "
        "starts the embedded services and applies the schema and creates the topic "
        "(otherwise it only checks them)",
    )

    def settings(self) -> Settings:
        return load_settings()


class PostgresResource(_PlatformResource):
    """The platform's PostgreSQL (DATABASE_URL, or the embedded server), schema current."""

    @property
    def url(self) -> str:
        return _database_url(self.settings(), self.set_up_embedded)

    def connect(self) -> psycopg.Connection:
        """An autocommit connection; use `with conn.transaction()` for multi-statement work."""
        return connect(self.url, autocommit=True)


class KafkaResource(_PlatformResource):
    """The platform's Kafka (KAFKA_BOOTSTRAP_SERVERS, or the embedded broker), topic present."""

    @property
    def topic(self) -> str:
        return self.settings().kafka_topic

    def producer_config(self) -> ProducerConfig:
        settings = self.settings()
        return readiness.producer_config(settings, _endpoints(settings, self.set_up_embedded))

    def consumer_config(self, **overrides: object) -> ConsumerConfig:
        settings = self.settings()
        endpoints = _endpoints(settings, self.set_up_embedded)
        return readiness.consumer_config(settings, endpoints, **overrides)

    def embedded_broker_memory(self) -> int | None:
        """RSS in bytes of the embedded broker these settings use; None: another Kafka."""
        from heartbeat_platform.local.broker import EmbeddedBroker
        from heartbeat_platform.local.rotation import broker_memory

        settings = self.settings()
        endpoints = _endpoints(settings, self.set_up_embedded)
        broker = EmbeddedBroker(settings.heartbeat_state_dir / "broker")
        return broker_memory(broker) if broker.serves(endpoints.bootstrap_servers) else None

    def lag(self) -> list[PartitionLag]:
        """Per-partition lag of the consumer group: log end minus the progress in PostgreSQL."""
        settings = self.settings()
        endpoints = _endpoints(settings, self.set_up_embedded)
        return consumer_lag(
            endpoints.bootstrap_servers, endpoints.database_url,
            settings.kafka_topic, settings.kafka_group_id,
            kafka_overrides=settings.kafka_client_config,
        )
