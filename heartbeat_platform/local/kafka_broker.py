"""A local Apache Kafka for `up --broker kafka`: one KRaft node with its log on disk.

Unlike Tansu it keeps its log across restarts and enforces the topic's retention (24 h),
so no log rotation is needed, and it behaves as the clusters users run. It is slower to
start (a JVM: 5-15 s) and takes about 0.5 GB of memory. It runs detached, as the embedded
broker does, so it outlives the command that started it; its pid, ports and cluster id
are kept in `root/kafka.json`. Its jars are the `libs/` of `HEARTBEAT_KAFKA_HOME` (an
unpacked Apache Kafka release, as users download it) or the ones Maven fetches once
(`apache_kafka.ensure_jars`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from heartbeat_platform.local.apache_kafka import (
    QUICK_PROPERTIES,
    ApacheKafkaError,
    KafkaNode,
    ensure_jars,
    new_cluster_id,
)
from heartbeat_platform.local.process import (
    free_port,
    port_open,
    process_alive,
    read_json,
    stop_process,
    wait_until,
    write_json,
)

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
# One node: the internal topics can have one copy only.
SINGLE_NODE = {
    **QUICK_PROPERTIES,
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
}


def kafka_libs(kafka_home: Path | None) -> Path:
    """The jars to run: `kafka_home/libs`, or Maven's copy (fetched the first time)."""
    if kafka_home is None:
        return ensure_jars()
    libs = kafka_home.expanduser() / "libs"
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise ApacheKafkaError(
            f"HEARTBEAT_KAFKA_HOME={kafka_home} is not an unpacked Apache Kafka release "
            f"(no {libs}/kafka_2.13-*.jar); unset it to fetch the jars with Maven"
        )
    return libs


class LocalKafka:
    host = "127.0.0.1"

    def __init__(self, root: Path, kafka_home: Path | None = None):
        self.root = root.resolve()
        self.state_file = self.root / "kafka.json"
        self.kafka_home = kafka_home

    @property
    def log_file(self) -> Path:
        return self.root / "node" / "node.log"

    @property
    def bootstrap_servers(self) -> str:
        state = read_json(self.state_file)
        if not state:
            raise ApacheKafkaError(f"the local Apache Kafka in {self.root} was never started")
        return f"{self.host}:{state['port']}"

    def is_running(self) -> bool:
        state = read_json(self.state_file)
        return bool(state and state.get("pid") and process_alive(state["pid"], "kafka.Kafka")
                    and port_open(self.host, state["port"]))

    def serves(self, bootstrap_servers: str | None) -> bool:
        state = read_json(self.state_file)
        return bool(state and bootstrap_servers == f"{self.host}:{state['port']}")

    def start(self) -> bool:
        """Start the node unless it already runs (on the ports and storage of its last
        run); True when this call started it."""
        if self.is_running():
            log.info("reusing the local Apache Kafka at %s", self.bootstrap_servers)
            return False
        state = read_json(self.state_file) or {}
        port = free_port(self.host, state.get("port"))
        controller = free_port(self.host, state.get("controller_port"))
        if controller == port:
            controller = free_port(self.host)
        node = KafkaNode(self.root / "node", 1, port, controller, kafka_libs(self.kafka_home),
                         self._formatted_cluster_id() or new_cluster_id(),
                         properties=dict(SINGLE_NODE), detached=True)
        node.start()
        assert node.proc is not None
        write_json(self.state_file, {"pid": node.proc.pid, "port": port,
                                     "controller_port": controller,
                                     "cluster_id": node.cluster_id})
        if not wait_until(lambda: self._answers(port) or not node.running,
                          timeout=START_TIMEOUT_S) or not node.running:
            stop_process(node.proc.pid)
            raise ApacheKafkaError(f"Apache Kafka did not start on port {port}: "
                                   f"{node.log_tail(15)}\n(whole log: {self.log_file})")
        log.info("started Apache Kafka %s at %s (pid %s, log in %s)", node.libs.name,
                 self.bootstrap_servers, node.proc.pid, node.root / "data")
        return True

    def _formatted_cluster_id(self) -> str | None:
        """The cluster id the node's storage was formatted with (None: never formatted)."""
        meta = self.root / "node" / "data" / "meta.properties"
        if not meta.exists():
            return None
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.partition("=")[2].strip()
        return None

    def _answers(self, port: int) -> bool:
        """The node is a broker with a controller: it lists topics."""
        if not port_open(self.host, port):
            return False
        admin = AdminClient({"bootstrap.servers": f"{self.host}:{port}",
                             "socket.timeout.ms": 2000}, logger=log)
        try:
            admin.list_topics(timeout=2)
        except KafkaException:
            return False
        return True

    def stop(self, grace_s: float = 30.0) -> None:
        """A controlled shutdown (SIGTERM), SIGKILL after `grace_s`; the log stays."""
        state = read_json(self.state_file)
        if state and state.get("pid") and process_alive(state["pid"], "kafka.Kafka"):
            stop_process(state["pid"], grace_s)
