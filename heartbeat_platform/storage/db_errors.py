"""What a failed batch write means, and how to find the message that caused it.

A batch can fail because the database is away (wait for it, then re-read the batch),
because of a passing conflict (try the same batch again), because of one message's content
(a value a column or constraint refuses: find that message, store it as a dead letter with
the database's error, write the rest) or because of something no retry fixes (a missing
table, missing rights: stop with the error). psycopg's exception classes do not draw these
lines (a statement timeout and a lost connection are both OperationalError), the SQLSTATE
does.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TypeVar

import psycopg


class Failure(enum.Enum):
    OUTAGE = "outage"  # the server is unreachable, shutting down or out of resources
    TRANSIENT = "transient"  # a conflict or timeout that the same write may not meet again
    CONTENT = "content"  # a row the database refuses: tied to a message
    FATAL = "fatal"  # schema, rights or a bug: retrying cannot help


_TRANSIENT_STATES = {"40001", "40P01", "55P03", "57014"}  # serialization, deadlock, lock, timeout
_OUTAGE_STATES = {"57P01", "57P02", "57P03"}  # admin/crash shutdown, cannot connect now
_OUTAGE_CLASSES = {"08", "53", "58"}  # connection, insufficient resources, system (I/O)
_CONTENT_CLASSES = {"22", "23", "54"}  # data exception, integrity constraint, program limit


def classify(exc: BaseException) -> Failure:
    """The kind of failure a psycopg error is (see the module docstring)."""
    state = getattr(exc, "sqlstate", None)
    if state is None:  # no answer from a server: the connection itself failed
        return Failure.OUTAGE if isinstance(exc, psycopg.OperationalError) else Failure.FATAL
    if state in _TRANSIENT_STATES:
        return Failure.TRANSIENT
    if state in _OUTAGE_STATES or state[:2] in _OUTAGE_CLASSES:
        return Failure.OUTAGE
    if state[:2] in _CONTENT_CLASSES:
        return Failure.CONTENT
    return Failure.FATAL


def describe(exc: BaseException) -> str:
    """One line for a log or a dead letter's reason: SQLSTATE and the server's message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    state = getattr(exc, "sqlstate", None)
    return f"{text} (SQLSTATE {state})" if state else text


class TooManyFailures(RuntimeError):
    """More messages of one batch fail than a content problem explains."""


T = TypeVar("T")


def find_failing(
    items: Sequence[T], attempt: Callable[[Sequence[T]], BaseException | None], limit: int
) -> dict[T, BaseException]:
    """The items that fail on their own, by halving: `attempt(part)` writes `part` (and undoes
    it) and returns the error, or None when it went through.

    A handful of bad items among n costs about 2 * log2(n) attempts each. More than `limit`
    failing items raise TooManyFailures: that is not one bad message but a bad table.
    """
    failing: dict[T, BaseException] = {}

    def search(part: Sequence[T], error: BaseException | None) -> None:
        if error is None:
            return
        if len(part) == 1:
            failing[part[0]] = error
            if len(failing) > limit:
                raise TooManyFailures(
                    f"more than {limit} messages of one batch fail: {describe(error)}"
                )
            return
        middle = len(part) // 2
        for half in (part[:middle], part[middle:]):
            search(half, attempt(half))

    search(items, attempt(items))
    return failing
