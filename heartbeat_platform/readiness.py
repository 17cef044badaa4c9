"""Bring the platform to a usable state, or check that it is in one.

`prepare()` is the setup (`init-db`, `up`, tests): services up, schema migrated, day
partitions and topic created; it needs a database role that may create tables and a
Kafka principal that may create topics. `ready()` is what the pipeline's commands and
Dagster's runs call: services up (embedded ones are started), schema current and topic
present, or an error that says to run `heartbeat-platform init-db`; it changes nothing,
so they run under a role with only the rights they use (see README, Security).
`running()` is what the read-only commands call (`status`, `alerts list`, `alerts tail`,
`alerts override list`): it starts nothing, and an embedded server that is not running is
an error that says what to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from heartbeat_platform.alerting.delivery import AlertingConfig
from heartbeat_platform.config import Settings
from heartbeat_platform.domain.generator import HeartbeatGenerator
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.services import Endpoints, LocalServices
from heartbeat_platform.storage.database import connect
from heartbeat_platform.storage.migrations import check_schema, migrate
from heartbeat_platform.storage.partitions import ensure_partitions
from heartbeat_platform.streaming.consumer_config import ConsumerConfig
from heartbeat_platform.streaming.producer import ProducerConfig
from heartbeat_platform.streaming.topics import ensure_topic, require_topic


class ServicesNotRunning(RuntimeError):
    """A read-only command found an embedded service stopped; it starts nothing."""


NOT_RUNNING_HINT = (
    "start it with `heartbeat-platform up` (or `heartbeat-platform init-db`, which leaves "
    "it running until `heartbeat-platform down`)"
)


def not_running_message(service: str, settings: Settings) -> str:
    """One line for a stopped embedded service: what is stopped and what to run."""
    return (
        f"the embedded {service} of {settings.heartbeat_state_dir} is not running and this "
        f"command starts nothing: {NOT_RUNNING_HINT}"
    )


@dataclass(frozen=True)
class Prepared:
    endpoints: Endpoints
    migrations_applied: list[str]
    topic_created: bool


def prepare(settings: Settings, services: LocalServices | None = None) -> Prepared:
    services = services or LocalServices(settings)
    endpoints = services.start()
    applied = migrate(endpoints.database_url)
    with connect(endpoints.database_url) as conn:
        ensure_partitions(conn, settings.retention, datetime.now(UTC))
    created = ensure_topic(
        endpoints.bootstrap_servers,
        settings.kafka_topic,
        partitions=settings.kafka_partitions,
        retention_ms=settings.kafka_retention_ms,
        overrides=settings.kafka_client_config,
    )
    return Prepared(endpoints, applied, created)


def ready(
    settings: Settings, services: LocalServices | None = None, *, topic: bool = True
) -> Endpoints:
    """The endpoints, once the schema is current and (with `topic`) the topic exists.

    Raises SchemaNotReady / TopicMissing, whose messages say to run `init-db`.
    """
    endpoints = (services or LocalServices(settings)).start()
    check_schema(endpoints.database_url)
    if topic:
        require_topic(
            endpoints.bootstrap_servers, settings.kafka_topic, settings.kafka_client_config
        )
    return endpoints


def running(settings: Settings, *, kafka: bool = False) -> Endpoints:
    """The endpoints of services already running (PostgreSQL's schema checked), starting
    nothing: for commands that only read. Raises ServicesNotRunning for an embedded
    PostgreSQL (or, with `kafka`, broker) that is stopped, SchemaNotReady like ready()."""
    endpoints = LocalServices(settings).current()
    if not endpoints.database_url:
        raise ServicesNotRunning(not_running_message("PostgreSQL", settings))
    if kafka and not endpoints.bootstrap_servers:
        raise ServicesNotRunning(not_running_message("broker", settings))
    check_schema(endpoints.database_url)
    return endpoints


def producer_config(settings: Settings, endpoints: Endpoints) -> ProducerConfig:
    """A producer of the embedded broker (of this state folder) joins its log rotations."""
    broker = EmbeddedBroker(settings.heartbeat_state_dir / "broker")
    return ProducerConfig(
        endpoints.bootstrap_servers, settings.kafka_topic,
        kafka_overrides=settings.kafka_client_config,
        rotation_dir=broker.root if broker.serves(endpoints.bootstrap_servers) else None,
    )


def consumer_config(settings: Settings, endpoints: Endpoints, **overrides: Any) -> ConsumerConfig:
    values: dict[str, Any] = {
        "bootstrap_servers": endpoints.bootstrap_servers,
        "database_url": endpoints.database_url,
        "topic": settings.kafka_topic,
        "group_id": settings.kafka_group_id,
        "batch_size": settings.heartbeat_consume_batch_size,
        "group_protocol": settings.kafka_group_protocol,
        "assignment_strategy": settings.kafka_assignment_strategy,
        "max_message_bytes": settings.heartbeat_max_message_bytes,
        "stats_every": settings.heartbeat_stats_every,
        "retention": settings.retention,
        "kafka_overrides": settings.kafka_client_config,
        "alerting": alerting_config(settings),
    }
    values.update(overrides)
    return ConsumerConfig(**values)


def alerting_config(settings: Settings) -> AlertingConfig:
    return AlertingConfig(
        rules=settings.alert_rules,
        webhook_urls=settings.webhook_urls,
        escalation_urls=settings.escalation_urls,
        escalate_after_s=settings.heartbeat_escalate_after_s,
        give_up_s=settings.heartbeat_alert_give_up_s,
    )


def generator(settings: Settings, seed: int | None = None) -> HeartbeatGenerator:
    return HeartbeatGenerator(
        customer_count=settings.heartbeat_customer_count,
        anomaly_rate=settings.heartbeat_anomaly_rate,
        fault_rate=settings.heartbeat_fault_rate,
        seed=seed,
    )
