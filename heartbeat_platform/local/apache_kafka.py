"""Apache Kafka 4.4 on this machine: the broker's jars from Maven Central, KRaft nodes on
loopback ports, started, stopped, killed and restarted on the same ports and storage.

The tests prove the guarantees on it (tests/support/apache_kafka.py); `up --broker kafka`
runs one node of it (`local.kafka_broker`). Nothing is built: `apache_kafka_pom.xml` (next
to this file) names `org.apache.kafka:kafka_2.13` 4.4.0 and friends, and Maven copies them
with their runtime dependencies into a cache folder outside the repository, once:

    mvn -q -f apache_kafka_pom.xml dependency:copy-dependencies -DincludeScope=runtime
        -DoutputDirectory=~/.cache/heartbeat-platform/kafka-4.4.0/libs

A node is then what the distribution's scripts run (bin/kafka-storage.sh, bin/kafka-server-
start.sh through bin/kafka-run-class.sh):

    java -cp 'libs/*' kafka.tools.StorageTool format -t <cluster id> -c server.properties
    java -Xmx512m -cp 'libs/*' kafka.Kafka server.properties

Each node is a combined broker and controller by default (`process.roles=broker,controller`)
with a static quorum (`controller.quorum.voters`): one node is a whole cluster, three are a
cluster that survives the loss of any one of them.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from heartbeat_platform.local.process import free_port, port_open

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
POM = Path(__file__).with_name("apache_kafka_pom.xml")
BROKER_MAIN = "kafka.Kafka"  # bin/kafka-server-start.sh
STORAGE_MAIN = "kafka.tools.StorageTool"  # bin/kafka-storage.sh
DEFAULT_HEAP = "512m"

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class ApacheKafkaError(RuntimeError):
    """A node did not format, start or answer; the message names its log file."""


class ToolsMissing(ApacheKafkaError):
    """java (17+) or, for the first fetch of the jars, Maven is not installed."""


def cache_dir() -> Path:
    """Where the jars live: $HEARTBEAT_KAFKA_CACHE, else ~/.cache/heartbeat-platform/kafka-4.4.0
    (or under $XDG_CACHE_HOME): outside the repository, shared by every clone and worktree."""
    explicit = os.environ.get("HEARTBEAT_KAFKA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "heartbeat-platform" / f"kafka-{KAFKA_VERSION}"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()[:16]


def jars_cached(cache: Path | None = None) -> bool:
    cache = cache or cache_dir()
    marker = cache / "libs" / ".complete"
    return marker.exists() and marker.read_text().strip() == _pom_digest()


def missing_tools(cache: Path | None = None) -> list[str]:
    """What must be installed before a node can run: java always, mvn until the jars are
    cached. Debian: openjdk-17-jre-headless, maven."""
    missing = [] if shutil.which("java") else ["java"]
    if not jars_cached(cache) and not shutil.which("mvn"):
        missing.append("mvn")
    return missing


def ensure_jars(cache: Path | None = None) -> Path:
    """The folder of Kafka's jars, fetched with Maven the first time (then reused).

    Several processes may ask at once (parallel test sessions): a file lock lets one fetch
    while the others wait; the jars go to a temporary folder renamed into place when
    complete, so a fetch killed half way leaves nothing that looks usable.
    """
    cache = cache or cache_dir()
    libs = cache / "libs"
    if jars_cached(cache):
        return libs
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jars_cached(cache):
            return libs
        if not shutil.which("mvn"):
            raise ToolsMissing("Maven (mvn) is needed once to fetch Apache Kafka's jars")
        staging = cache / f"libs.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        started = time.monotonic()
        done = subprocess.run(
            ["mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise ApacheKafkaError(
                f"mvn could not fetch Apache Kafka {KAFKA_VERSION}:\n{done.stdout}{done.stderr}"
            )
        (staging / ".complete").write_text(_pom_digest())
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        log.info("fetched Apache Kafka %s jars into %s in %.1f s", KAFKA_VERSION, libs,
                 time.monotonic() - started)
    return libs


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what
    `kafka-storage.sh random-uuid` prints)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the JVM gets SIGKILL when the process that started it dies (a test session
    killed with -9 leaves no broker behind)."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class KafkaNode:
    """One KRaft node (broker and controller unless `roles` says otherwise) under `root`."""

    root: Path
    node_id: int
    broker_port: int
    controller_port: int
    libs: Path
    cluster_id: str
    voters: str = ""
    roles: str = "broker,controller"
    heap: str = DEFAULT_HEAP
    properties: dict[str, str] = field(default_factory=dict)
    detached: bool = False  # outlives the process that started it (`up --broker kafka`)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def log_file(self) -> Path:
        return self.root / "node.log"

    def config(self) -> dict[str, str]:
        listeners, advertised = [], []
        if "broker" in self.roles:
            listeners.append(f"PLAINTEXT://127.0.0.1:{self.broker_port}")
            advertised.append(f"PLAINTEXT://127.0.0.1:{self.broker_port}")
        if "controller" in self.roles:
            listeners.append(f"CONTROLLER://127.0.0.1:{self.controller_port}")
        return {
            "process.roles": self.roles,
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters
            or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            "listeners": ",".join(listeners),
            **({"advertised.listeners": ",".join(advertised)} if advertised else {}),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.root / "data"),
            **self.properties,
        }

    def _write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.config().items()))
        (self.root / "log4j2.properties").write_text(_LOG4J2.format(level="INFO"))
        (self.root / "tools-log4j2.properties").write_text(_LOG4J2.format(level="WARN"))
        return path

    def _java(self, main: str, *args: str, heap: str, log_config: str) -> list[str]:
        return [
            # small and quick to start on a shared 2-core machine: the serial collector and
            # the client compiler only (a 3-node cluster starts in ~12 s instead of 20-50 s)
            "java", f"-Xmx{heap}", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.root / log_config}",
            f"-Dkafka.logs.dir={self.root / 'logs'}",
            "-cp", f"{self.libs}/*", main, *args,
        ]

    @property
    def formatted(self) -> bool:
        return (self.root / "data" / "meta.properties").exists()

    def format(self) -> None:
        """`kafka-storage.sh format`: the storage gets the cluster id (first start only)."""
        config = self._write_config()
        done = subprocess.run(
            self._java(STORAGE_MAIN, "format", "-t", self.cluster_id, "-c", str(config),
                       heap="256m", log_config="tools-log4j2.properties"),
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise ApacheKafkaError(
                f"formatting node {self.node_id} failed:\n{done.stdout}{done.stderr}"
            )

    def start(self) -> None:
        """Start the JVM (formatting the storage first if it never was); returns at once,
        `wait_ready` waits for it to answer."""
        if self.running:
            return
        if not self.formatted:
            self.format()
        config = self._write_config()
        out = open(self.log_file, "ab")  # noqa: SIM115 - the child keeps it
        out.write(f"\n==== start node {self.node_id} at {time.ctime()}\n".encode())
        out.flush()
        in_main = threading.current_thread() is threading.main_thread()
        self.proc = subprocess.Popen(
            self._java(BROKER_MAIN, str(config), heap=self.heap,
                       log_config="log4j2.properties"),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # PR_SET_PDEATHSIG follows the starting *thread*: only from the main thread
            preexec_fn=_die_with_parent if in_main and not self.detached else None,
            start_new_session=self.detached,  # and out of reach of the caller's Ctrl-C
        )
        out.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM: leadership moves away first), SIGKILL after grace."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """kill -9: no controlled shutdown; the controller fences it after the broker
        session timeout and elects other leaders; its log recovers on the next start."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused node dies too
            self.proc.kill()
        self.proc.wait(30)

    def pause(self) -> None:
        """SIGSTOP: the node stays connected but answers nothing, as behind a network
        partition: it stops fetching (leaves the ISR) and heartbeating (is fenced)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


# Small and quick on a shared 2-core machine, still stock Kafka semantics: fewer threads,
# fewer internal partitions, and a fenced broker noticed in seconds, not 9 s.
QUICK_PROPERTIES = {
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.replica.fetchers": "1",
    "num.recovery.threads.per.data.dir": "1",
    "log.cleaner.threads": "1",
    "offsets.topic.num.partitions": "6",
    "transaction.state.log.num.partitions": "3",
    "group.initial.rebalance.delay.ms": "0",
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
    "replica.lag.time.max.ms": "5000",
    "controlled.shutdown.enable": "true",
    # KIP-848 groups (group.protocol=consumer): the broker owns the session; a member
    # killed with -9 gives its partitions up after 6 s instead of 45 s
    "group.consumer.min.session.timeout.ms": "6000",
    "group.consumer.session.timeout.ms": "6000",
    "group.consumer.min.heartbeat.interval.ms": "500",
    "group.consumer.heartbeat.interval.ms": "1000",
}


class KafkaCluster:
    """`size` combined broker+controller nodes forming one KRaft quorum on loopback.

    With `dedicated_controller`, the `size` nodes are brokers only and one more node
    (`controller`, id `size + 1`) is the whole controller quorum: any number of brokers may
    then be down at once and the controller still fences them and shrinks the ISRs (with
    combined nodes, two of three down is a lost quorum, and nothing changes any more).

    Internal topics (consumer offsets, transactions) get min(3, size) replicas; topics
    created without a replication factor get the stock default (1), as on a stock broker.
    Ports and storage are kept across stop/kill and restart.
    """

    def __init__(self, root: Path, size: int = 1, heap: str = DEFAULT_HEAP,
                 properties: dict[str, str] | None = None, libs: Path | None = None,
                 dedicated_controller: bool = False):
        self.root = root
        self.size = size
        self.libs = libs or ensure_jars()
        self.cluster_id = new_cluster_id()
        ports = [(free_port(), free_port()) for _ in range(size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
        self.controller: KafkaNode | None = None
        if dedicated_controller:
            controller_id, controller_port = size + 1, free_port()
            voters = f"{controller_id}@127.0.0.1:{controller_port}"
        replicas = str(min(3, size))
        extra = {
            **QUICK_PROPERTIES,
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": str(min(2, size)),
            **(properties or {}),
        }
        roles = "broker" if dedicated_controller else "broker,controller"
        self.nodes = {
            i + 1: KafkaNode(root / f"node-{i + 1}", i + 1, b, c, self.libs, self.cluster_id,
                             voters=voters, roles=roles, heap=heap, properties=dict(extra))
            for i, (b, c) in enumerate(ports)
        }
        if dedicated_controller:
            self.controller = KafkaNode(
                root / f"controller-{controller_id}", controller_id, 0, controller_port,
                self.libs, self.cluster_id, voters=voters, roles="controller", heap=heap,
                properties=dict(extra),
            )

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap_servers for n in self.nodes.values())

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id]

    def _all_nodes(self) -> list[KafkaNode]:
        """The brokers' nodes and the dedicated controller (first) if there is one."""
        controller = [self.controller] if self.controller is not None else []
        return controller + list(self.nodes.values())

    def start(self, timeout: float = 120) -> None:
        formats = [threading.Thread(target=n.format) for n in self._all_nodes()
                   if not n.formatted]
        for thread in formats:
            thread.start()
        for thread in formats:
            thread.join()
        for node in self._all_nodes():
            node.start()
        self.wait_ready(timeout)

    def stop(self) -> None:
        # all at once: a controlled shutdown waits for the others while a quorum remains
        for node in self.nodes.values():
            if node.running:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGCONT)
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            node.stop(grace_s=30)
        if self.controller is not None:  # last: the brokers' controlled shutdown needs it
            self.controller.stop(grace_s=30)

    def admin(self, node_ids: Iterable[int] | None = None) -> AdminClient:
        ids = list(node_ids) if node_ids is not None else [
            i for i, n in self.nodes.items() if n.running
        ]
        servers = ",".join(self.nodes[i].bootstrap_servers for i in ids) or self.bootstrap_servers
        # librdkafka's log to Python logging: a killed node is not a line per reconnect
        return AdminClient({"bootstrap.servers": servers, "socket.timeout.ms": 5000},
                           logger=log)

    def answers(self, node_id: int) -> bool:
        """The node's broker listener accepts connections: a KRaft broker opens it only once
        the controller has unfenced it (so a restarted node counts only when back)."""
        return port_open("127.0.0.1", self.nodes[node_id].broker_port)

    def live_brokers(self) -> set[int]:
        """Node ids in the cluster's metadata (registered, not fenced)."""
        try:
            metadata = self.admin().list_topics(timeout=5)
        except KafkaException:
            return set()
        return set(metadata.brokers)

    def wait_ready(self, timeout: float = 120, node_ids: Iterable[int] | None = None) -> None:
        """Until every running node (or those named) is a broker in the metadata."""
        wanted = set(node_ids) if node_ids is not None else {
            i for i, n in self.nodes.items() if n.running
        }
        deadline = time.monotonic() + timeout
        while True:
            for i in wanted:
                if not self.nodes[i].running:
                    raise ApacheKafkaError(
                        f"node {i} exited (log {self.nodes[i].log_file}):\n"
                        + self.nodes[i].log_tail()
                    )
            if all(self.answers(i) for i in wanted) and wanted <= self.live_brokers():
                return
            if time.monotonic() > deadline:
                raise ApacheKafkaError(
                    f"nodes {sorted(wanted - self.live_brokers())} did not answer within "
                    f"{timeout:.0f} s; logs under {self.root}"
                )
            time.sleep(0.3)

    def kill(self, node_id: int) -> None:
        self.nodes[node_id].kill()

    def restart(self, node_id: int, timeout: float = 120) -> None:
        """Start a stopped or killed node again on its ports and storage; wait for it."""
        node = self.nodes[node_id]
        if node.running:
            node.stop()
        node.start()
        self.wait_ready(timeout, [node_id])

    def partitions(self, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
        """partition -> (leader, replicas, in-sync replicas), from the cluster's metadata."""
        metadata = self.admin().list_topics(topic, timeout=10)
        found = metadata.topics[topic]
        if found.error is not None:
            raise ApacheKafkaError(f"topic {topic}: {found.error}")
        return {p: (m.leader, list(m.replicas), list(m.isrs))
                for p, m in found.partitions.items()}

    def leader_of(self, topic: str, partition: int) -> int:
        return self.partitions(topic)[partition][0]

    def wait_for_leader(self, topic: str, partition: int, *, not_on: int | None = None,
                        timeout: float = 60) -> int:
        """A live leader for the partition (other than `not_on`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaException, ApacheKafkaError, KeyError):
                leader = self.leader_of(topic, partition)
                if leader >= 0 and leader != not_on and self.nodes[leader].running:
                    return leader
            time.sleep(0.2)
        raise ApacheKafkaError(f"{topic}[{partition}] has no leader after {timeout:.0f} s")

    def wait_in_sync(self, topic: str, timeout: float = 120) -> None:
        """Until every replica of every partition of the topic is in its ISR again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaException, ApacheKafkaError, KeyError):
                if all(sorted(r) == sorted(i) for _, r, i in self.partitions(topic).values()):
                    return
            time.sleep(0.3)
        raise ApacheKafkaError(f"{topic}: replicas not back in sync after {timeout:.0f} s")

    def elect_preferred_leaders(self, topic: str, partitions: Iterable[int]) -> None:
        """Move leadership back to each partition's first replica (kafka-leader-election.sh
        --election-type PREFERRED)."""
        from confluent_kafka import ElectionType, TopicPartition

        future = self.admin().elect_leaders(
            ElectionType.PREFERRED, [TopicPartition(topic, p) for p in partitions]
        )
        with contextlib.suppress(KafkaException):  # "already the leader" is an error here
            future.result(timeout=30)

    @contextlib.contextmanager
    def paused(self, node_id: int) -> Iterator[KafkaNode]:
        node = self.nodes[node_id]
        node.pause()
        try:
            yield node
        finally:
            node.resume()
