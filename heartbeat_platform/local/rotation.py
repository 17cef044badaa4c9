"""The embedded broker's log rotation: files, the producers' side, the rotator's side.

The decisions are `heartbeat_platform.domain.broker_rotation`'s; this module observes and
acts. The handshake works across processes (the CLI, Dagster's runs) through the broker's
state folder, which every process of one platform shares:

- `rotation.json`: the phase, the rotation's number, and `log`: the rotation that began
  the broker's current log. Written atomically; missing means open, never rotated.
- `producers/<pid>-<id>.json`: one per live `HeartbeatProducer`, holding the rotation it
  has paused for. A producer registers before it first checks the phase, and the rotator
  writes the phase before it lists producers, so a producer it does not list has seen
  the pause. A file whose process is gone is ignored and removed.

Only this platform's producers take part: a client from elsewhere (kcat, a script) that
writes to the embedded broker during a rotation can lose readings; use a real Kafka then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from heartbeat_platform.domain.broker_rotation import (
    MB,
    Abort,
    Action,
    CreateTopic,
    Limits,
    MoveTo,
    Observation,
    Phase,
    Refuse,
    Restart,
    Stay,
    StoredPartition,
    decide,
    memory_warning,
)
from heartbeat_platform.local.broker import EmbeddedBroker
from heartbeat_platform.local.process import read_json, write_json

log = logging.getLogger(__name__)

MARKER = "rotation.json"
PRODUCERS = "producers"
CHECK_EVERY_S = 0.05  # how stale a producer's view of the phase may be
WAIT_POLL_S = 0.2
PAUSED_LOG_EVERY_S = 30.0


# -- the files ------------------------------------------------------------------------------
@dataclass
class RotationFiles:
    """The handshake files in the broker's state folder."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    def read(self) -> dict[str, Any]:
        state = read_json(self.marker) or {}
        state.setdefault("phase", Phase.OPEN.value)
        state.setdefault("rotation", 0)
        state.setdefault("log", 0)
        return state

    def write(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.marker, state)

    def register(self) -> Path:
        folder = self.root / PRODUCERS
        folder.mkdir(parents=True, exist_ok=True)
        me = folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        write_json(
            me, {"pid": os.getpid(), "started": psutil.Process().create_time(), "paused_for": None}
        )
        return me

    def waiting(self, rotation: int) -> int:
        """Live producers that have not acknowledged the pause of `rotation`."""
        count = 0
        for path in (self.root / PRODUCERS).glob("*.json"):
            entry = read_json(path)
            if entry is None:
                continue
            if not _alive(entry["pid"], entry["started"]):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            if entry.get("paused_for") != rotation:
                count += 1
        return count


def _alive(pid: int, started: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - started) < 1
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


# -- the producers' side --------------------------------------------------------------------
class ProduceGate:
    """A producer's view of the rotation: is it paused, acknowledge, wait until open."""

    def __init__(self, root: Path):
        self.files = RotationFiles(root)
        self._me = self.files.register()
        self._checked_at = float("-inf")
        self._state = self.files.read()

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._checked_at >= CHECK_EVERY_S:
            self._state, self._checked_at = self.files.read(), now
        return self._state

    def paused(self) -> bool:
        return self.state()["phase"] != Phase.OPEN

    def log_number(self) -> int:
        return self.state()["log"]

    def acknowledge(self) -> None:
        """This producer holds nothing and sends nothing until the phase is open again."""
        state = self.files.read()
        entry = read_json(self._me) or {}
        entry["paused_for"] = state["rotation"]
        write_json(self._me, entry)

    def wait_until_open(self, stop: threading.Event) -> None:
        since = last_logged = time.monotonic()
        while not stop.wait(WAIT_POLL_S):
            state = self.files.read()
            if state["phase"] == Phase.OPEN:
                self._state, self._checked_at = state, time.monotonic()
                return
            if time.monotonic() - last_logged >= PAUSED_LOG_EVERY_S:
                last_logged = time.monotonic()
                log.warning(
                    "producer paused for %.0f s: the embedded broker's log is being rotated "
                    "(phase %s in %s); `heartbeat-platform up` completes a rotation",
                    last_logged - since,
                    state["phase"],
                    self.files.marker,
                )

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._me.unlink()


# -- the rotator's side ---------------------------------------------------------------------
def broker_memory(broker: EmbeddedBroker) -> int | None:
    """RSS of the broker's process in bytes; None when it does not run."""
    state = read_json(broker.state_file)
    if not state or not broker.is_running():
        return None
    try:
        return psutil.Process(state["pid"]).memory_info().rss
    except psutil.NoSuchProcess:
        return None


def limits(settings) -> Limits:
    return Limits(
        max_bytes=settings.heartbeat_broker_max_log_mb * MB,
        max_lag_to_start=settings.heartbeat_broker_rotation_max_lag,
    )


class BrokerRotation:
    """Observe, decide, act: one `step()` at a time, each from the phase on file."""

    def __init__(self, settings, broker: EmbeddedBroker, database_url: str):
        self.settings = settings
        self.broker = broker
        self.database_url = database_url
        self.files = RotationFiles(broker.root)
        self.limits = limits(settings)
        self._logged_at: dict[str, float] = {}

    # observing
    def observe(self) -> Observation:
        from heartbeat_platform.streaming.topics import BrokerUnavailable, describe_topic, topic_id

        s, state = self.settings, self.files.read()
        phase = Phase(state["phase"])
        rss = broker_memory(self.broker)
        partitions = ident = ends = None
        stored: dict[int, StoredPartition] = {}
        members, rebalancing = None, False
        busy = phase is not Phase.OPEN or (rss is not None and rss >= self.limits.max_bytes)
        if rss is not None and busy:
            bootstrap = self.broker.bootstrap_servers
            try:
                info = describe_topic(bootstrap, s.kafka_topic, s.kafka_client_config)
            except BrokerUnavailable:
                info = None
            if info is not None:
                partitions = info.partitions
                ident = topic_id(bootstrap, s.kafka_topic, s.kafka_client_config)
                ends = self._log_ends(bootstrap, partitions)
                stored = self._stored(partitions)
            if phase is Phase.ADOPTING:
                members, rebalancing = self._group(bootstrap)
        waiting = (
            self.files.waiting(state["rotation"]) if phase in (Phase.PAUSING, Phase.DRAINING) else 0
        )
        return Observation(
            phase=phase,
            in_phase_s=time.time() - state.get("since", time.time()),
            rss_bytes=rss,
            producers_waiting=waiting,
            log_ends=ends,
            stored=stored,
            topic_id=ident,
            topic_id_before=state.get("topic_id_before"),
            partitions=partitions,
            expected_partitions=s.kafka_partitions,
            consumer_members=members,
            consumer_rebalancing=rebalancing,
        )

    def _log_ends(self, bootstrap: str, partitions: int) -> dict[int, int] | None:
        from heartbeat_platform.streaming.lag import log_end_offsets

        s = self.settings
        ends = log_end_offsets(bootstrap, s.kafka_topic, kafka_overrides=s.kafka_client_config)
        return ends if len(ends) == partitions else None  # a partition not known: unknown

    def _stored(self, partitions: int) -> dict[int, StoredPartition]:
        from heartbeat_platform.storage.database import connect
        from heartbeat_platform.storage.progress import ProgressStore

        s = self.settings
        with connect(self.database_url, autocommit=True) as conn:
            found = ProgressStore(s.kafka_group_id, s.kafka_topic).load(conn, range(partitions))
        return {p: StoredPartition(f.progress.next_offset, f.topic_id) for p, f in found.items()}

    def _group(self, bootstrap: str) -> tuple[int | None, bool]:
        """(members: 0 when the consumer group is empty, at least 1 when it has one, None:
        unknown; whether it is rebalancing). The embedded broker lists no members, but
        says STABLE, EMPTY or a rebalance state."""
        admin = AdminClient({"bootstrap.servers": bootstrap, **self.settings.kafka_client_config})
        group = self.settings.kafka_group_id
        try:
            found = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
        except Exception:  # noqa: BLE001 - unknown means: keep waiting
            return None, False
        if found.state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
            return 0, False
        if found.state is ConsumerGroupState.UNKNOWN:
            return None, False
        rebalancing = found.state is not ConsumerGroupState.STABLE
        return max(1, len(found.members)), rebalancing

    # acting
    def step(self) -> Action:
        """One observation, one decision, its action; returns the action."""
        seen = self.observe()
        action = decide(seen, self.limits)
        if seen.phase is Phase.OPEN and (warning := memory_warning(seen.rss_bytes, self.limits)):
            self._log_every("warn", 600, logging.WARNING, warning)
        match action:
            case Stay(note=note) if note:
                self._log_every("stay", 30, logging.WARNING, "broker rotation: %s", note)
            case Refuse(reason=reason):
                self._log_every(
                    "refuse", 60, logging.WARNING, "broker rotation refused: %s", reason
                )
            case MoveTo():
                self._move(action, seen)
            case Restart():
                self._restart(seen)
            case CreateTopic():
                self._create_topic()
            case Abort(reason=reason):
                log.warning("broker rotation aborted, producers resume on the same log: %s", reason)
                self._write(Phase.OPEN)
        return action

    def _write(self, phase: Phase, **changes: Any) -> dict[str, Any]:
        state = self.files.read()
        state.update(changes, phase=phase.value, since=time.time())
        self.files.write(state)
        return state

    def _move(self, action: MoveTo, seen: Observation) -> None:
        state = self.files.read()
        if action.phase is Phase.PAUSING and seen.phase is Phase.OPEN:
            rotation = state["rotation"] + 1
            self._write(
                Phase.PAUSING, rotation=rotation, started=time.time(), topic_id_before=seen.topic_id
            )
            log.warning("broker rotation %d: pausing producers: %s", rotation, action.reason)
        elif action.phase is Phase.ADOPTING:
            self._write(Phase.ADOPTING, log=state["rotation"])
            log.info("broker rotation %d: %s", state["rotation"], action.reason)
        elif action.phase is Phase.OPEN:
            self._write(Phase.OPEN)
            paused = time.time() - state.get("started", time.time())
            log.warning(
                "broker rotation %d done: producers resume after %.1f s (%s)",
                state["rotation"],
                paused,
                action.reason,
            )
        else:
            self._write(action.phase)
            log.info("broker rotation %d: %s", state["rotation"], action.reason)

    def _restart(self, seen: Observation) -> None:
        state = self._write(Phase.RESTARTING)
        log.warning(
            "broker rotation %d: every reading is stored; restarting the broker with an empty log",
            state["rotation"],
        )
        self.broker.restart()
        self._create_topic()
        self._write(Phase.ADOPTING, log=state["rotation"])

    def _create_topic(self) -> None:
        from heartbeat_platform.streaming.topics import ensure_topic

        s = self.settings
        ensure_topic(
            self.broker.bootstrap_servers,
            s.kafka_topic,
            partitions=s.kafka_partitions,
            retention_ms=s.kafka_retention_ms,
            overrides=s.kafka_client_config,
        )

    def _log_every(self, key: str, seconds: float, level: int, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._logged_at.get(key, float("-inf")) >= seconds:
            self._logged_at[key] = now
            log.log(level, message, *args)

    def rotating(self) -> bool:
        return self.files.read()["phase"] != Phase.OPEN

    def call_off(self, why: str) -> None:
        """Let producers go on when the rotation has not touched the broker yet (pausing,
        draining): a producer started after `up` stops must not wait for a rotation nobody
        finishes. Once restarting, the next `up` finishes it (producers wait until then)."""
        state = self.files.read()
        if state["phase"] in (Phase.PAUSING, Phase.DRAINING):
            self._write(Phase.OPEN)
            log.warning("broker rotation %d called off: %s", state["rotation"], why)


class BrokerGuard(threading.Thread):
    """Steps the rotation in the background of `up`: every `interval_s` while the log is
    open, twice a second while a rotation is under way."""

    def __init__(self, rotation: BrokerRotation, interval_s: float):
        super().__init__(name="broker-guard", daemon=True)
        self.rotation = rotation
        self.interval_s = interval_s
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.rotation.step()
                busy = self.rotation.rotating()
            except Exception:  # noqa: BLE001 - the guard must outlive a passing failure
                log.exception("broker rotation step failed; trying again")
                busy = False
            if self.stopping.wait(0.5 if busy else self.interval_s):
                return

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.join(timeout=30)
        if not self.is_alive():
            self.rotation.call_off("the guard is stopping")


def broker_status(settings, broker: EmbeddedBroker) -> dict[str, Any]:
    """The embedded broker's memory, log size and rotation, for `status` (starts nothing).

    The log size is counted in messages (the sum of the partitions' log ends): the broker
    reports no bytes. Its memory is what the limit applies to.
    """
    from heartbeat_platform.streaming.lag import log_end_offsets

    lim = limits(settings)
    rss = broker_memory(broker)
    state = RotationFiles(broker.root).read()
    messages = None
    if rss is not None:
        try:
            ends = log_end_offsets(
                broker.bootstrap_servers,
                settings.kafka_topic,
                kafka_overrides=settings.kafka_client_config,
            )
            messages = sum(ends.values())
        except Exception:  # noqa: BLE001 - a missing topic or a busy broker: not known
            messages = None
    return {
        "memory_bytes": rss,
        "log_messages": messages,
        "max_log_mb": settings.heartbeat_broker_max_log_mb,
        "used": round(rss / lim.max_bytes, 3) if rss is not None else None,
        "warning": memory_warning(rss, lim),
        "rotation_phase": state["phase"],
        "rotations": state["rotation"],
        "last_rotation_at": state.get("started"),
    }
