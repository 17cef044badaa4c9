"""The bench's own database, topics and consumer groups on the prepared services.

Each stage gets a topic and a group of its own, so no stage reads another's events or
resumes another's progress; the database is recreated per run, so table sizes compare.
"""

from __future__ import annotations

import uuid

from heartbeat_platform.config import Settings
from heartbeat_platform.local.services import Endpoints
from heartbeat_platform.storage.database import connect, ensure_database
from heartbeat_platform.storage.migrations import migrate
from heartbeat_platform.streaming.topics import ensure_topic

BENCH_DATABASE = "heartbeat_bench"


def fresh_database(database_url: str, name: str = BENCH_DATABASE) -> str:
    """The bench database `name`, recreated on the same server so table sizes compare; its
    URL."""
    url = ensure_database(database_url, name, recreate=True)
    migrate(url)
    return url


def drop_database(database_url: str, name: str) -> None:
    """Database `name` on `database_url`'s server gone (if it was there)."""
    with connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def endpoints(settings: Settings) -> Endpoints:
    """The concrete services of the bench's settings (`run_bench` sets both from
    `readiness.prepare(...).endpoints`); an error if either is unset."""
    if settings.database_url is None or settings.kafka_bootstrap_servers is None:
        raise ValueError(
            "bench settings need DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS set to the "
            "prepared services (readiness.prepare(...).endpoints)"
        )
    return Endpoints(settings.database_url, settings.kafka_bootstrap_servers)


def new_topic(settings: Settings) -> str:
    """A topic of the settings' partitions that no earlier stage or run has written to."""
    name = f"heartbeat-bench-{uuid.uuid4().hex[:8]}"
    ensure_topic(endpoints(settings).bootstrap_servers, name, settings.kafka_partitions,
                 overrides=settings.kafka_client_config)
    return name


def on_topic(settings: Settings, topic: str) -> Settings:
    """The bench's settings for one stage: its own topic and consumer group."""
    return settings.model_copy(
        update={"kafka_topic": topic, "kafka_group_id": f"bench-{uuid.uuid4().hex[:8]}"}
    )
