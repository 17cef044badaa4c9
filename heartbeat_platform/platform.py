"""Bring the platform to a usable state: services up, schema applied, topic created.

Every entry point (CLI commands, Dagster, tests) calls `prepare()` first, so whichever
starts first leaves the platform ready for the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from heartbeat_platform.config import Settings
from heartbeat_platform.local.services import Endpoints, LocalServices
from heartbeat_platform.storage.migrations import migrate
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
    created = ensure_topic(
        endpoints.bootstrap_servers,
        settings.kafka_topic,
        partitions=settings.kafka_partitions,
        retention_ms=settings.kafka_retention_ms,
    )
    return Prepared(endpoints, applied, created)
