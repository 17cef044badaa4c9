"""Create the heartbeat topic idempotently, describe it, check that it is there.

The topic must exist before anything produces to it: Tansu would otherwise auto-create
it with 4 partitions, and real Kafka with the broker default. Only `init-db` (and `up`)
create it; the other commands check for it (`require_topic`), so they need no right to
create topics. Every function takes `overrides`: the cluster's client settings (TLS,
SASL; `Settings.kafka_client_config`), merged over the admin client's own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

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


@dataclass(frozen=True)
class TopicLayout:
    """How a topic is laid out on the cluster: partitions, copies of each, and how many
    copies an acks=all write needs (None: the broker did not say, or had no override)."""

    name: str
    partitions: int
    replication_factor: int
    min_insync_replicas: int | None

    def describe(self) -> str:
        isr = ("broker default" if self.min_insync_replicas is None
               else str(self.min_insync_replicas))
        return (f"{self.partitions} partitions, replication factor {self.replication_factor}, "
                f"min.insync.replicas {isr}")


# A topic gets min(3, brokers) copies; with 3 (or more) an acks=all write needs 2 of them,
# so one broker can fail, or be restarted, without stopping producers or losing a write.
DEFAULT_MAX_REPLICATION = 3
DEFAULT_MIN_INSYNC_WITH_3 = 2


def planned_replication(
    brokers: int, replication_factor: int | None, min_insync_replicas: int | None
) -> tuple[int, int | None]:
    """(replication factor, min.insync.replicas or None for the broker's) to create with.

    None means automatic: min(3, brokers) copies, and min.insync.replicas 2 when there are
    3 or more copies (left to the broker's default, 1 on a stock broker, below 3). An
    explicit -1 replication factor is the broker's `default.replication.factor`.
    """
    factor = (min(DEFAULT_MAX_REPLICATION, max(brokers, 1))
              if replication_factor is None else replication_factor)
    if min_insync_replicas is None and factor >= 3:
        min_insync_replicas = DEFAULT_MIN_INSYNC_WITH_3
    return factor, min_insync_replicas


def admin_client(bootstrap_servers: str, overrides: dict | None = None) -> AdminClient:
    """An admin client whose librdkafka log goes to Python logging (quiet by default): a
    broker it cannot reach gives one clear error, not a line per reconnect on stderr."""
    return AdminClient(
        {"bootstrap.servers": bootstrap_servers, "socket.timeout.ms": 5000, **(overrides or {})},
        logger=log,
    )


def topic_id(
    bootstrap_servers: str, topic: str, overrides: dict | None = None,
    admin: AdminClient | None = None,
) -> str | None:
    """The broker's id of the topic (it changes when the topic is created again), or None
    when the topic is missing, the broker does not give ids, or it did not answer.
    `admin`: a client to ask through (one made here otherwise)."""
    admin = admin or admin_client(bootstrap_servers, overrides)  # must outlive the request
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
    replication_factor: int | None = None,
    min_insync_replicas: int | None = None,
) -> bool:
    """Create the topic if missing; True when this call created it.

    Copies: `replication_factor` (None: min(3, brokers in the cluster); -1: the broker's
    default) and `min_insync_replicas` (None: 2 when the topic has 3 or more copies, else
    the broker's default), see `planned_replication`.

    An existing topic is left as it is; a partition count other than asked is logged, since
    adding partitions would move customers to other partitions and break their ordering.
    """
    admin = admin_client(bootstrap_servers, overrides)  # must outlive the future
    brokers = 1
    if replication_factor is None:
        try:
            brokers = len(admin.list_topics(timeout=ADMIN_TIMEOUT_S).brokers)
        except KafkaException as exc:
            raise BrokerUnavailable(f"Kafka at {bootstrap_servers} did not answer") from exc
    factor, min_insync = planned_replication(brokers, replication_factor, min_insync_replicas)
    config = {"retention.ms": str(retention_ms)}
    if min_insync is not None:
        config["min.insync.replicas"] = str(min_insync)
    future = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=factor, config=config)],
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
    # On a cluster the other brokers learn of the topic a moment later: return once the
    # metadata shows it, so a `require_topic` right after (consume after init-db) finds it.
    topic_layout(bootstrap_servers, topic, overrides, wait_s=ADMIN_TIMEOUT_S)
    log.info("created topic %s with %d partitions, replication factor %d, "
             "min.insync.replicas %s", topic, partitions, factor, min_insync or "default")
    return True


def topic_layout(
    bootstrap_servers: str, topic: str, overrides: dict | None = None, wait_s: float = 0.0
) -> TopicLayout | None:
    """The topic's partitions, replication factor (the fewest copies of any partition) and
    min.insync.replicas as the broker reports them; None when the topic does not exist.

    `wait_s`: how long to wait for a topic just created to show up. On a cluster the broker
    that answers may not have the new topic in its metadata yet (Apache Kafka spreads it
    to the brokers after CreateTopics returns).
    """
    admin = admin_client(bootstrap_servers, overrides)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            raise BrokerUnavailable(f"Kafka at {bootstrap_servers} did not answer") from exc
        found = metadata.topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            break
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)
    factor = min((len(p.replicas) for p in found.partitions.values()), default=0)
    min_insync: int | None = None
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        configs = admin.describe_configs([resource], request_timeout=ADMIN_TIMEOUT_S)[
            resource].result(timeout=ADMIN_TIMEOUT_S)
        entry = configs.get("min.insync.replicas")
        if entry is not None and entry.value is not None:
            min_insync = int(entry.value)
    except (KafkaException, TimeoutError, ValueError) as exc:
        log.info("could not read min.insync.replicas of topic %s: %s", topic, exc)
    return TopicLayout(topic, len(found.partitions), factor, min_insync)
