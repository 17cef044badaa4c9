"""Distribution, determinism and wire format of heartbeat_platform.domain.generator."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest

from heartbeat_platform.domain import (
    DEFAULT_ANOMALY_RATE,
    DEFAULT_CUSTOMER_COUNT,
    DEFAULT_FAULT_RATE,
    MAX_CUSTOMER_COUNT,
    SENSOR_FAULT_VALUES,
    HeartbeatClass,
    HeartbeatGenerator,
    classify_heart_rate,
    customer_id,
    encode_event,
    validate_message,
)

DRAWS = 200_000
WIRE_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def fixed_clock(when: datetime):
    return lambda: when


def assert_proportion(hits: int, n: int, p: float) -> None:
    """Within 4 binomial standard deviations: fails by chance about once in 16,000 runs."""
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) <= 4 * sigma, f"{hits / n:.5f} is not within 4 sigma of {p}"


def kind(bpm: int) -> str:
    if bpm in SENSOR_FAULT_VALUES:
        return "fault"
    if 15 <= bpm <= 39:
        return "bradycardia"
    if 181 <= bpm <= 220:
        return "tachycardia"
    assert 40 <= bpm <= 180, f"{bpm} is outside every range the generator may produce"
    return "normal"


@pytest.fixture(scope="module")
def default_rates() -> list[int]:
    generator = HeartbeatGenerator(seed=20260101)
    return [generator.generate_heart_rate() for _ in range(DRAWS)]


def test_defaults() -> None:
    assert DEFAULT_CUSTOMER_COUNT == 10_000
    assert DEFAULT_ANOMALY_RATE == 0.05
    assert DEFAULT_FAULT_RATE == 0.005
    assert SENSOR_FAULT_VALUES == (0, -1, 301, 400)
    generator = HeartbeatGenerator()
    assert (generator.customer_count, generator.anomaly_rate, generator.fault_rate) == (
        10_000,
        0.05,
        0.005,
    )


def test_default_proportions_are_within_statistical_bounds(default_rates: list[int]) -> None:
    kinds = Counter(kind(bpm) for bpm in default_rates)
    anomaly_each = (1 - DEFAULT_FAULT_RATE) * DEFAULT_ANOMALY_RATE / 2
    assert_proportion(kinds["fault"], DRAWS, DEFAULT_FAULT_RATE)
    assert_proportion(kinds["bradycardia"], DRAWS, anomaly_each)
    assert_proportion(kinds["tachycardia"], DRAWS, anomaly_each)


def test_every_value_of_each_range_occurs(default_rates: list[int]) -> None:
    seen = set(default_rates)
    assert seen >= set(SENSOR_FAULT_VALUES)
    assert seen >= set(range(15, 40))
    assert seen >= set(range(181, 221))
    assert min(seen) == -1
    assert max(seen) == 400


def test_faults_are_the_four_values_equally_often(default_rates: list[int]) -> None:
    faults = Counter(bpm for bpm in default_rates if bpm in SENSOR_FAULT_VALUES)
    total = sum(faults.values())
    for value in SENSOR_FAULT_VALUES:
        assert_proportion(faults[value], total, 0.25)


def test_normal_rates_centre_on_75(default_rates: list[int]) -> None:
    normal = [bpm for bpm in default_rates if kind(bpm) == "normal"]
    assert min(normal) == 40  # 2.4 sigma below: clamped often; 180 is 7 sigma above
    assert max(normal) <= 180
    # Clamping at 40 lifts the mean by about 0.05; 4 standard errors here are about 0.14.
    assert abs(statistics.fmean(normal) - 75) < 0.2
    assert 14.0 < statistics.pstdev(normal) < 15.5
    assert abs(statistics.median(normal) - 75) <= 1


def test_classification_of_generated_rates_matches_their_kind(default_rates: list[int]) -> None:
    expected = {
        "fault": HeartbeatClass.INVALID,
        "bradycardia": HeartbeatClass.BRADYCARDIA,
        "tachycardia": HeartbeatClass.TACHYCARDIA,
        "normal": HeartbeatClass.NORMAL,
    }
    for bpm in set(default_rates):
        assert classify_heart_rate(bpm) is expected[kind(bpm)]


@pytest.mark.parametrize(
    ("anomaly_rate", "fault_rate"), [(0.0, 0.0), (0.2, 0.0), (0.0, 0.1), (0.3, 0.05)]
)
def test_custom_rates_are_honoured(anomaly_rate: float, fault_rate: float) -> None:
    generator = HeartbeatGenerator(anomaly_rate=anomaly_rate, fault_rate=fault_rate, seed=3)
    n = 50_000
    kinds = Counter(kind(generator.generate_heart_rate()) for _ in range(n))
    each = (1 - fault_rate) * anomaly_rate / 2
    assert_proportion(kinds["fault"], n, fault_rate)
    assert_proportion(kinds["bradycardia"], n, each)
    assert_proportion(kinds["tachycardia"], n, each)
    if anomaly_rate == fault_rate == 0:
        assert kinds == {"normal": n}


def test_certain_rates() -> None:
    faults = HeartbeatGenerator(fault_rate=1.0, seed=1)
    assert {faults.generate_heart_rate() for _ in range(1_000)} == set(SENSOR_FAULT_VALUES)
    anomalies = HeartbeatGenerator(anomaly_rate=1.0, fault_rate=0.0, seed=1)
    kinds = Counter(kind(anomalies.generate_heart_rate()) for _ in range(10_000))
    assert set(kinds) == {"bradycardia", "tachycardia"}
    assert_proportion(kinds["bradycardia"], 10_000, 0.5)


def test_customer_id_format() -> None:
    assert customer_id(1) == "CUST_00001"
    assert customer_id(10_000) == "CUST_10000"
    assert customer_id(123_456) == "CUST_123456"
    assert customer_id(MAX_CUSTOMER_COUNT) == "CUST_9999999999"


def test_customers_come_uniformly_from_the_default_pool() -> None:
    events = HeartbeatGenerator(seed=11).generate_events(50_000)
    numbers = [int(event["customer_id"].removeprefix("CUST_")) for event in events]
    assert all(
        event["customer_id"] == customer_id(n) for event, n in zip(events, numbers, strict=True)
    )
    assert min(numbers) >= 1
    assert max(numbers) <= DEFAULT_CUSTOMER_COUNT
    assert_proportion(sum(n <= 5_000 for n in numbers), len(numbers), 0.5)


@pytest.mark.parametrize("count", [1, 7, 100])
def test_custom_pool_is_used_entirely_and_only(count: int) -> None:
    events = HeartbeatGenerator(customer_count=count, seed=5).generate_events(5_000)
    assert {event["customer_id"] for event in events} == {
        customer_id(n) for n in range(1, count + 1)
    }


def test_largest_pool_ids_are_accepted_by_the_consumer() -> None:
    generator = HeartbeatGenerator(customer_count=MAX_CUSTOMER_COUNT, seed=2)
    for event in generator.generate_events(1_000):
        assert validate_message(encode_event(event)).customer_id == event["customer_id"]


def test_same_seed_gives_the_same_sequence() -> None:
    clock = fixed_clock(datetime(2026, 5, 1, tzinfo=UTC))
    first = HeartbeatGenerator(seed=42, clock=clock).generate_events(1_000)
    second = HeartbeatGenerator(seed=42, clock=clock).generate_events(1_000)
    other = HeartbeatGenerator(seed=43, clock=clock).generate_events(1_000)
    assert first == second
    assert [e["customer_id"] for e in first] != [e["customer_id"] for e in other]
    assert [e["heart_rate"] for e in first] != [e["heart_rate"] for e in other]


def test_event_shape_and_timestamp_are_utc_with_microseconds() -> None:
    before = datetime.now(UTC)
    event = HeartbeatGenerator(seed=1).generate_heartbeat_event()
    after = datetime.now(UTC)
    assert set(event) == {"customer_id", "heart_rate", "timestamp"}
    assert type(event["heart_rate"]) is int
    assert WIRE_TIMESTAMP.fullmatch(event["timestamp"]), event["timestamp"]
    when = datetime.fromisoformat(event["timestamp"])
    assert when.tzinfo is UTC
    assert before - timedelta(microseconds=1) <= when <= after + timedelta(microseconds=1)


def test_timestamps_follow_the_clock_and_never_repeat() -> None:
    start = datetime(2026, 1, 1, 23, 59, 59, 999_998, tzinfo=UTC)
    events = HeartbeatGenerator(seed=1, clock=fixed_clock(start)).generate_events(4)
    assert [e["timestamp"] for e in events] == [
        "2026-01-01T23:59:59.999998Z",
        "2026-01-01T23:59:59.999999Z",
        "2026-01-02T00:00:00.000000Z",
        "2026-01-02T00:00:00.000001Z",
    ]


def test_timestamps_from_the_system_clock_strictly_increase() -> None:
    stamps = [e["timestamp"] for e in HeartbeatGenerator(seed=1).generate_events(20_000)]
    assert all(WIRE_TIMESTAMP.fullmatch(s) for s in stamps)
    parsed = [datetime.fromisoformat(s) for s in stamps]
    assert all(a < b for a, b in pairwise(parsed))


def test_clock_in_another_zone_is_converted_to_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    clock = fixed_clock(datetime(2026, 3, 1, 9, 0, 0, 123_456, tzinfo=tokyo))
    event = HeartbeatGenerator(clock=clock).generate_heartbeat_event()
    assert event["timestamp"] == "2026-03-01T00:00:00.123456Z"


def test_a_clock_that_goes_back_does_not_break_ordering() -> None:
    times = iter([datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)])
    generator = HeartbeatGenerator(clock=lambda: next(times))
    stamps = [e["timestamp"] for e in generator.generate_events(2)]
    assert stamps == ["2026-01-01T00:00:01.000000Z", "2026-01-01T00:00:01.000001Z"]


def test_naive_clock_is_refused() -> None:
    generator = HeartbeatGenerator(clock=fixed_clock(datetime(2026, 1, 1)))
    with pytest.raises(ValueError, match="naive"):
        generator.generate_heartbeat_event()


def test_generate_events_count() -> None:
    generator = HeartbeatGenerator(seed=9)
    assert generator.generate_events(0) == []
    assert len(generator.generate_events(123)) == 123


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"customer_count": 0}, "customer_count"),
        ({"customer_count": -5}, "customer_count"),
        ({"customer_count": MAX_CUSTOMER_COUNT + 1}, "customer_count"),
        ({"customer_count": 10.0}, "customer_count"),
        ({"customer_count": True}, "customer_count"),
        ({"customer_count": "100"}, "customer_count"),
        ({"anomaly_rate": -0.01}, "anomaly_rate"),
        ({"anomaly_rate": 1.01}, "anomaly_rate"),
        ({"anomaly_rate": float("nan")}, "anomaly_rate"),
        ({"anomaly_rate": "0.1"}, "anomaly_rate"),
        ({"anomaly_rate": True}, "anomaly_rate"),
        ({"fault_rate": -1}, "fault_rate"),
        ({"fault_rate": 2}, "fault_rate"),
        ({"fault_rate": float("inf")}, "fault_rate"),
        ({"fault_rate": None}, "fault_rate"),
    ],
)
def test_invalid_arguments_are_refused(kwargs: dict, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        HeartbeatGenerator(**kwargs)


def test_boundary_arguments_are_allowed() -> None:
    generator = HeartbeatGenerator(customer_count=1, anomaly_rate=0, fault_rate=1)
    assert generator.fault_rate == 1.0
    assert HeartbeatGenerator(customer_count=MAX_CUSTOMER_COUNT).customer_count == (
        MAX_CUSTOMER_COUNT
    )
