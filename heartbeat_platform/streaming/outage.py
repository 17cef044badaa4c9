"""While PostgreSQL is away: what a step says, and when the loop looks again.

A step that needs the database (write a batch, load progress, create day partitions,
register a log) never waits for it: it raises `DatabaseUnavailable` and the loop decides
what happens next. `Outage` is that decision's state, with no client and no database in
it: when the outage began, and when to try again (0.5 s, doubling to 10 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from heartbeat_platform.storage import db_errors


class DatabaseUnavailable(Exception):
    """PostgreSQL could not do `what` now (down, unreachable, or busy past the retries)."""

    def __init__(self, what: str, cause: BaseException):
        self.what = what
        self.cause = cause
        super().__init__(f"database unavailable ({what}): {db_errors.describe(cause)}")


def retry_later(exc: psycopg.Error) -> bool:
    """True for an error that waiting can fix: an outage, or a conflict or timeout that
    outlasted the writer's own retries. Anything else (content, schema, rights) is not."""
    return db_errors.classify(exc) in (db_errors.Failure.OUTAGE, db_errors.Failure.TRANSIENT)


@dataclass
class Outage:
    """When the database went away and when to look again; the loop owns one."""

    first_wait_s: float = 0.5
    longest_wait_s: float = 10.0
    since: float | None = None  # monotonic time the outage began; None: no outage
    retry_at: float = 0.0
    _wait_s: float = 0.0

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, now: float) -> float:
        """The database failed (again) at `now`; returns the wait before the next try."""
        if self.since is None:
            self.since, self._wait_s = now, self.first_wait_s
        else:
            self._wait_s = min(self._wait_s * 2, self.longest_wait_s)
        self.retry_at = now + self._wait_s
        return self._wait_s

    def due(self, now: float) -> bool:
        """Time to try the database again."""
        return self.since is not None and now >= self.retry_at

    def ended(self, now: float) -> float:
        """The database is back; returns how long it was away."""
        lasted = now - self.since if self.since is not None else 0.0
        self.since, self.retry_at, self._wait_s = None, 0.0, 0.0
        return lasted


@contextmanager
def needs_database(what: str) -> Iterator[None]:
    """Raise `DatabaseUnavailable` for what waiting can fix; anything else as it is."""
    try:
        yield
    except psycopg.Error as exc:
        if retry_later(exc):
            raise DatabaseUnavailable(what, exc) from exc
        raise
