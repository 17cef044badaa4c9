"""What a failed batch write means (SQLSTATE), and finding the messages that cause it."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from heartbeat_platform.storage.db_errors import Failure, TooManyFailures, classify, find_failing


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (psycopg.OperationalError("connection refused"), Failure.OUTAGE),  # no SQLSTATE
        (errors.AdminShutdown(), Failure.OUTAGE),
        (errors.CannotConnectNow(), Failure.OUTAGE),
        (errors.DiskFull(), Failure.OUTAGE),
        (errors.QueryCanceled(), Failure.TRANSIENT),  # statement timeout: an OperationalError
        (errors.SerializationFailure(), Failure.TRANSIENT),
        (errors.DeadlockDetected(), Failure.TRANSIENT),
        (errors.LockNotAvailable(), Failure.TRANSIENT),
        (errors.StringDataRightTruncation(), Failure.CONTENT),
        (errors.CheckViolation(), Failure.CONTENT),
        (errors.NumericValueOutOfRange(), Failure.CONTENT),
        (errors.ProgramLimitExceeded(), Failure.CONTENT),  # an OperationalError too
        (errors.UndefinedTable(), Failure.FATAL),
        (errors.InsufficientPrivilege(), Failure.FATAL),
        (ValueError("a bug"), Failure.FATAL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.value,
)
def test_sqlstate_decides_what_a_failure_is(error, failure) -> None:
    assert classify(error) is failure


def bad_when(bad: set[int]):
    calls = []

    def attempt(part):
        calls.append(list(part))
        return ValueError(f"bad {sorted(bad & set(part))}") if bad & set(part) else None

    return attempt, calls


def test_finds_the_one_bad_message_in_few_attempts() -> None:
    attempt, calls = bad_when({613})
    failing = find_failing(list(range(1_000)), attempt, limit=10)
    assert list(failing) == [613]
    assert "613" in str(failing[613])
    assert len(calls) <= 2 * 10 + 1  # about 2 * log2(1000)


def test_finds_every_bad_message_and_nothing_else() -> None:
    attempt, _ = bad_when({0, 17, 18, 999})
    assert sorted(find_failing(list(range(1_000)), attempt, limit=10)) == [0, 17, 18, 999]


def test_a_clean_batch_takes_one_attempt() -> None:
    attempt, calls = bad_when(set())
    assert find_failing(list(range(100)), attempt, limit=10) == {}
    assert calls == [list(range(100))]


def test_too_many_bad_messages_is_not_a_message_problem() -> None:
    attempt, _ = bad_when(set(range(50)))
    with pytest.raises(TooManyFailures):
        find_failing(list(range(100)), attempt, limit=10)
