"""The day partitions of the admissible window exist before their readings arrive.

The consumer checks at start, then every `HEARTBEAT_PARTITION_CHECK_S` (hourly), so it
never depends on the scheduler's job to be able to write tomorrow's readings. A check that
found the tables locked by a reader is tried again in a minute (they exist days ahead).
"""

from __future__ import annotations

import logging

from heartbeat_platform.domain.retention import RetentionPolicy
from heartbeat_platform.storage.writer import BatchWriter
from heartbeat_platform.streaming.outage import needs_database

log = logging.getLogger(__name__)

LOCKED_RETRY_S = 60.0


class DayPartitions:
    def __init__(self, writer: BatchWriter, policy: RetentionPolicy, every_s: float):
        self.writer = writer
        self.policy = policy
        self.every_s = every_s
        self._next_at: float | None = None  # None: at once

    def due(self, now: float) -> bool:
        return self._next_at is None or now >= self._next_at

    def ensure(self, now: float) -> None:
        """Create what is missing; raises `DatabaseUnavailable` (then still due)."""
        with needs_database("ensure partitions"):
            created = self.writer.ensure_partitions(self.policy)
        if created is None:
            log.warning("day partitions not checked: the tables are locked; retrying in %.0f s",
                        LOCKED_RETRY_S)
        self._next_at = now + (LOCKED_RETRY_S if created is None else self.every_s)
