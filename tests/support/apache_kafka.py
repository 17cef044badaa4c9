"""Apache Kafka 4.4 for the tests: a single KRaft node and a 3-node cluster on loopback.

`apache_kafka` is one combined broker+controller node for the whole session. `kafka_cluster`
is three combined broker+controller nodes (one controller quorum: any one node may be
killed) shared by a test module; before and after each test every node is running again,
so a test may kill, pause and restart nodes freely (`KafkaCluster.kill`, `.restart`,
`.leader_of`, `.wait_for_leader`, `.paused`, `.elect_preferred_leaders`). `kafka_brokers`
is three broker-only nodes and a dedicated controller, started for one test, where two
brokers may be down at once.

The jars come from Maven Central once (heartbeat_platform/local/apache_kafka.py) and are
reused from ~/.cache/heartbeat-platform/kafka-4.4.0. Without java (or, until the jars are
cached, mvn) these tests skip with one line saying what to install; under CI=true they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from heartbeat_platform.local.apache_kafka import (
    KAFKA_VERSION,
    KafkaCluster,
    ensure_jars,
    missing_tools,
)


def _require_java_and_jars() -> None:
    missing = missing_tools()
    if missing:
        message = (
            f"Apache Kafka {KAFKA_VERSION} tests need {' and '.join(missing)}: "
            "apt-get install openjdk-17-jre-headless maven (as .ci/run does)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    ensure_jars()


@pytest.fixture(scope="session")
def kafka_jars() -> Path:
    """Apache Kafka's jars (for a test that starts a broker by other means)."""
    _require_java_and_jars()
    return ensure_jars()


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One Apache Kafka node (broker and controller), started once per session."""
    _require_java_and_jars()
    # retention checked every second (stock: 5 min), for tests that make it delete
    node = KafkaCluster(tmp_path_factory.mktemp("apache-kafka"), size=1,
                        properties={"log.retention.check.interval.ms": "1000"})
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def _kafka_cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    _require_java_and_jars()
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"), size=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _heal(cluster: KafkaCluster) -> None:
    """Every node running and answering again (a paused one resumed, a killed one started)."""
    for node_id, node in cluster.nodes.items():
        node.resume()
        if not node.running:
            cluster.restart(node_id)
    cluster.wait_ready()


@pytest.fixture
def kafka_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three broker-only Apache Kafka nodes and a dedicated controller, for one test: two
    brokers may be down at once while the controller still fences them and shrinks the
    ISRs (what `kafka_cluster`'s combined nodes cannot survive: a lost quorum)."""
    _require_java_and_jars()
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka-brokers"), size=3,
                           dedicated_controller=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kafka_cluster(_kafka_cluster_nodes: KafkaCluster) -> Iterator[KafkaCluster]:
    """Three Apache Kafka nodes, each a broker and a controller; all running at the start
    and healed again at the end of each test."""
    _heal(_kafka_cluster_nodes)
    yield _kafka_cluster_nodes
    _heal(_kafka_cluster_nodes)
