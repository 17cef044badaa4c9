"""Resolve where PostgreSQL and Kafka are: the configured services, or embedded ones.

With `DATABASE_URL` / `KAFKA_BOOTSTRAP_SERVERS` set, nothing is started. Otherwise the
embedded server is started under `HEARTBEAT_STATE_DIR`, or reused when it already runs
(a file lock stops two processes from starting two servers); the broker is Tansu or, with
`HEARTBEAT_LOCAL_BROKER=kafka`, one Apache Kafka node (`local.kafka_broker`).
`stop_started()` stops only what this object started; `stop_all()` stops whatever embedded
server the folder holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from filelock import FileLock

from heartbeat_platform.config import Settings
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.kafka_broker import LocalKafka
from heartbeat_platform.local.postgres import EmbeddedPostgres

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    bootstrap_servers: str


@dataclass
class LocalServices:
    settings: Settings
    started: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        state = self.settings.heartbeat_state_dir
        self.postgres = EmbeddedPostgres(state / "postgres")
        self.broker = EmbeddedBroker(state / "broker")  # Tansu (its log rotation needs it)
        self.kafka = LocalKafka(state / "kafka", self.settings.heartbeat_kafka_home)
        self.local_broker: EmbeddedBroker | LocalKafka = (
            self.kafka if self.settings.heartbeat_local_broker == "kafka" else self.broker
        )
        self._lock = FileLock(str(state / "services.lock"))

    def start(self) -> Endpoints:
        """Endpoints to use, starting embedded servers where no URL is configured."""
        s = self.settings
        if s.database_url is not None and s.kafka_bootstrap_servers is not None:
            return Endpoints(s.database_url, s.kafka_bootstrap_servers)
        s.heartbeat_state_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if s.database_url is None and self.postgres.start():
                self.started.append("postgres")
            if s.kafka_bootstrap_servers is None and self.local_broker.start():
                self.started.append("broker")
        return self.current()

    def current(self) -> Endpoints:
        """Endpoints without starting anything (an embedded one may not be running)."""
        s = self.settings
        database_url = s.database_url
        if database_url is None:
            database_url = self.postgres.url() if self.postgres.is_running() else ""
        bootstrap = s.kafka_bootstrap_servers
        if bootstrap is None:
            broker = self.local_broker
            bootstrap = broker.bootstrap_servers if broker.is_running() else ""
        return Endpoints(database_url, bootstrap)

    def stop_started(self) -> None:
        with self._lock:
            if "broker" in self.started:
                self.local_broker.stop()
            if "postgres" in self.started:
                self.postgres.stop()
            self.started.clear()

    def stop_all(self) -> list[str]:
        """Stop the embedded servers of this state folder, whoever started them (either
        broker, whichever the settings name)."""
        stopped = []
        with self._lock:
            if self.broker.is_running():
                self.broker.stop()
                stopped.append("broker")
            if self.kafka.is_running():
                self.kafka.stop()
                stopped.append("Apache Kafka")
            if self.postgres.is_running():
                self.postgres.stop()
                stopped.append("postgres")
        return stopped
