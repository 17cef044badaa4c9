"""Synthetic heart-rate events for a pool of customers.

Each reading is, independently: a sensor fault with probability ``fault_rate``; otherwise
a cardiac anomaly with probability ``anomaly_rate`` (half bradycardia 15..39, half
tachycardia 181..220); otherwise a normal rate ``round(gauss(75, 15))`` clamped to 40..180.
Because the rolls are sequential, any pair of rates in [0, 1] is coherent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from heartbeat_platform.domain.events import (
    CUSTOMER_ID_FORMAT,
    MAX_CUSTOMER_NUMBER,
    NORMAL_HIGH,
    NORMAL_LOW,
)

__all__ = [
    "BRADYCARDIA_RATES",
    "BRADYCARDIA_SHARE",
    "DEFAULT_ANOMALY_RATE",
    "DEFAULT_CUSTOMER_COUNT",
    "DEFAULT_FAULT_RATE",
    "DESIGN_RATE",
    "MAX_CUSTOMER_COUNT",
    "NORMAL_MEAN",
    "NORMAL_SD",
    "SENSOR_FAULT_VALUES",
    "TACHYCARDIA_RATES",
    "HeartbeatGenerator",
    "customer_id",
]

DEFAULT_CUSTOMER_COUNT = 10_000
# The design rate (README, "Performance"): the default pool, every customer once a second;
# readings a second.
DESIGN_RATE = DEFAULT_CUSTOMER_COUNT
DEFAULT_ANOMALY_RATE = 0.05
DEFAULT_FAULT_RATE = 0.005
SENSOR_FAULT_VALUES = (0, -1, 301, 400)
MAX_CUSTOMER_COUNT = MAX_CUSTOMER_NUMBER  # the most digits a customer id the consumer accepts
# The draw's parameters, public because `heartbeat-platform bench` draws its history the
# same way in SQL (bench.history reads them from here). A normal rate is
# round(gauss(NORMAL_MEAN, NORMAL_SD)) clamped to the NORMAL range; a cardiac anomaly is
# bradycardia with BRADYCARDIA_SHARE, from 15 up to the NORMAL range, else tachycardia from
# just above it up to 220 (the classification's limits, domain.events, draw the line).
NORMAL_MEAN, NORMAL_SD = 75.0, 15.0
BRADYCARDIA_SHARE = 0.5
BRADYCARDIA_RATES = range(15, NORMAL_LOW)  # 15..39
TACHYCARDIA_RATES = range(NORMAL_HIGH + 1, 221)  # 181..220
# Module-level ints: the hot path reads no range attributes.
_SLOWEST, _BRADYCARDIA_SPAN = BRADYCARDIA_RATES.start, len(BRADYCARDIA_RATES)
_TACHYCARDIA_FROM, _TACHYCARDIA_SPAN = TACHYCARDIA_RATES.start, len(TACHYCARDIA_RATES)
_FAULTS = len(SENSOR_FAULT_VALUES)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
_time_ns = time.time_ns


def customer_id(n: int) -> str:
    """Customer ``n`` of the pool (1-based), e.g. ``CUST_00042``."""
    return CUSTOMER_ID_FORMAT % n  # %-format: about twice as fast as an f-string here


class HeartbeatGenerator:
    """Seeded source of heart-rate events; the same seed gives the same customers and rates.

    Timestamps come from ``clock`` (default: now in UTC) but are made strictly increasing,
    one microsecond apart at least, because downstream deduplicates on
    (customer_id, timestamp) and two events must never collide by accident.
    """

    __slots__ = (
        "customer_count",
        "anomaly_rate",
        "fault_rate",
        "_rng",
        "_clock",
        "_last_micros",
        "_prefix_second",
        "_prefix",
    )

    def __init__(
        self,
        customer_count: int = DEFAULT_CUSTOMER_COUNT,
        anomaly_rate: float = DEFAULT_ANOMALY_RATE,
        fault_rate: float = DEFAULT_FAULT_RATE,
        seed: int | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if type(customer_count) is not int or not 1 <= customer_count <= MAX_CUSTOMER_COUNT:
            raise ValueError(
                f"customer_count must be an integer from 1 to {MAX_CUSTOMER_COUNT}, "
                f"got {customer_count!r}"
            )
        for name, rate in (("anomaly_rate", anomaly_rate), ("fault_rate", fault_rate)):
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise ValueError(f"{name} must be a probability from 0 to 1, got {rate!r}")
        self.customer_count = customer_count
        self.anomaly_rate = float(anomaly_rate)
        self.fault_rate = float(fault_rate)
        self._rng = random.Random(seed)
        self._clock = clock  # None: read the system clock directly, the fast path
        self._last_micros = -1
        self._prefix_second: int | None = None
        self._prefix = ""

    def generate_heart_rate(self) -> int:
        """One rate in beats per minute, drawn as described in the module docstring."""
        rng = self._rng
        random_ = rng.random
        if random_() < self.fault_rate:
            return SENSOR_FAULT_VALUES[int(random_() * _FAULTS)]
        if random_() < self.anomaly_rate:
            if random_() < BRADYCARDIA_SHARE:
                return _SLOWEST + int(random_() * _BRADYCARDIA_SPAN)
            return _TACHYCARDIA_FROM + int(random_() * _TACHYCARDIA_SPAN)
        bpm = round(rng.gauss(NORMAL_MEAN, NORMAL_SD))
        return NORMAL_LOW if bpm < NORMAL_LOW else NORMAL_HIGH if bpm > NORMAL_HIGH else bpm

    def generate_heartbeat_event(self) -> dict:
        """A wire-ready event: ``customer_id``, ``heart_rate`` and a ``...Z`` UTC timestamp."""
        return {
            "customer_id": customer_id(1 + int(self._rng.random() * self.customer_count)),
            "heart_rate": self.generate_heart_rate(),
            "timestamp": self._next_timestamp(),
        }

    def generate_events(self, n: int) -> list[dict]:
        """``n`` events in a row, for producers that send in batches."""
        event = self.generate_heartbeat_event
        return [event() for _ in range(n)]

    def _next_timestamp(self) -> str:
        """ISO-8601 UTC with microseconds and ``Z``, strictly later than the previous one."""
        clock = self._clock
        micros = _time_ns() // 1000 if clock is None else _epoch_micros(clock())
        if micros <= self._last_micros:
            micros = self._last_micros + 1
        self._last_micros = micros
        second, fraction = divmod(micros, 1_000_000)
        if second != self._prefix_second:  # formatting a whole date is slow; once a second
            self._prefix_second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return "%s.%06dZ" % (self._prefix, fraction)  # noqa: UP031 - faster than f-string


def _epoch_micros(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("clock returned a naive datetime; it must be timezone-aware")
    return (when - _EPOCH) // _ONE_MICROSECOND
