"""Classification rule and the message contract of heartbeat_platform.domain.events."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heartbeat_platform.domain import (
    HeartbeatClass,
    HeartbeatGenerator,
    InvalidMessage,
    Reading,
    classify_heart_rate,
    encode_event,
    validate_message,
)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_REASON = 300  # reasons are stored per message, so they must stay small


_DROP = object()  # marks a field to leave out of message()


def message(**fields: object) -> bytes:
    base: dict[str, object] = {
        "customer_id": "CUST_00042",
        "heart_rate": 72,
        "timestamp": "2026-01-01T12:00:00Z",
    }
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not _DROP})


def outcome(raw: object) -> Reading | InvalidMessage:
    """The result of validation; any exception other than InvalidMessage escapes."""
    try:
        return validate_message(raw)  # type: ignore[arg-type]
    except InvalidMessage as exc:
        return exc


def reason_of(raw: object) -> str:
    result = outcome(raw)
    assert type(result) is InvalidMessage, f"expected rejection, got {result!r}"
    assert result.reason == str(result)
    assert 0 < len(result.reason) <= MAX_REASON, result.reason
    return result.reason


# --- classification -------------------------------------------------------------------


def expected_class(bpm: int) -> HeartbeatClass:
    if bpm <= 0 or bpm > 300:
        return HeartbeatClass.INVALID
    if bpm < 40:
        return HeartbeatClass.BRADYCARDIA
    if bpm > 180:
        return HeartbeatClass.TACHYCARDIA
    return HeartbeatClass.NORMAL


@given(st.integers())
def test_classification_agrees_with_the_rule_for_every_integer(bpm: int) -> None:
    assert classify_heart_rate(bpm) is expected_class(bpm)


@pytest.mark.parametrize(
    ("bpm", "expected"),
    [
        (-1, HeartbeatClass.INVALID),
        (0, HeartbeatClass.INVALID),
        (1, HeartbeatClass.BRADYCARDIA),
        (39, HeartbeatClass.BRADYCARDIA),
        (40, HeartbeatClass.NORMAL),
        (180, HeartbeatClass.NORMAL),
        (181, HeartbeatClass.TACHYCARDIA),
        (300, HeartbeatClass.TACHYCARDIA),
        (301, HeartbeatClass.INVALID),
    ],
)
def test_classification_boundaries(bpm: int, expected: HeartbeatClass) -> None:
    assert classify_heart_rate(bpm) is expected


def test_heartbeat_class_values_are_their_upper_case_names() -> None:
    assert [c.value for c in HeartbeatClass] == ["NORMAL", "BRADYCARDIA", "TACHYCARDIA", "INVALID"]
    assert HeartbeatClass.TACHYCARDIA == "TACHYCARDIA"


# --- accepted messages ----------------------------------------------------------------


def test_valid_message_becomes_a_reading() -> None:
    reading = validate_message(message())
    assert reading == Reading("CUST_00042", 72, datetime(2026, 1, 1, 12, tzinfo=UTC))
    assert reading.timestamp.tzinfo is UTC


def test_reading_is_frozen() -> None:
    reading = validate_message(message())
    with pytest.raises(AttributeError):
        reading.heart_rate = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T12:00:00Z", datetime(2026, 1, 1, 12, tzinfo=UTC)),
        ("2026-01-01T12:00:00+00:00", datetime(2026, 1, 1, 12, tzinfo=UTC)),
        ("2026-01-01T12:00:00.123456Z", datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2026-01-01T14:30:00+02:30", datetime(2026, 1, 1, 12, tzinfo=UTC)),
        ("2026-01-01T01:00:00-11:00", datetime(2026, 1, 1, 12, tzinfo=UTC)),
    ],
)
def test_timestamps_with_a_zone_are_converted_to_utc(text: str, expected: datetime) -> None:
    when = validate_message(message(timestamp=text)).timestamp
    assert when == expected
    assert when.utcoffset() == timedelta(0)
    assert when.tzinfo is UTC


@pytest.mark.parametrize("value", [72.0, -0.0, 2147483647.0, 1e2])
def test_integral_floats_are_accepted_as_ints(value: float) -> None:
    heart_rate = validate_message(message(heart_rate=value)).heart_rate
    assert heart_rate == int(value)
    assert type(heart_rate) is int


@pytest.mark.parametrize("bpm", [0, -1, 301, 400, 1000, INT32_MIN, INT32_MAX])
def test_impossible_but_storable_rates_are_valid_messages(bpm: int) -> None:
    reading = validate_message(message(heart_rate=bpm))
    assert reading.heart_rate == bpm
    assert classify_heart_rate(reading.heart_rate) is HeartbeatClass.INVALID


@pytest.mark.parametrize("cid", ["CUST_00000", "CUST_12345", "CUST_1234567890"])
def test_customer_ids_with_5_to_10_digits_are_accepted(cid: str) -> None:
    assert validate_message(message(customer_id=cid)).customer_id == cid


def test_extra_fields_are_ignored() -> None:
    raw = message(device={"model": "x", "fw": [1, 2, None]}, note="hello", heart_rate=88)
    assert validate_message(raw) == Reading("CUST_00042", 88, datetime(2026, 1, 1, 12, tzinfo=UTC))


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_like_values_are_accepted(wrap: type) -> None:
    assert validate_message(wrap(message())).heart_rate == 72


def test_encode_event_is_compact_json() -> None:
    event = {"customer_id": "CUST_00001", "heart_rate": 60, "timestamp": "2026-01-01T00:00:00Z"}
    assert encode_event(event) == (
        b'{"customer_id":"CUST_00001","heart_rate":60,"timestamp":"2026-01-01T00:00:00Z"}'
    )


def test_generated_events_round_trip() -> None:
    generator = HeartbeatGenerator(seed=7, fault_rate=0.2, anomaly_rate=0.3)
    for event in generator.generate_events(2_000):
        reading = validate_message(encode_event(event))
        assert reading.customer_id == event["customer_id"]
        assert reading.heart_rate == event["heart_rate"]
        assert reading.timestamp == datetime.fromisoformat(event["timestamp"])
        assert reading.timestamp.tzinfo is UTC


# --- rejected messages ----------------------------------------------------------------

LONG = "x" * 1_000_000

REJECTED = [
    # framing and encoding
    pytest.param(None, ["empty", "tombstone"], id="tombstone"),
    pytest.param(b"", ["empty"], id="zero-bytes"),
    pytest.param(b"\xff", ["not valid UTF-8", "0xff", "position 0"], id="bad-utf8-first"),
    pytest.param(b'{"a":"\xc3("}', ["not valid UTF-8", "0xc3", "position 6"], id="bad-utf8-inner"),
    pytest.param(b'"\xed\xa0\x80"', ["not valid UTF-8", "0xed"], id="utf8-surrogate"),
    pytest.param(123, ["must be bytes", "int"], id="not-bytes"),
    # JSON syntax
    pytest.param(b"   ", ["not valid JSON"], id="whitespace"),
    pytest.param(b'{"customer_id": "CUST_00001"', ["not valid JSON"], id="truncated"),
    pytest.param(b"{customer_id: 1}", ["not valid JSON"], id="unquoted-key"),
    pytest.param(b"NaN", ["not valid JSON"], id="nan"),
    pytest.param(b"Infinity", ["not valid JSON"], id="infinity"),
    pytest.param(b"-Infinity", ["not valid JSON"], id="minus-infinity"),
    pytest.param(
        message(heart_rate=_DROP)[:-1] + b',"heart_rate":NaN}', ["not valid JSON"], id="nan-field"
    ),
    pytest.param(
        b'{"customer_id":"\\ud800"}', ["not valid JSON", "surrogate"], id="lone-surrogate"
    ),
    pytest.param(b"[" * 100_000, ["not valid JSON"], id="deep-array"),
    pytest.param(b'{"a":' * 100_000, ["not valid JSON"], id="deep-object"),
    pytest.param(b'{"heart_rate":' + b"9" * 400 + b"}", ["not valid JSON"], id="10e400"),
    pytest.param(
        message(heart_rate=_DROP)[:-1] + b',"heart_rate":1e400}', ["not valid JSON"], id="1e400"
    ),
    # not an object
    pytest.param(b"[1, 2]", ["expected a JSON object", "array"], id="array"),
    pytest.param(b'"hello"', ["expected a JSON object", "string"], id="string"),
    pytest.param(b"42", ["expected a JSON object", "number"], id="number"),
    pytest.param(b"4.2", ["expected a JSON object", "number"], id="float"),
    pytest.param(b"null", ["expected a JSON object", "null"], id="null"),
    pytest.param(b"true", ["expected a JSON object", "bool"], id="bool"),
    # missing and null fields
    pytest.param(b"{}", ["missing field 'customer_id'"], id="empty-object"),
    pytest.param(message(customer_id=_DROP), ["missing field 'customer_id'"], id="no-customer"),
    pytest.param(message(heart_rate=_DROP), ["missing field 'heart_rate'"], id="no-rate"),
    pytest.param(message(timestamp=_DROP), ["missing field 'timestamp'"], id="no-timestamp"),
    pytest.param(message(customer_id=None), ["field 'customer_id' is null"], id="null-customer"),
    pytest.param(message(heart_rate=None), ["field 'heart_rate' is null"], id="null-rate"),
    pytest.param(message(timestamp=None), ["field 'timestamp' is null"], id="null-timestamp"),
    # customer_id
    pytest.param(
        message(customer_id=12345), ["customer_id must be a string", "number (12345)"], id="cid-int"
    ),
    pytest.param(
        message(customer_id=True), ["customer_id must be a string", "bool (true)"], id="cid-bool"
    ),
    pytest.param(
        message(customer_id=["CUST_00001"]),
        ["customer_id must be a string", "array"],
        id="cid-list",
    ),
    pytest.param(
        message(customer_id="bob"),
        ["customer_id 'bob' is malformed", "CUST_ followed by 5 to 10 digits"],
        id="cid-bob",
    ),
    pytest.param(message(customer_id="cust_00001"), ["'cust_00001' is malformed"], id="cid-lower"),
    pytest.param(message(customer_id="CUST_1234"), ["'CUST_1234' is malformed"], id="cid-short"),
    pytest.param(
        message(customer_id="CUST_12345678901"), ["'CUST_12345678901' is malformed"], id="cid-long"
    ),
    pytest.param(
        message(customer_id="CUST_00001\n"), ["'CUST_00001\\n' is malformed"], id="cid-newline"
    ),
    pytest.param(
        message(customer_id=" CUST_00001"), ["' CUST_00001' is malformed"], id="cid-space"
    ),
    pytest.param(message(customer_id="CUST_0000١"), ["is malformed"], id="cid-arabic-digit"),
    pytest.param(
        message(customer_id=LONG), ["customer_id 'xxxx", "...", "is malformed"], id="cid-huge"
    ),
    # heart_rate
    pytest.param(
        message(heart_rate="72"),
        ["heart_rate must be a number, got a string ('72')"],
        id="hr-string",
    ),
    pytest.param(
        message(heart_rate=True), ["heart_rate must be a number", "bool (true)"], id="hr-true"
    ),
    pytest.param(
        message(heart_rate=False), ["heart_rate must be a number", "bool (false)"], id="hr-false"
    ),
    pytest.param(
        message(heart_rate=72.5), ["heart_rate 72.5 is not a whole number"], id="hr-fraction"
    ),
    pytest.param(
        message(heart_rate=1e-300), ["heart_rate 1e-300 is not a whole number"], id="hr-tiny"
    ),
    pytest.param(message(heart_rate=[72]), ["heart_rate must be a number", "array"], id="hr-list"),
    pytest.param(
        message(heart_rate={"bpm": 72}), ["heart_rate must be a number", "object"], id="hr-object"
    ),
    pytest.param(
        message(heart_rate=LONG),
        ["heart_rate must be a number", "string ('xxx", "..."],
        id="hr-huge-string",
    ),
    pytest.param(
        message(heart_rate=INT32_MAX + 1),
        ["heart_rate 2147483648 is outside the range", "-2147483648..2147483647"],
        id="hr-int32-over",
    ),
    pytest.param(
        message(heart_rate=INT32_MIN - 1),
        ["heart_rate -2147483649 is outside the range"],
        id="hr-int32-under",
    ),
    pytest.param(
        message(heart_rate=99999999999),
        ["heart_rate 99999999999 is outside the range a database integer column can hold"],
        id="hr-11-digits",
    ),
    pytest.param(
        message(heart_rate=2**63 - 1),
        [f"heart_rate {2**63 - 1} is outside the range"],
        id="hr-int64-max",
    ),
    pytest.param(
        message(heart_rate=2**64 - 1),
        [f"heart_rate {2**64 - 1} is outside the range"],
        id="hr-uint64-max",
    ),
    pytest.param(
        message(heart_rate=_DROP)[:-1] + b',"heart_rate":' + b"9" * 30 + b"}",
        ["heart_rate 1e+30 is outside the range"],
        id="hr-beyond-int64",
    ),
    pytest.param(
        message(heart_rate=3e9),
        ["heart_rate 3000000000.0 is outside the range"],
        id="hr-float-over",
    ),
    pytest.param(
        message(heart_rate=-1e300), ["heart_rate -1e+300 is outside the range"], id="hr-float-huge"
    ),
    # timestamp
    pytest.param(
        message(timestamp="2026-01-01T00:00:00"),
        ["timestamp '2026-01-01T00:00:00' has no time zone; send UTC, e.g. '2026-01-01T00:00:00Z'"],
        id="ts-naive",
    ),
    pytest.param(
        message(timestamp="2026-01-01"), ["'2026-01-01' has no time zone"], id="ts-date-only"
    ),
    pytest.param(
        message(timestamp="yesterday"),
        ["timestamp 'yesterday' is not an ISO-8601 date-time"],
        id="ts-words",
    ),
    pytest.param(
        message(timestamp=""), ["timestamp '' is not an ISO-8601 date-time"], id="ts-empty"
    ),
    pytest.param(
        message(timestamp="2026-13-01T00:00:00Z"),
        ["'2026-13-01T00:00:00Z' is not an ISO-8601"],
        id="ts-month-13",
    ),
    pytest.param(
        message(timestamp="2026-01-01T00:00:00+24:00"), ["is not an ISO-8601"], id="ts-offset-24h"
    ),
    pytest.param(
        message(timestamp="01/02/2026 10:00 UTC"), ["is not an ISO-8601"], id="ts-us-format"
    ),
    pytest.param(
        message(timestamp="9999-12-31T23:59:59-01:00"),
        ["outside the range of dates"],
        id="ts-overflow-high",
    ),
    pytest.param(
        message(timestamp="0001-01-01T00:00:00+01:00"),
        ["outside the range of dates"],
        id="ts-overflow-low",
    ),
    pytest.param(
        message(timestamp=1767225600),
        ["timestamp must be an ISO-8601 string, got a number (1767225600)"],
        id="ts-epoch",
    ),
    pytest.param(
        message(timestamp={"iso": "x"}),
        ["timestamp must be an ISO-8601 string", "object"],
        id="ts-object",
    ),
    pytest.param(
        message(timestamp="2026-01-01T00:00:00Z" + "0" * 1_000_000),
        ["is not an ISO-8601", "..."],
        id="ts-huge",
    ),
]


@pytest.mark.parametrize(("raw", "fragments"), REJECTED)
def test_malformed_messages_are_rejected_with_a_reason(raw: object, fragments: list[str]) -> None:
    reason = reason_of(raw)
    for fragment in fragments:
        assert fragment in reason, f"{fragment!r} not in {reason!r}"


def test_the_first_bad_field_is_reported() -> None:
    raw = orjson.dumps({"customer_id": "bob", "heart_rate": "x", "timestamp": None})
    assert reason_of(raw).startswith("customer_id 'bob'")


def test_invalid_message_is_a_value_error_carrying_its_reason() -> None:
    with pytest.raises(ValueError, match="missing field 'timestamp'") as info:
        validate_message(message(timestamp=_DROP))
    assert isinstance(info.value, InvalidMessage)
    assert info.value.reason == "missing field 'timestamp'"


# --- properties -----------------------------------------------------------------------

CUSTOMER_ID = re.compile(r"CUST_[0-9]{5,10}")
TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)
# Whole minutes: real zones use them, and Python 3.11 drops sub-second offsets on parsing.
OFFSETS = st.integers(min_value=-1439, max_value=1439).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
NEAR_MISS = st.fixed_dictionaries(
    {},
    optional={
        "customer_id": st.from_regex(CUSTOMER_ID, fullmatch=True) | JSON_VALUES,
        "heart_rate": st.integers(min_value=-(2**40), max_value=2**40) | JSON_VALUES,
        "timestamp": st.datetimes(timezones=OFFSETS | st.none()).map(datetime.isoformat)
        | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)


def assert_sound(result: Reading | InvalidMessage) -> None:
    """Whatever came in, the result is a well-formed Reading or a short reason."""
    if isinstance(result, InvalidMessage):
        assert type(result) is InvalidMessage
        assert 0 < len(result.reason) <= MAX_REASON
        return
    assert type(result) is Reading
    assert CUSTOMER_ID.fullmatch(result.customer_id)
    assert type(result.heart_rate) is int
    assert INT32_MIN <= result.heart_rate <= INT32_MAX
    assert result.timestamp.tzinfo is UTC


@settings(max_examples=500)
@given(st.binary())
def test_arbitrary_bytes_give_a_reading_or_invalid_message(raw: bytes) -> None:
    assert_sound(outcome(raw))


@settings(max_examples=500)
@given(JSON_VALUES | NEAR_MISS)
def test_arbitrary_json_gives_a_reading_or_invalid_message(value: object) -> None:
    assert_sound(outcome(orjson.dumps(value)))


@given(
    st.from_regex(CUSTOMER_ID, fullmatch=True),
    st.integers(min_value=INT32_MIN, max_value=INT32_MAX),
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=OFFSETS,
    ),
    st.dictionaries(TEXT, JSON_VALUES, max_size=3),
)
def test_every_well_formed_message_is_accepted(
    cid: str, bpm: int, when: datetime, extra: dict
) -> None:
    event = {**extra, "customer_id": cid, "heart_rate": bpm, "timestamp": when.isoformat()}
    reading = validate_message(encode_event(event))
    assert reading == Reading(cid, bpm, when.astimezone(UTC))
    assert reading.timestamp.tzinfo is UTC
