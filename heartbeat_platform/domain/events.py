"""Heart-rate readings: the wire format, what the consumer accepts, and classification.

A Kafka message value is accepted as a :class:`Reading` when all of these hold;
anything else raises :class:`InvalidMessage` whose ``reason`` says what to fix:

* the value is present and non-empty (a ``None`` tombstone or zero bytes is rejected),
  valid UTF-8, valid JSON (``NaN`` and ``Infinity`` are not JSON) and a JSON object;
* ``customer_id``, ``heart_rate`` and ``timestamp`` are present and not null;
  other fields are allowed and ignored;
* ``customer_id`` is a string: ``CUST_`` followed by 5 to 10 digits (``CUSTOMER_ID_PATTERN``);
* ``heart_rate`` is a JSON integer, or a float with an integral value (``72.0`` -> 72);
  bools, strings and fractional numbers are rejected, and so is any value a
  PostgreSQL ``INTEGER`` column cannot hold (outside -2147483648..2147483647);
* ``timestamp`` is an ISO-8601 date-time string with a time zone (``Z`` or an offset),
  as read by :meth:`datetime.fromisoformat`; it is converted to UTC.

Rates that are impossible but storable (0, -1, 301, 400, ...) are *accepted*: they are
sensor faults that classify as ``INVALID`` and are kept as anomalies, not dead letters.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from typing import NamedTuple

import orjson

__all__ = [
    "CUSTOMER_ID_FORMAT",
    "CUSTOMER_ID_PATTERN",
    "CUSTOMER_ID_RULE",
    "MAX_CUSTOMER_NUMBER",
    "MAX_HEART_RATE",
    "NORMAL_HIGH",
    "NORMAL_LOW",
    "HeartbeatClass",
    "InvalidMessage",
    "Reading",
    "classify_heart_rate",
    "encode_event",
    "is_customer_id",
    "validate_message",
]


class HeartbeatClass(enum.StrEnum):
    """Clinical class of one reading; a ``str`` so it can be stored and compared as text."""

    NORMAL = "NORMAL"
    BRADYCARDIA = "BRADYCARDIA"
    TACHYCARDIA = "TACHYCARDIA"
    INVALID = "INVALID"


# The classification's limits in beats per minute, the one home of 40/180/300 (README, "What
# is a reading, what is a dead letter"): NORMAL_LOW..NORMAL_HIGH is NORMAL, a rate below is
# BRADYCARDIA and one above TACHYCARDIA up to MAX_HEART_RATE; 0 or less, or more than that,
# is no heart's rate but a sensor fault (INVALID). The schema holds the same numbers in
# CHECK constraints (sql/006, sql/009): tests/integration/test_shared_facts.py compares.
NORMAL_LOW = 40
NORMAL_HIGH = 180
MAX_HEART_RATE = 300

# A customer id: the prefix and 5 to 10 digits. The pattern means the same to Python's `re`
# and to PostgreSQL's `~` (the landing checks match stored rows with it in SQL).
_ID_PREFIX, _ID_MIN_DIGITS, _ID_MAX_DIGITS = "CUST_", 5, 10
CUSTOMER_ID_PATTERN = f"{_ID_PREFIX}[0-9]{{{_ID_MIN_DIGITS},{_ID_MAX_DIGITS}}}"
CUSTOMER_ID_RULE = f"{_ID_PREFIX} followed by {_ID_MIN_DIGITS} to {_ID_MAX_DIGITS} digits"
CUSTOMER_ID_FORMAT = f"{_ID_PREFIX}%0{_ID_MIN_DIGITS}d"  # customer n's id, zero-padded
MAX_CUSTOMER_NUMBER = 10**_ID_MAX_DIGITS - 1  # the largest n an id can hold

# Module-level aliases: enum attribute lookups are measurably slower on the hot path.
_NORMAL = HeartbeatClass.NORMAL
_BRADYCARDIA = HeartbeatClass.BRADYCARDIA
_TACHYCARDIA = HeartbeatClass.TACHYCARDIA
_INVALID = HeartbeatClass.INVALID


def classify_heart_rate(bpm: int) -> HeartbeatClass:
    """Classify beats per minute: 40..180 normal, 1..39 slow, 181..300 fast, else a sensor fault
    (the limits: NORMAL_LOW, NORMAL_HIGH, MAX_HEART_RATE)."""
    if NORMAL_LOW <= bpm <= NORMAL_HIGH:  # the common case first
        return _NORMAL
    if bpm <= 0 or bpm > MAX_HEART_RATE:
        return _INVALID
    if bpm < NORMAL_LOW:
        return _BRADYCARDIA
    return _TACHYCARDIA


class Reading(NamedTuple):
    """One accepted heart-rate measurement; ``timestamp`` is timezone-aware UTC.

    A NamedTuple, not a frozen dataclass: it is built once per message on the consumer's
    hot path, and a tuple is several times cheaper to construct.
    """

    customer_id: str
    heart_rate: int
    timestamp: datetime


class InvalidMessage(ValueError):
    """A message that is not a reading; ``reason`` is short and actionable, as it is stored."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_UTC = UTC
_INT_MIN = -2_147_483_648  # PostgreSQL INTEGER bounds
_INT_MAX = 2_147_483_647
_ECHO_LIMIT = 60  # characters of an offending value repeated in a reason
_ERROR_LIMIT = 120  # characters of a parser message repeated in a reason
_SEND_UTC = "send UTC, e.g. '2026-01-01T00:00:00Z'"

is_customer_id = re.compile(CUSTOMER_ID_PATTERN).fullmatch
_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError
_fromisoformat = datetime.fromisoformat

_JSON_TYPE_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a bool",
    type(None): "null",
}


def encode_event(event: dict) -> bytes:
    """Serialise an event for Kafka; the JSON format lives here next to its validator."""
    return _dumps(event)


def validate_message(raw: bytes | None) -> Reading:
    """Turn a Kafka message value into a :class:`Reading` (rules in the module docstring).

    Raises :class:`InvalidMessage` and nothing else, whatever the input, so a consumer
    can route every failure to a dead-letter table without a catch-all.
    """
    if raw is None:
        raise InvalidMessage("message is empty (a tombstone with no value)")
    try:
        obj = _loads(raw)
    except _JSONDecodeError as exc:
        raise InvalidMessage(_undecodable_reason(raw, exc)) from None
    if type(obj) is not dict:
        raise InvalidMessage(f"expected a JSON object, got {_JSON_TYPE_NAMES[type(obj)]}")

    customer_id = obj.get("customer_id")
    if type(customer_id) is not str or is_customer_id(customer_id) is None:
        raise InvalidMessage(_customer_id_reason(obj, customer_id))

    heart_rate = obj.get("heart_rate")
    if type(heart_rate) is not int or not _INT_MIN <= heart_rate <= _INT_MAX:
        heart_rate = _coerce_heart_rate(obj, heart_rate)

    timestamp = obj.get("timestamp")
    if type(timestamp) is not str:
        raise InvalidMessage(_wrong_type_reason(obj, "timestamp", timestamp, "an ISO-8601 string"))
    try:
        when = _fromisoformat(timestamp)
    except ValueError:
        raise InvalidMessage(
            f"timestamp {_echo(timestamp)} is not an ISO-8601 date-time; {_SEND_UTC}"
        ) from None
    if when.tzinfo is not _UTC:
        when = _to_utc(when, timestamp)
    return Reading(customer_id, heart_rate, when)


def _undecodable_reason(raw: object, exc: ValueError) -> str:
    """Explain why orjson refused the value, naming the first bad byte when it is encoding."""
    if not isinstance(raw, (bytes, bytearray, memoryview, str)):
        return f"message must be bytes, got {type(raw).__name__}"
    if len(raw) == 0:
        return "message is empty (zero bytes)"
    if not isinstance(raw, str):
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as err:
            bad, at = err.object[err.start], err.start
            return f"message is not valid UTF-8 (byte 0x{bad:02x} at position {at})"
    return f"message is not valid JSON: {_clip(str(exc), _ERROR_LIMIT)}"


def _customer_id_reason(obj: dict, value: object) -> str:
    if type(value) is str:
        return f"customer_id {_echo(value)} is malformed: expected {CUSTOMER_ID_RULE}"
    return _wrong_type_reason(obj, "customer_id", value, "a string")


def _coerce_heart_rate(obj: dict, value: object) -> int:
    """Slow path: accept integral floats, reject everything else with a reason."""
    if type(value) is float:
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidMessage(_out_of_range_reason(value))
        if not value.is_integer():
            raise InvalidMessage(
                f"heart_rate {value!r} is not a whole number; send an integer such as 72"
            )
        return int(value)
    if type(value) is int:
        raise InvalidMessage(_out_of_range_reason(value))
    raise InvalidMessage(_wrong_type_reason(obj, "heart_rate", value, "a number"))


def _out_of_range_reason(value: float) -> str:
    return (
        f"heart_rate {value!r} is outside the range a database integer column can hold "
        f"({_INT_MIN}..{_INT_MAX})"
    )


def _wrong_type_reason(obj: dict, name: str, value: object, expected: str) -> str:
    if value is None:
        return f"field {name!r} is null" if name in obj else f"missing field {name!r}"
    described = _JSON_TYPE_NAMES[type(value)]
    if type(value) is bool:
        described += " (true)" if value else " (false)"
    elif type(value) in (str, int, float):
        described += f" ({_echo(value)})"
    return f"{name} must be {expected}, got {described}"


def _to_utc(when: datetime, text: str) -> datetime:
    if when.tzinfo is None:
        raise InvalidMessage(f"timestamp {_echo(text)} has no time zone; {_SEND_UTC}")
    try:
        return when.astimezone(_UTC)
    except OverflowError:
        raise InvalidMessage(
            f"timestamp {_echo(text)} is outside the range of dates once converted to UTC"
        ) from None


def _echo(value: object) -> str:
    """Quote an offending value for a reason, bounded so huge payloads stay small."""
    if type(value) is str:
        return repr(value[:_ECHO_LIMIT]) + ("..." if len(value) > _ECHO_LIMIT else "")
    return _clip(repr(value), _ECHO_LIMIT)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
