"""Waiting out a database outage, and coming back at the progress stored there.

While PostgreSQL is away the loop polls only to serve rebalances, every partition paused,
and asks `OutageWait.attempt` each round: when the outage's backoff says so the database
is tried, every cursor goes back to the stored progress (a batch abandoned in the outage
may have committed or not) and the partitions assigned meanwhile are opened. A failed try
only moves the next one later. No client here: the loop seeks what this returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from heartbeat_platform.storage.writer import BatchWriter
from heartbeat_platform.streaming.batch_builder import Cursor
from heartbeat_platform.streaming.cursors import Cursors, position
from heartbeat_platform.streaming.outage import DatabaseUnavailable, Outage, needs_database
from heartbeat_platform.streaming.positions import Positions

log = logging.getLogger(__name__)


class OutageWait:
    def __init__(
        self, outage: Outage, writer: BatchWriter, cursors: Cursors, positions: Positions,
        open_cursors: Callable[[list[int]], dict[int, Cursor]],
    ):
        """`outage`: its state and backoff. `open_cursors`: cursors at the stored progress
        for partitions not opened yet (the loop's: it asks the broker where a log the
        group never read starts)."""
        self.outage = outage
        self.writer = writer
        self.cursors = cursors
        self.positions = positions
        self._open = open_cursors

    def failed(self, exc: DatabaseUnavailable, now: float) -> None:
        """The database failed (again) at `now`: say so, and when it is tried next."""
        log.error("%s; retrying in %.1fs", exc, self.outage.failed(now))

    def attempt(self, now: float) -> dict[int, Cursor] | None:
        """None: not back yet (not due, or the try failed). Otherwise the database is back,
        every cursor is at the stored progress, and these are the cursors of the partitions
        assigned during the outage."""
        if not self.outage.due(now):
            return None
        try:
            with needs_database("reconnect"):
                self.writer.ping()
                self.cursors.reload(list(self.cursors))
                unopened = self.positions.unopened
                return self._open(sorted(unopened)) if unopened else {}
        except DatabaseUnavailable as exc:
            self.failed(exc, now)
            return None

    def ended(self, now: float, opened: dict[int, Cursor]) -> None:
        """The loop reads again from `now` on: the outage is over."""
        log.info("database is back after %.1f s: resuming from the stored progress",
                 self.outage.ended(now))
        if opened:
            log.info("assigned at offsets %s", {p: position(c) for p, c in opened.items()})
