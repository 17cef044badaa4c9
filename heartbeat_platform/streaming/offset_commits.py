"""When to tell Kafka what PostgreSQL already holds.

The database is where a consumer resumes; Kafka's committed offsets are kept up to date
for lag tools (kafka-consumer-groups, Burrow, managed-cluster consoles) only. At most once
a second, and always when partitions go away: an offset commit per batch cut fetch
throughput by two thirds on the embedded broker, and lag tools do not need more.
"""

from __future__ import annotations


class OffsetCommitPolicy:
    """Collects offsets stored in PostgreSQL and says which to commit to Kafka, and when."""

    def __init__(self, every_s: float = 1.0):
        self.every_s = every_s
        self._pending: dict[int, int] = {}  # partition -> next offset, stored, not committed
        self._committed_at: float | None = None

    def stored(self, partition: int, next_offset: int) -> None:
        self._pending[partition] = next_offset

    def forget(self, partitions: list[int]) -> None:
        """Partitions lost without a revoke: their new owner commits them."""
        for partition in partitions:
            self._pending.pop(partition, None)

    def due(self, now: float, force: bool = False) -> dict[int, int]:
        """The offsets to commit now (and taken off the list), or nothing yet."""
        if not self._pending:
            return {}
        if not force and self._committed_at is not None and now - self._committed_at < self.every_s:
            return {}
        due, self._pending = self._pending, {}
        self._committed_at = now
        return due
