"""The consumer's settings and the librdkafka configuration built from them.

Kept apart from the loop so the group-protocol rules (what KIP-848 refuses, when the
assignment is incremental) are checked without a client or a broker.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from heartbeat_platform.alerting.config import AlertingConfig
from heartbeat_platform.domain.alerts import STATS_EVERY
from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.streaming.kafka_config import refuse_broken_guarantees
from heartbeat_platform.streaming.quiet_log import client_logger

GROUP_PROTOCOLS = ("classic", "consumer")
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576  # larger messages are dead letters (README)


@dataclass
class ConsumerConfig:
    bootstrap_servers: str
    database_url: str
    topic: str
    group_id: str
    batch_size: int = 20_000
    max_wait_s: float = 0.1  # how long a partial batch waits: bounds end-to-end latency
    stats_every: int = STATS_EVERY
    session_timeout_ms: int = 6_000  # the embedded broker's group join waits half of this
    # "classic" (JoinGroup/SyncGroup, with `assignment_strategy`) or "consumer" (KIP-848:
    # the broker assigns, incrementally; Kafka 4.0+).
    group_protocol: str = "classic"
    assignment_strategy: str = "cooperative-sticky"  # classic protocol only
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # larger messages are dead letters
    # Memory the client may hold: fetched per request, and prefetched per partition queue.
    # Bounded in compressed bytes; a batch is at most `batch_size` messages once decoded.
    fetch_max_bytes: int = 16 * 1024 * 1024
    queued_max_kbytes: int = 32 * 1024
    kafka_overrides: dict = field(default_factory=dict)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    partition_check_every_s: float = 3600.0  # day partitions ensured at start, then this often
    topic_check_s: float = 15.0  # how often the topic's id is asked (was it created again?)
    # alert episodes in each batch's transaction, and their delivery to webhooks (None: off)
    alerting: AlertingConfig | None = None
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{threading.get_ident()}")


def client_settings(c: ConsumerConfig, error_cb: Callable | None = None) -> dict:
    """The librdkafka configuration of the consumer, `kafka_overrides` last.

    KIP-848 refuses the classic protocol's session, heartbeat and assignor settings (the
    broker owns them), so they are only set for the classic protocol. An override that
    would break a guarantee (offset handling, the group, its protocol: `kafka_config.GUARDS`)
    raises KafkaConfigError; Settings refuses those keys when it loads them already.
    """
    if c.group_protocol not in GROUP_PROTOCOLS:
        raise ValueError(
            f"group protocol must be one of {GROUP_PROTOCOLS}, got {c.group_protocol!r}"
        )
    refuse_broken_guarantees(c.kafka_overrides, "the consumer's Kafka overrides", c.group_protocol)
    settings: dict = {
        "bootstrap.servers": c.bootstrap_servers,
        "group.id": c.group_id,
        "client.id": c.name,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",  # out-of-range must reach us, not be papered over
        # A fetch that finds no new data returns after 100 ms, not the default 500:
        # it bounds how long a reading waits at the broker when the stream is slow.
        "fetch.wait.max.ms": 100,
        "fetch.max.bytes": c.fetch_max_bytes,
        "receive.message.max.bytes": c.fetch_max_bytes + 1024 * 1024,
        "max.partition.fetch.bytes": min(c.fetch_max_bytes, max(c.max_message_bytes, 1 << 20)),
        "queued.max.messages.kbytes": c.queued_max_kbytes,
    }
    if c.group_protocol == "consumer":
        settings["group.protocol"] = "consumer"
    else:
        settings.update({
            "session.timeout.ms": c.session_timeout_ms,
            "heartbeat.interval.ms": max(1000, c.session_timeout_ms // 3),
            "partition.assignment.strategy": c.assignment_strategy,
        })
    if error_cb is not None:
        settings["error_cb"] = error_cb
    settings["logger"] = client_logger()
    settings.update(c.kafka_overrides)
    return settings


def assigns_incrementally(settings: dict) -> bool:
    """True when rebalances hand over only the partitions that move (cooperative, KIP-848)."""
    if str(settings.get("group.protocol", "classic")).lower() == "consumer":
        return True
    return "cooperative-sticky" in str(settings.get("partition.assignment.strategy", ""))


def no_assignment_hint(settings: dict) -> str:
    """Why a member may get no partitions: silence is what a broker without KIP-848 gives
    a `consumer`-protocol member."""
    if settings.get("group.protocol") == "consumer":
        return ("; group.protocol=consumer needs KIP-848 on the broker (Apache Kafka 4.0+; "
                "the embedded broker has none): with an older broker set "
                "KAFKA_GROUP_PROTOCOL=classic")
    return " (the group may have more members than the topic has partitions)"
