"""Create the heartbeat topic idempotently, describe it, check that it is there.

The topic must exist before anything produces to it: Tansu would otherwise auto-create
it with 4 partitions, and real Kafka with the broker default. Only `init-db` (and `up`)
create it; the other commands check for it (`require_topic`), so they need no right to
create topics. Every function takes `overrides`: the cluster's client settings (TLS,
SASL; `Settings.kafka_client_config`), merged over the admin client's own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 10


class BrokerUnavailable(RuntimeError):
    """The broker did not answer in time."""


class TopicMissing(RuntimeError):
    """The topic does not exist; `heartbeat-platform init-db` creates it."""


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int


def admin_client(bootstrap_servers: str, overrides: dict | None = None) -> AdminClient:
    """An admin client whose librdkafka log goes to Python logging (quiet by default): a
    broker it cannot reach gives one clear error, not a line per reconnect on stderr."""
    return AdminClient(
        {"bootstrap.servers": bootstrap_servers, "socket.timeout.ms": 5000, **(overrides or {})},
        logger=log,
    )


def topic_id(bootstrap_servers: str, topic: str, overrides: dict | None = None) -> str | None:
    """The broker's id of the topic (it changes when the topic is created again), or None
    when the topic is missing, the broker does not give ids, or it did not answer."""
    admin = admin_client(bootstrap_servers, overrides)  # must outlive the request
    futures = admin.describe_topics(TopicCollection([topic]), request_timeout=ADMIN_TIMEOUT_S)
    try:
        found = futures[topic].result()
    except KafkaException as exc:
        log.warning("could not read the id of topic %s: %s", topic, exc.args[0].str())
        return None
    text = str(found.topic_id) if found.topic_id is not None else ""
    return None if text.strip("A=") == "" else text  # all zeros: the broker has no ids


def describe_topic(
    bootstrap_servers: str, topic: str, overrides: dict | None = None
) -> TopicInfo | None:
    """The topic and its partition count, or None when it does not exist.

    Asks for all topics: a metadata request naming the topic can auto-create it.
    """
    try:
        metadata = admin_client(bootstrap_servers, overrides).list_topics(
            timeout=ADMIN_TIMEOUT_S
        )
    except KafkaException as exc:
        hint = ""
        if (overrides or {}).get("security.protocol", "PLAINTEXT").upper() == "PLAINTEXT":
            hint = (" (connected without TLS or SASL: if the cluster needs them, name its "
                    "client.properties in KAFKA_CLIENT_PROPERTIES)")
        error = exc.args[0] if exc.args else exc
        text = error.str() if isinstance(error, KafkaError) else str(error)
        raise BrokerUnavailable(
            f"Kafka at {bootstrap_servers} did not answer: {text}{hint}"
        ) from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return TopicInfo(topic, len(found.partitions))


def require_topic(
    bootstrap_servers: str, topic: str, overrides: dict | None = None
) -> TopicInfo:
    """The topic, or TopicMissing telling the user to create it with `init-db`."""
    info = describe_topic(bootstrap_servers, topic, overrides)
    if info is None:
        raise TopicMissing(
            f"topic {topic!r} does not exist on Kafka at {bootstrap_servers}: create it with "
            "`heartbeat-platform init-db` (as a principal allowed to create topics)"
        )
    return info


def ensure_topic(
    bootstrap_servers: str,
    topic: str,
    partitions: int = 3,
    retention_ms: int = 86_400_000,
    overrides: dict | None = None,
) -> bool:
    """Create the topic if missing; True when this call created it.

    An existing topic is left as it is; a partition count other than asked is logged, since
    adding partitions would move customers to other partitions and break their ordering.
    """
    admin = admin_client(bootstrap_servers, overrides)  # must outlive the future
    future = admin.create_topics(
        [
            NewTopic(
                topic,
                num_partitions=partitions,
                replication_factor=-1,  # the broker's default: 1 locally, 3 on a real cluster
                config={"retention.ms": str(retention_ms)},
            )
        ],
        request_timeout=ADMIN_TIMEOUT_S,
    )[topic]
    try:
        future.result(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise BrokerUnavailable(
                f"could not create topic {topic!r} on {bootstrap_servers}: {error.str()}"
            ) from exc
        info = describe_topic(bootstrap_servers, topic, overrides)
        if info and info.partitions != partitions:
            log.warning(
                "topic %s has %d partitions, settings ask for %d; leaving it as it is",
                topic, info.partitions, partitions,
            )
        return False
    except TimeoutError as exc:
        raise BrokerUnavailable(f"Kafka at {bootstrap_servers} did not answer in time") from exc
    log.info("created topic %s with %d partitions", topic, partitions)
    return True
