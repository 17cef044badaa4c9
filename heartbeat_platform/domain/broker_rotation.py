"""When to rotate the embedded broker's log, whether it is safe, and what step comes next.

The embedded broker (Tansu's memory engine) keeps every message in memory for ever: no
retention, no DeleteRecords. A restart empties it, and the consumer reads a re-created
topic (a new topic id) as a new log from offset 0. So memory is bounded by restarting the
broker, which is safe only when nothing in it is unstored:

1. OPEN -> PAUSING: the broker's memory passed the limit and the consumer is close to the
   log end (else the rotation is refused: pausing would only stop the readings for longer).
2. PAUSING -> DRAINING: every live producer of the platform acknowledged the pause, having
   flushed what it held; nothing new reaches the broker.
3. DRAINING -> RESTARTING: the progress stored in PostgreSQL reached every partition's log
   end. Only now may the log go. Too long a wait aborts (producers resume, nothing lost).
4. RESTARTING -> ADOPTING: the broker restarted empty and the topic was created again with
   the configured partitions (before any producer resumes: Tansu would auto-create it with 4).
5. ADOPTING -> OPEN: the consumer moved its progress to the new log and its group joined
   again (or none is running): a consumer still at an old offset would read the new log's
   messages as the old log's, and one still joining would leave them waiting seconds.

Each step reads the phase from a file, so a crash at any point leaves a phase the next
`up` continues from. This module decides; `heartbeat_platform.local.rotation` acts.
Nothing here knows Kafka, PostgreSQL or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

MB = 1_048_576


class Phase(StrEnum):
    OPEN = "open"
    PAUSING = "pausing"
    DRAINING = "draining"
    RESTARTING = "restarting"
    ADOPTING = "adopting"


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # broker memory (RSS) that triggers a rotation
    max_lag_to_start: int = 100_000  # unstored readings above which a rotation is refused
    warn_fraction: float = 0.8
    pause_timeout_s: float = 60.0  # producers acknowledging, then the consumer draining
    adopt_warn_s: float = 60.0  # a consumer slow to move to the new log is logged
    # an empty group counts as "no consumer" only this long after the restart: a running
    # consumer needs its reconnect backoff (librdkafka: up to 10 s) and a join to show up
    no_consumer_grace_s: float = 15.0


@dataclass(frozen=True)
class StoredPartition:
    next_offset: int
    topic_id: str | None


@dataclass(frozen=True)
class Observation:
    """What the mechanics saw; None where a source did not answer."""

    phase: Phase
    in_phase_s: float  # seconds since the phase began
    rss_bytes: int | None  # the broker's memory; None: not running
    producers_waiting: int  # live producers that have not acknowledged the current pause
    log_ends: dict[int, int] | None  # per partition
    stored: dict[int, StoredPartition] = field(default_factory=dict)  # consumer progress
    topic_id: str | None = None  # the topic's id now (None: missing or not given)
    topic_id_before: str | None = None  # its id when the rotation began
    partitions: int | None = None  # partitions of the topic now (None: missing)
    expected_partitions: int = 3
    consumer_members: int | None = None  # members of the consumer group (None: unknown)
    consumer_rebalancing: bool = False  # the group is (re)joining: its members do not fetch


@dataclass(frozen=True)
class Stay:
    """Nothing to do now; `note` says why when it is worth a log line."""

    note: str = ""


@dataclass(frozen=True)
class Refuse:
    """Over the limit, but rotating now is not safe or not useful; try again later."""

    reason: str


@dataclass(frozen=True)
class MoveTo:
    """Enter `phase` (the mechanics write it down first, then act on it)."""

    phase: Phase
    reason: str = ""


@dataclass(frozen=True)
class Restart:
    """Nothing is unstored: restart the broker empty and create the topic again."""


@dataclass(frozen=True)
class CreateTopic:
    """The broker restarted but the topic is not there yet."""


@dataclass(frozen=True)
class Abort:
    """Give up this rotation: producers resume on the same log, nothing is lost."""

    reason: str


Action = Stay | Refuse | MoveTo | Restart | CreateTopic | Abort


def lag(log_ends: dict[int, int], stored: dict[int, StoredPartition], topic_id: str | None) -> int:
    """Readings in the log the consumer has not stored. Progress stored under another topic
    id belongs to an earlier log and counts as nothing: its offsets say nothing of this one."""

    def done(p: int) -> int:
        s = stored.get(p)
        if s is None or (topic_id and s.topic_id and s.topic_id != topic_id):
            return 0
        return s.next_offset

    return sum(max(0, end - done(p)) for p, end in log_ends.items())


def memory_warning(rss_bytes: int | None, limits: Limits) -> str | None:
    """A line worth logging once the broker's memory passes `warn_fraction` of the limit."""
    if rss_bytes is None or rss_bytes < limits.warn_fraction * limits.max_bytes:
        return None
    return (
        f"embedded broker uses {rss_bytes / MB:.0f} MB, {rss_bytes / limits.max_bytes:.0%} of "
        f"HEARTBEAT_BROKER_MAX_LOG_MB={limits.max_bytes / MB:.0f}: its log is rotated at the limit"
    )


def decide(seen: Observation, limits: Limits) -> Action:
    """The next step of the rotation; see the module docstring for why each rule holds."""
    restarted = (
        seen.phase is not Phase.OPEN
        and seen.topic_id_before is not None
        and seen.topic_id is not None
        and seen.topic_id != seen.topic_id_before
    )
    if seen.phase in (Phase.PAUSING, Phase.DRAINING, Phase.RESTARTING) and restarted:
        # the broker restarted under us (a crash, `down`): its old log is gone either way
        return MoveTo(Phase.ADOPTING, "the broker restarted: its topic has a new id")
    match seen.phase:
        case Phase.OPEN:
            return _open(seen, limits)
        case Phase.PAUSING:
            if seen.producers_waiting == 0:
                return MoveTo(Phase.DRAINING, "every producer paused and flushed")
            if seen.in_phase_s > limits.pause_timeout_s:
                return Abort(
                    f"{seen.producers_waiting} producers did not pause in "
                    f"{limits.pause_timeout_s:.0f} s"
                )
            return Stay()
        case Phase.DRAINING:
            return _draining(seen, limits)
        case Phase.RESTARTING:
            if seen.rss_bytes is None:  # stopped, not started again (a crash between)
                return Restart()
            if seen.partitions is None:
                return CreateTopic()
            if _drained(seen):  # still the old log: restarting it loses nothing
                return Restart()
            return MoveTo(Phase.DRAINING, "the old log has readings the consumer has not stored")
        case Phase.ADOPTING:
            return _adopting(seen, limits)
    raise AssertionError(seen.phase)


def _open(seen: Observation, limits: Limits) -> Action:
    if seen.rss_bytes is None or seen.rss_bytes < limits.max_bytes:
        return Stay()
    if seen.log_ends is None:
        return Refuse("the log end of the topic is not known")
    behind = lag(seen.log_ends, seen.stored, seen.topic_id)
    if behind > limits.max_lag_to_start:
        return Refuse(
            f"the consumer has {behind:,} readings to store (more than {limits.max_lag_to_start:,}"
            "): the log may only go once it has stored them"
        )
    return MoveTo(
        Phase.PAUSING,
        f"the broker uses {seen.rss_bytes / MB:.0f} MB (limit {limits.max_bytes / MB:.0f} MB)",
    )


def _drained(seen: Observation) -> bool:
    return seen.log_ends is not None and lag(seen.log_ends, seen.stored, seen.topic_id) == 0


def _draining(seen: Observation, limits: Limits) -> Action:
    if seen.producers_waiting:  # a producer that started since: it must pause too
        return MoveTo(Phase.PAUSING, f"{seen.producers_waiting} producers still to pause")
    if _drained(seen):
        return Restart()
    if seen.in_phase_s > limits.pause_timeout_s:
        behind = (
            lag(seen.log_ends, seen.stored, seen.topic_id) if seen.log_ends is not None else None
        )
        return Abort(
            f"the consumer still has {behind if behind is not None else 'an unknown number of'}"
            f" readings to store after {limits.pause_timeout_s:.0f} s"
        )
    return Stay()


def _adopting(seen: Observation, limits: Limits) -> Action:
    if seen.partitions is None:
        return CreateTopic()
    if seen.partitions != seen.expected_partitions:
        return Stay(
            f"the topic has {seen.partitions} partitions, not {seen.expected_partitions}: "
            "something produced before it was created; producers stay paused"
        )
    moved = all(
        s.next_offset == 0 or (seen.topic_id is not None and s.topic_id == seen.topic_id)
        for s in seen.stored.values()
    )
    if moved and seen.consumer_members != 0 and not seen.consumer_rebalancing:
        # the restart emptied the group: a stable group is one that joined again, so
        # readings sent now are fetched at once rather than after its join
        return MoveTo(Phase.OPEN, "the consumer reads the new log")
    if seen.consumer_members == 0 and seen.in_phase_s >= limits.no_consumer_grace_s:
        return MoveTo(
            Phase.OPEN, "no consumer runs: one that starts compares topic ids and reads the new log"
        )
    if seen.in_phase_s > limits.adopt_warn_s:
        return Stay("the consumer has not moved to the new log yet; producers stay paused")
    return Stay()
