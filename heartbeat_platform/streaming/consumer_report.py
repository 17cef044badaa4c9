"""What a consumer run did, for the CLI's JSON, the benchmark and the Dagster job."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from heartbeat_platform.domain.alerts import PipelineStats


@dataclass
class ConsumerReport:
    stats: PipelineStats
    partitions_seen: set[int]
    seconds: float
    busy_seconds: float  # first message received -> last batch committed
    rebalance_callbacks: int = 0  # partitions assigned, revoked or lost
    settled_in_rebalance: int = 0  # batches in flight when partitions moved, committed first

    @property
    def rate(self) -> float:
        """Messages committed per second while there was work."""
        return self.stats.messages_consumed / self.busy_seconds if self.busy_seconds else 0.0

    def as_dict(self) -> dict:
        stats = self.stats
        return {
            "messages": stats.messages_consumed,
            "records": stats.records_written,
            "anomalies": stats.anomalies,
            "dead_letters": stats.dead_letters,
            "duplicates_dropped": stats.duplicates_dropped,
            "batches": stats.batches,
            "rebalance_callbacks": self.rebalance_callbacks,
            "settled_in_rebalance": self.settled_in_rebalance,
            "seconds": round(self.seconds, 3),
            "busy_seconds": round(self.busy_seconds, 3),
            "messages_per_s": round(self.rate, 1),
        }


@dataclass
class Activity:
    """When a run started, got its first message and last did something: for stopping
    when idle, warning once when no partition came, and the report's rate."""

    started: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)
    first_message_at: float | None = None
    partitions_seen: set[int] = field(default_factory=set)
    warned_unassigned: bool = False
    rebalances: int = 0  # rebalance callbacks
    settled_in_rebalance: int = 0  # batches in flight when partitions moved

    def received(self, now: float) -> None:
        self.last = now
        self.first_message_at = self.first_message_at or now

    def idle(self, now: float, for_s: float) -> bool:
        """Partitions came, and no message or assignment for `for_s` since."""
        return bool(self.partitions_seen) and now - self.last >= for_s

    def unassigned_too_long(self, now: float, assigned: bool, after_s: float) -> bool:
        """True once: no partition `after_s` after the start."""
        if self.warned_unassigned or assigned or now - self.started <= after_s:
            return False
        self.warned_unassigned = True
        return True

    def report(self, stats: PipelineStats, last_commit_at: float | None) -> ConsumerReport:
        first = self.first_message_at
        busy = last_commit_at - first if first is not None and last_commit_at is not None else 0.0
        return ConsumerReport(stats, set(self.partitions_seen), time.monotonic() - self.started,
                              busy, self.rebalances, self.settled_in_rebalance)
