"""Bring the platform to a usable state: services up, schema and partitions, topic created.

Every entry point (CLI commands, Dagster, tests) calls `prepare()` first, so whichever
starts first leaves the platform ready for the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from heartbeat_platform.config import Settings
from heartbeat_platform.domain.generator import HeartbeatGenerator
from heartbeat_platform.local.services import Endpoints, LocalServices
from heartbeat_platform.storage.database import connect
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.storage.partitions import ensure_partitions
from heartbeat_platform.streaming.consumer import ConsumerConfig
from heartbeat_platform.streaming.producer import ProducerConfig
from heartbeat_platform.streaming.topics import ensure_topic


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
    )
    return Prepared(endpoints, applied, created)


def producer_config(settings: Settings, endpoints: Endpoints) -> ProducerConfig:
    return ProducerConfig(endpoints.bootstrap_servers, settings.kafka_topic)


def consumer_config(settings: Settings, endpoints: Endpoints, **overrides) -> ConsumerConfig:
    values = {
        "bootstrap_servers": endpoints.bootstrap_servers,
        "database_url": endpoints.database_url,
        "topic": settings.kafka_topic,
        "group_id": settings.kafka_group_id,
        "batch_size": settings.heartbeat_consume_batch_size,
        "stats_every": settings.heartbeat_stats_every,
        "retention": settings.retention,
    }
    values.update(overrides)
    return ConsumerConfig(**values)


def generator(settings: Settings, seed: int | None = None) -> HeartbeatGenerator:
    return HeartbeatGenerator(
        customer_count=settings.heartbeat_customer_count,
        anomaly_rate=settings.heartbeat_anomaly_rate,
        fault_rate=settings.heartbeat_fault_rate,
        seed=seed,
    )
