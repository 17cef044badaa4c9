"""The cold tier's pack: one customer's readings of one UTC hour in a few arrays.

Readings older than the hot days are kept as one row per customer and hour (sql/012,
`heartbeat_cold`) whose columns are arrays PostgreSQL compresses (TOAST) and unpacks in
plain SQL (`heartbeat_cold_unpack`). This module is the reference for that format: it
packs and unpacks in Python, and tests/integration/test_cold_tier.py holds the SQL to it.

A pack holds a multiset of readings (event time, bpm, raw payload), sorted by time, then
bpm, then payload, so a customer-hour packs to the same bytes whatever order its rows came
in. Duplicates are kept as given (the hot tables hold a reading once per customer and time
in each of records and anomalies, sql/007, so only a record and an anomaly can share a
time). Columns:

* ``seconds`` (int2[]): whole seconds since the previous reading (the first: since the
  hour's start), so 0..3599 and mostly 0 or 1 at the design rate: small and repetitive.
* ``micro_step`` (int4) and ``micros`` (bytea): each reading's microsecond within its
  second is ``micro_step`` times its entry in ``micros``, whose entries are all as wide as
  the largest needs, 0 to 3 bytes big-endian (``length(micros) / readings``). The step is
  the greatest common divisor of the pack's microseconds, so a clock that ticks in
  milliseconds, or in the generator's fractions of a second, costs 1-2 bytes a reading
  instead of 3, and whole seconds none (step 0, ``micros`` empty).
* ``bpm`` (bytea): one byte per reading, the rate itself when it is 1..255 (every NORMAL,
  BRADYCARDIA and TACHYCARDIA rate, and most faults); 0 stands for "the next value of
  ``bpm_wide``" (int4[], NULL when empty): the other sensor faults (0, -1, 301, 400, ...).
* ``payloads`` (text[]): an anomaly's raw JSON as the consumer received it, except NULL
  when it is exactly `canonical_payload` of the reading (what the generator and
  `encode_event` send: the payload then follows from the reading); NULL for a NORMAL
  reading (a record has none).

Not stored, because it follows from what is: the class (`classify_heart_rate(bpm)`: a
NORMAL reading came from `heartbeat_records`, any other from `heartbeat_anomalies`), the
customer and the hour (the row's key). Dropped on the way to cold: the Kafka position
(partition, offset, log epoch) and the ingest times, which serve exactly-once delivery
and latency on the live edge, not the reading.

Plain Python: no database here.
"""

from __future__ import annotations

import math
import re
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate, repeat
from operator import mul
from typing import NamedTuple

from heartbeat_platform.domain.events import HeartbeatClass, classify_heart_rate

HOUR = timedelta(hours=1)
_SECOND_US = 1_000_000
MICRO_BYTES = 3  # the most bytes one reading's entry in `micros` takes (999,999 < 2**24)
BYTE_RATES = range(1, 256)  # rates `bpm` holds itself; 0 there means "next of bpm_wide"
# Payloads rebuilt from the reading only where SQL's text for it is certainly the same
# (sql/012, heartbeat_canonical_payload): a plain customer id, a four-digit year.
_PLAIN_ID = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_YEARS = range(1000, 10000)


class ColdReading(NamedTuple):
    """One reading as the cold tier keeps it; `payload` is None for a NORMAL reading."""

    when: datetime  # timezone-aware
    bpm: int
    payload: str | None = None

    @property
    def reading_class(self) -> HeartbeatClass:
        return classify_heart_rate(self.bpm)


@dataclass(frozen=True, slots=True)
class Pack:
    """One customer-hour, as its row in `heartbeat_cold` holds it (customer aside)."""

    hour: datetime  # the UTC hour's start
    seconds: list[int]
    micro_step: int  # gcd of the microseconds; 0 when all are 0
    micros: bytes
    bpm: bytes
    bpm_wide: list[int]  # the rates `bpm` holds as 0, in order ([] stored as NULL)
    payloads: list[str | None]

    @property
    def readings(self) -> int:
        return len(self.seconds)


def canonical_payload(customer_id: str, when: datetime, bpm: int) -> str | None:
    """The JSON `encode_event` makes of this reading (key order, no spaces, UTC with six
    digits and Z), or None where SQL could not rebuild it the same (see `_PLAIN_ID`)."""
    when = when.astimezone(UTC)
    if when.year not in _YEARS or not _PLAIN_ID.issuperset(customer_id):
        return None
    return (f'{{"customer_id":"{customer_id}","heart_rate":{bpm},'
            f'"timestamp":"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond:06d}Z"}}')


def hour_of(when: datetime) -> datetime:
    """The start of the UTC hour `when` falls in (packs are UTC hours: no DST in them)."""
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def sort_key(reading: ColdReading) -> tuple[datetime, int, bool, str]:
    """The one order of a pack's readings (time, bpm, payload; NULL first)."""
    return (reading.when, reading.bpm, reading.payload is not None, reading.payload or "")


def check_payload(reading: ColdReading) -> None:
    """A NORMAL reading has no payload, any other has one: the class decides the hot table."""
    normal = reading.reading_class is HeartbeatClass.NORMAL
    if normal != (reading.payload is None):
        raise ValueError(
            f"a {reading.reading_class} reading at {reading.when.isoformat()} "
            f"{'has' if normal else 'lacks'} a raw payload"
        )


def pack(customer_id: str, readings: Iterable[ColdReading]) -> Pack:
    """Pack one customer's readings of one UTC hour (any order, duplicates kept)."""
    rows = sorted(readings, key=sort_key)
    if not rows:
        raise ValueError("a pack holds at least one reading")
    hour = hour_of(rows[0].when)
    seconds: list[int] = []
    offsets: list[int] = []  # each reading's microsecond within its second
    rates = bytearray()
    wide: list[int] = []
    payloads: list[str | None] = []
    previous = 0
    for reading in rows:
        check_payload(reading)
        if hour_of(reading.when) != hour:
            raise ValueError(
                f"{reading.when.isoformat()} is not in the hour starting {hour.isoformat()}"
            )
        offset = reading.when.astimezone(UTC) - hour
        second = offset.seconds  # < 3600: offset.days is 0
        seconds.append(second - previous)
        previous = second
        offsets.append(offset.microseconds)
        if reading.bpm in BYTE_RATES:
            rates.append(reading.bpm)
        else:
            rates.append(0)
            wide.append(reading.bpm)
        canonical = reading.payload is not None and reading.payload == canonical_payload(
            customer_id, reading.when, reading.bpm)
        payloads.append(None if canonical else reading.payload)
    step = math.gcd(*offsets)
    scaled = [m // step for m in offsets] if step else [0] * len(offsets)
    width = micro_width(max(scaled))
    micros = b"".join(m.to_bytes(width, "big") for m in scaled)
    return Pack(hour, seconds, step, micros, bytes(rates), wide, payloads)


def micro_width(largest: int) -> int:
    """Bytes each entry of `micros` takes when the largest is `largest`."""
    return (largest.bit_length() + 7) // 8


def unpack(customer_id: str, packed: Pack) -> list[ColdReading]:
    """The readings of a pack, in the pack's order (`sort_key`)."""
    n = packed.readings
    width, rest = divmod(len(packed.micros), n) if n else (0, 0)
    if not (len(packed.bpm) == len(packed.payloads) == n and not rest
            and width <= MICRO_BYTES):
        raise ValueError("a pack's arrays differ in length")
    wide = iter(packed.bpm_wide)
    readings = []
    second = 0
    hour = packed.hour.astimezone(UTC)  # arithmetic in UTC: a local hour may repeat (DST)
    for i in range(n):
        second += packed.seconds[i]
        micro = packed.micro_step * int.from_bytes(
            packed.micros[width * i:width * (i + 1)], "big")
        when = hour + timedelta(microseconds=second * _SECOND_US + micro)
        bpm = packed.bpm[i] or next(wide)
        payload = packed.payloads[i]
        if payload is None and classify_heart_rate(bpm) is not HeartbeatClass.NORMAL:
            payload = canonical_payload(customer_id, when, bpm)
            if payload is None:
                raise ValueError(f"the anomaly at {when.isoformat()} lost its payload")
        readings.append(ColdReading(when, bpm, payload))
    return readings


class Columns(NamedTuple):
    """A pack's readings as columns (what `unpack_columns` gives): the same readings as
    `unpack`, in the same order, without a Python object per reading beyond its values."""

    when: list[datetime]  # UTC
    bpm: list[int]
    payload: list[str | None]  # None for a NORMAL reading only
    reading_class: list[str]  # HeartbeatClass values


_NORMAL = HeartbeatClass.NORMAL.value
# the class of each byte of `bpm` (0 stands for a rate of bpm_wide: patched per reading)
_BYTE_CLASS = [classify_heart_rate(b).value for b in range(256)]
# `bpm` translated to one byte a reading: b"." for a NORMAL rate, b"!" for any other
_ANOMALY_BYTES = bytes(
    0x2E if _BYTE_CLASS[b] == _NORMAL and b else 0x21 for b in range(256))
_ANOMALY = re.compile(rb"!")
_WIDE = re.compile(rb"\0")
_ENDIAN_SWAP = sys.byteorder == "little"  # `micros` entries are big-endian
_HOUR_SECONDS = 3600
_MINUTE_OF = [s // 60 for s in range(_HOUR_SECONDS)]  # of a second of the hour
_SECOND_OF = [s % 60 for s in range(_HOUR_SECONDS)]


def micro_entries(micros: bytes, n: int) -> Sequence[int]:
    """The n entries of `micros` (each 0-3 bytes, big-endian) as integers, unpacked by
    array slicing, not a loop per reading."""
    width, rest = divmod(len(micros), n) if n else (0, 0)
    if rest or width > MICRO_BYTES:
        raise ValueError("a pack's arrays differ in length")
    if width == 0:
        return [0] * n
    if width == 1:
        return micros
    if width == 2:
        wide = array("H", micros)
    else:  # 3 bytes: widen each to 4, big-endian, then read as one native integer
        padded = bytearray(4 * n)
        padded[1::4], padded[2::4], padded[3::4] = micros[0::3], micros[1::3], micros[2::3]
        wide = array("I", padded)
    if _ENDIAN_SWAP:
        wide.byteswap()
    return wide


def unpack_columns(customer_id: str, hour: datetime, seconds: Sequence[int],
                   micro_step: int, micros: bytes, bpm: bytes, bpm_wide: Sequence[int],
                   payloads: Sequence[str | None]) -> Columns:
    """`unpack` of a pack given as its stored columns, done column by column (C-level
    slicing, `accumulate` and `map`; a Python step per reading only for an anomaly whose
    payload is rebuilt and for a rate kept in `bpm_wide`): what reading a customer-day or
    -month from cold goes through. tests/unit/test_cold_pack.py holds it to `unpack`."""
    n = len(seconds)
    if not (len(bpm) == len(payloads) == n):
        raise ValueError("a pack's arrays differ in length")
    steps = micro_entries(micros, n)
    start = hour.astimezone(UTC)  # arithmetic in UTC: a local hour may repeat (DST)
    whole = list(accumulate(seconds))  # second of the hour, 0..3599
    if whole and not 0 <= min(whole) <= whole[-1] < _HOUR_SECONDS:
        raise ValueError("a pack's seconds leave its hour")
    parts = map(mul, steps, repeat(micro_step)) if micro_step else repeat(0, n)
    # datetime(...) from the hour's fields: half the cost of hour + timedelta(...)
    when = list(map(datetime, repeat(start.year), repeat(start.month), repeat(start.day),
                    repeat(start.hour), map(_MINUTE_OF.__getitem__, whole),
                    map(_SECOND_OF.__getitem__, whole), parts, repeat(UTC)))
    rates = list(bpm)
    classes = list(map(_BYTE_CLASS.__getitem__, rates))
    payload = list(payloads)
    wide = iter(bpm_wide)
    for found in _WIDE.finditer(bpm):  # only the readings kept in `bpm_wide`
        i = found.start()
        rate = next(wide, None)
        if rate is None:
            raise ValueError("a pack's arrays differ in length")
        rates[i] = rate
        classes[i] = classify_heart_rate(rate).value
    for found in _ANOMALY.finditer(bpm.translate(_ANOMALY_BYTES)):
        i = found.start()
        if payload[i] is None and classes[i] != _NORMAL:
            payload[i] = canonical_payload(customer_id, when[i], rates[i])
            if payload[i] is None:
                raise ValueError(f"the anomaly at {when[i].isoformat()} lost its payload")
    return Columns(when, rates, payload, classes)


def pack_hours(customer_id: str, readings: Iterable[ColdReading]) -> list[Pack]:
    """One customer's readings of any span, packed per UTC hour, oldest hour first."""
    hours: dict[datetime, list[ColdReading]] = {}
    for reading in readings:
        hours.setdefault(hour_of(reading.when), []).append(reading)
    return [pack(customer_id, hours[hour]) for hour in sorted(hours)]
