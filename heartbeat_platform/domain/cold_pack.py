"""The cold tier's pack: one customer's readings of one UTC hour in a few arrays.

Readings older than the hot days are kept as one row per customer and hour (sql/012,
`heartbeat_cold`) whose columns are arrays PostgreSQL compresses (TOAST) and unpacks in
plain SQL (`heartbeat_cold_unpack`). This module is the reference for that format: it
packs and unpacks in Python, and tests/integration/test_cold_tier.py holds the SQL to it.

A pack holds a multiset of readings (event time, bpm, raw payload), sorted by time, then
bpm, then payload, so a customer-hour packs to the same bytes whatever order its rows came
in. Duplicates are kept as they are stored hot (an anomaly replayed at another Kafka
offset is one more row there, and one more here). Columns:

* ``seconds`` (int2[]): whole seconds since the previous reading (the first: since the
  hour's start), so 0..3599 and mostly 0 or 1 at the design rate: small and repetitive.
* ``micros`` (bytea): each reading's microsecond within its second, three bytes big-endian
  (0..999,999 needs 20 bits; an int4 array would spend a fourth byte of zeros per reading).
* ``bpm`` (int2[]) or, when any rate falls outside -32768..32767 (the schema stores any
  int4 as an anomaly's rate), ``bpm_wide`` (int4[]) instead; the other is NULL.
* ``payloads`` (text[]): an anomaly's raw JSON as the consumer received it, NULL for a
  NORMAL reading (a record has none).

Not stored, because it follows from what is: the class (`classify_heart_rate(bpm)`: a
NORMAL reading came from `heartbeat_records`, any other from `heartbeat_anomalies`), the
customer and the hour (the row's key). Dropped on the way to cold: the Kafka position
(partition, offset, log epoch) and the ingest times, which serve exactly-once delivery
and latency on the live edge, not the reading.

Plain Python: no database here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from heartbeat_platform.domain.events import HeartbeatClass, classify_heart_rate

HOUR = timedelta(hours=1)
_SECOND_US = 1_000_000
_INT2 = range(-(2**15), 2**15)
MICRO_BYTES = 3  # bytes of one reading's microsecond in `micros`


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
    micros: bytes
    bpm: list[int] | None  # int2 values, or None when `bpm_wide` holds them
    bpm_wide: list[int] | None
    payloads: list[str | None]

    @property
    def readings(self) -> int:
        return len(self.seconds)


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


def pack(readings: Iterable[ColdReading]) -> Pack:
    """Pack the readings of one UTC hour (any order, duplicates kept)."""
    rows = sorted(readings, key=sort_key)
    if not rows:
        raise ValueError("a pack holds at least one reading")
    hour = hour_of(rows[0].when)
    seconds: list[int] = []
    micros = bytearray()
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
        micros += offset.microseconds.to_bytes(MICRO_BYTES, "big")
    values = [r.bpm for r in rows]
    narrow = all(v in _INT2 for v in values)
    return Pack(
        hour=hour,
        seconds=seconds,
        micros=bytes(micros),
        bpm=values if narrow else None,
        bpm_wide=None if narrow else values,
        payloads=[r.payload for r in rows],
    )


def unpack(packed: Pack) -> list[ColdReading]:
    """The readings of a pack, in the pack's order (`sort_key`)."""
    values = packed.bpm if packed.bpm is not None else packed.bpm_wide
    if values is None:
        raise ValueError("a pack holds its rates in bpm or bpm_wide")
    n = packed.readings
    if not (len(values) == len(packed.payloads) == n
            and len(packed.micros) == MICRO_BYTES * n):
        raise ValueError("a pack's arrays differ in length")
    readings = []
    second = 0
    hour = packed.hour.astimezone(UTC)  # arithmetic in UTC: a local hour may repeat (DST)
    for i in range(n):
        second += packed.seconds[i]
        micro = int.from_bytes(packed.micros[MICRO_BYTES * i:MICRO_BYTES * (i + 1)], "big")
        when = hour + timedelta(microseconds=second * _SECOND_US + micro)
        readings.append(ColdReading(when, values[i], packed.payloads[i]))
    return readings


def pack_hours(readings: Iterable[ColdReading]) -> list[Pack]:
    """One customer's readings of any span, packed per UTC hour, oldest hour first."""
    hours: dict[datetime, list[ColdReading]] = {}
    for reading in readings:
        hours.setdefault(hour_of(reading.when), []).append(reading)
    return [pack(hours[hour]) for hour in sorted(hours)]


@dataclass(frozen=True, slots=True)
class Totals:
    """What compaction compares between the hot rows and their cold copy, per customer."""

    count: int = 0
    bpm_sum: int = 0
    bpm_sum_squares: int = 0

    def add(self, readings: Iterable[ColdReading]) -> Totals:
        count, total, squares = self.count, self.bpm_sum, self.bpm_sum_squares
        for r in readings:
            count, total, squares = count + 1, total + r.bpm, squares + r.bpm * r.bpm
        return Totals(count, total, squares)
