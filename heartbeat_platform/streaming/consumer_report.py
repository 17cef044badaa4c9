"""What a consumer run did, for the CLI's JSON, the benchmark and the Dagster job."""

from __future__ import annotations

from dataclasses import dataclass

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
