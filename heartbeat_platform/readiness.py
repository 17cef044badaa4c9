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

import logging
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from heartbeat_platform.alerting.config import AlertingConfig
from heartbeat_platform.config import Settings
from heartbeat_platform.domain.generator import HeartbeatGenerator
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.services import Endpoints, LocalServices
from heartbeat_platform.storage.database import connect
from heartbeat_platform.storage.migrations import check_schema, migrate
from heartbeat_platform.storage.partitions import ensure_partitions
from heartbeat_platform.streaming.consumer_config import ConsumerConfig
from heartbeat_platform.streaming.producer import ProducerConfig
from heartbeat_platform.streaming.topics import (
    BrokerUnavailable,
    TopicLayout,
    ensure_topic,
    require_topic,
    topic_layout,
)


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
    topic_layout: TopicLayout | None = None


def prepare(
    settings: Settings, services: LocalServices | None = None, *, describe_topic: bool = False
) -> Prepared:
    """`describe_topic`: also read back the topic's layout (what `init-db` prints); the
    other callers skip that round trip to the broker."""
    services = services or LocalServices(settings)
    endpoints = services.start()
    applied = migrate(endpoints.database_url)
    with connect(endpoints.database_url) as conn:
        ensure_partitions(conn, settings.retention, datetime.now(UTC))
    with kafka_failures_explained(endpoints.bootstrap_servers, settings.kafka_client_config):
        created = ensure_topic(
            endpoints.bootstrap_servers,
            settings.kafka_topic,
            partitions=settings.kafka_partitions,
            retention_ms=settings.kafka_retention_ms,
            overrides=settings.kafka_client_config,
            replication_factor=settings.heartbeat_topic_replication_factor,
            min_insync_replicas=settings.heartbeat_topic_min_insync_replicas,
        )
        layout = topic_layout(
            endpoints.bootstrap_servers, settings.kafka_topic, settings.kafka_client_config
        ) if describe_topic else None
    return Prepared(endpoints, applied, created, layout)


def ready(
    settings: Settings, services: LocalServices | None = None, *, topic: bool = True
) -> Endpoints:
    """The endpoints, once the schema is current and (with `topic`) the topic exists.

    Raises SchemaNotReady / TopicMissing, whose messages say to run `init-db`.
    """
    endpoints = (services or LocalServices(settings)).start()
    check_schema(endpoints.database_url)
    if topic:
        with kafka_failures_explained(endpoints.bootstrap_servers, settings.kafka_client_config):
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
        "partition_check_every_s": settings.heartbeat_partition_check_s,
        "kafka_overrides": settings.kafka_client_config,
        # HEARTBEAT_ALERTING=off: no episodes, no delivery thread (the original design's
        # banner and alert_<type> rows come from the batch builder either way)
        "alerting": alerting_config(settings) if settings.heartbeat_alerting else None,
    }
    values.update(overrides)
    return ConsumerConfig(**values)


def alerting_config(settings: Settings) -> AlertingConfig:
    return AlertingConfig(
        rules=settings.alert_rules,
        receivers=settings.alert_receivers,
        escalation_receivers=settings.alert_escalation_receivers,
        escalate_after_s=settings.heartbeat_escalate_after_s,
        give_up_s=settings.heartbeat_alert_give_up_s,
        alertmanager_refresh_s=settings.heartbeat_alertmanager_refresh_s,
        storm=settings.storm_policy,
    )


def generator(settings: Settings, seed: int | None = None) -> HeartbeatGenerator:
    return HeartbeatGenerator(
        customer_count=settings.heartbeat_customer_count,
        anomaly_rate=settings.heartbeat_anomaly_rate,
        fault_rate=settings.heartbeat_fault_rate,
        seed=seed,
    )


# -- why Kafka does not answer ------------------------------------------------------------------
# librdkafka reports every failure to connect as the same "Broker transport failure" after
# its full timeout. Before asking it, one TCP connection per bootstrap address tells a
# refused port (at once), a name that does not resolve and an unreachable host (within
# TCP_PROBE_TIMEOUT_S) apart; once a listener takes the connection, its own log lines
# (drained from a client of our own) tell a failed TLS handshake, a refused
# authentication and a listener that closes a plaintext request apart.
TCP_PROBE_TIMEOUT_S = 2.0
DIAGNOSIS_TIMEOUT_S = 3.0  # after the request that failed: a second look, not a wait


@contextmanager
def kafka_failures_explained(bootstrap_servers: str, overrides: dict | None) -> Iterator[None]:
    """Raise BrokerUnavailable naming the cause: first no TCP connection at all, then, when
    the body's Kafka request fails, what librdkafka saw (TLS, authentication, ...)."""
    unreachable = tcp_problems(bootstrap_servers)
    if unreachable is not None:
        raise BrokerUnavailable(f"Kafka at {bootstrap_servers} cannot be reached: {unreachable}")
    try:
        yield
    except BrokerUnavailable as exc:
        cause = diagnose(bootstrap_servers, overrides)
        if cause is None:
            raise
        raise BrokerUnavailable(f"Kafka at {bootstrap_servers}: {cause}") from exc


def _host_port(address: str) -> tuple[str, int]:
    address = address.strip().rpartition("://")[2]  # librdkafka takes PROTOCOL://host:port
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "localhost", int(port or 9092)


def _tcp_problem(address: str) -> str | None:
    """Why `address` takes no TCP connection, or None when something listens there."""
    try:
        host, port = _host_port(address)
    except ValueError:
        return None  # librdkafka's settings check names a malformed address
    try:
        socket.create_connection((host, port), timeout=TCP_PROBE_TIMEOUT_S).close()
    except socket.gaierror as exc:
        return f"{address}: host {host!r} does not resolve ({exc.strerror})"
    except ConnectionRefusedError:
        return (f"{address}: connection refused (nothing listens on port {port} there: is "
                "the broker running, and is this its address?)")
    except TimeoutError:
        return (f"{address}: unreachable (no answer to a TCP connection within "
                f"{TCP_PROBE_TIMEOUT_S:g} s: a wrong address, a firewall, or the host is down)")
    except OSError as exc:
        return f"{address}: unreachable ({exc.strerror or exc})"
    return None


def tcp_problems(bootstrap_servers: str) -> str | None:
    """None when at least one bootstrap address takes a TCP connection, else why none does."""
    addresses = [a for a in bootstrap_servers.split(",") if a.strip()]
    if not addresses:
        return None
    with ThreadPoolExecutor(max_workers=min(8, len(addresses))) as pool:
        problems = list(pool.map(_tcp_problem, addresses))
    if any(problem is None for problem in problems):
        return None
    return "; ".join(p for p in problems if p)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def diagnose(bootstrap_servers: str, overrides: dict | None) -> str | None:
    """Ask Kafka for its metadata with the same settings and read librdkafka's log: what
    went wrong, in words, or None (it answered this time, or it said nothing useful)."""
    lines = _Lines()
    logger = logging.getLogger(f"{__name__}.kafka_diagnosis")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(lines)
    try:
        client = AdminClient(
            {"bootstrap.servers": bootstrap_servers, "socket.timeout.ms": 5000,
             **(overrides or {})},
            logger=logger,
        )
        try:
            client.list_topics(timeout=DIAGNOSIS_TIMEOUT_S)
        except KafkaException:
            pass
        else:
            return None
        client.poll(0.5)  # delivers the log lines
    finally:
        logger.removeHandler(lines)
    return explain(lines.lines, overrides or {})


def explain(lines: list[str], overrides: dict) -> str | None:
    """The cause of a failed connection from librdkafka's log lines (pure)."""
    plaintext = overrides.get("security.protocol", "PLAINTEXT").upper() == "PLAINTEXT"

    def last(*needles: str) -> str | None:
        found = [line for line in lines if any(n in line for n in needles)]
        if not found:
            return None
        detail = found[-1].split("/bootstrap: ", 1)[-1]
        return detail.split(" (after ", 1)[0]

    sasl = last("SASL authentication", "Authentication failed", "state AUTH")
    if sasl:
        return (f"authentication refused ({sasl}): check sasl.mechanism, sasl.username and "
                "sasl.password (KAFKA_SASL_* or KAFKA_CLIENT_PROPERTIES)")
    tls = last("SSL handshake failed", "state SSL_HANDSHAKE", "certificate verify failed")
    if tls:
        return (f"the TLS handshake failed ({tls}): check that the listener speaks TLS and "
                "that ssl.ca.location holds the CA of the brokers' certificates")
    closed = last("state APIVERSION_QUERY")
    if closed and plaintext:
        return (f"the listener closed the connection without answering a Kafka request "
                f"({closed}); connected without TLS or SASL: if the cluster needs them, name "
                "its client.properties in KAFKA_CLIENT_PROPERTIES (security.protocol=SSL or "
                "SASL_SSL), else check that this port is Kafka's")
    if closed:
        return f"the listener closed the connection without answering a Kafka request ({closed})"
    if lines:
        return None
    if not plaintext:
        return (f"the connection was accepted but the TLS handshake got no answer within "
                f"{DIAGNOSIS_TIMEOUT_S:g} s: the listener may not speak TLS (security.protocol "
                f"is {overrides.get('security.protocol')}), or may not be Kafka")
    return (f"the connection was accepted but no Kafka answer came within "
            f"{DIAGNOSIS_TIMEOUT_S:g} s (is this port Kafka's?)")
