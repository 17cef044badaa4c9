"""The cold tier's pack format (domain.cold_pack): unpack(C, pack(C, rows)) is the rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heartbeat_platform.domain.cold_pack import (
    ColdReading,
    Columns,
    canonical_payload,
    hour_of,
    pack,
    pack_hours,
    sort_key,
    unpack,
    unpack_columns,
)
from heartbeat_platform.domain.events import HeartbeatClass, classify_heart_rate, encode_event

HOUR = timedelta(hours=1)
C = "CUST_00001"
# A night on which Berlin's clocks go back (02:00-03:00 local happens twice) and one on
# which New York's go forward: packs are UTC hours, whatever the zone a time is given in.
BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")
DST_NIGHTS = [datetime(2026, 10, 25, 0, tzinfo=UTC), datetime(2026, 3, 8, 6, tzinfo=UTC)]
INT4 = st.integers(-(2**31), 2**31 - 1)
# What the schema stores: a record's rate is 40..180, an anomaly's any int4 outside it.
RATES = st.one_of(
    st.integers(40, 180), st.integers(15, 39), st.integers(181, 220),
    st.sampled_from([0, -1, 301, 400, -(2**15), 2**15 - 1, 2**15, -(2**15) - 1,
                     -(2**31), 2**31 - 1]),
    INT4,
)

# A raw payload is text PostgreSQL can hold (no NUL), in any script.
PAYLOADS = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                   max_size=20)


def reading(when: datetime, bpm: int, payload: str | None = "{}") -> ColdReading:
    """A reading as the tables hold it; an anomaly's payload `None` here: the one its
    producer sends (`encode_event`), which the pack does not store."""
    if classify_heart_rate(bpm) is HeartbeatClass.NORMAL:
        return ColdReading(when, bpm, None)
    if payload is None:
        payload = canonical_payload(C, when, bpm) or "{}"
    return ColdReading(when, bpm, payload)


@st.composite
def hours_of_readings(draw: st.DrawFn, hours: int = 3) -> list[ColdReading]:
    """Readings of one customer over a few hours around a DST night or anywhere: gaps,
    duplicates (the same reading again), ties in time, the edges of every hour."""
    start = draw(st.one_of(
        st.sampled_from(DST_NIGHTS),
        st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
                     timezones=st.just(UTC)).map(hour_of),
    ))
    span_us = hours * 3600 * 10**6
    offsets = st.one_of(
        st.integers(0, span_us - 1),
        st.sampled_from([0, 1, 3600 * 10**6 - 1, 3600 * 10**6, 999_999, 1_000_000]),
    )
    zone = draw(st.sampled_from([UTC, BERLIN, NEW_YORK]))
    rows = draw(st.lists(
        st.builds(lambda us, bpm, text: reading((start + timedelta(microseconds=us))
                                                .astimezone(zone), bpm, text),
                  offsets, RATES, st.one_of(st.none(), PAYLOADS)),
        min_size=1, max_size=60,
    ))
    repeats = draw(st.lists(st.sampled_from(rows), max_size=5))
    return draw(st.permutations(rows + repeats))


def as_utc(rows: list[ColdReading]) -> list[ColdReading]:
    """The rows in UTC, sorted (an ambiguous local time never equals another zone's time:
    PEP 495), as the pack returns them."""
    return sorted((r._replace(when=r.when.astimezone(UTC)) for r in rows), key=sort_key)


@given(hours_of_readings(hours=1).filter(lambda rows: len({hour_of(r.when) for r in rows}) == 1))
def test_unpack_of_a_pack_is_its_readings_sorted(rows: list[ColdReading]) -> None:
    unpacked = unpack(C, pack(C, rows))
    assert unpacked == as_utc(rows)
    assert all(r.when.tzinfo is UTC for r in unpacked)


@given(hours_of_readings())
def test_packs_per_hour_hold_every_reading_once_in_its_own_utc_hour(
        rows: list[ColdReading]) -> None:
    packs = pack_hours(C, rows)
    assert [p.hour for p in packs] == sorted({hour_of(r.when) for r in rows})
    back = [r for p in packs for r in unpack(C, p)]
    assert as_utc(back) == as_utc(rows)
    for p in packs:
        assert all(hour_of(r.when) == p.hour for r in unpack(C, p))
        assert all(0 <= s < 3600 for s in p.seconds)  # int2
        assert len(p.micros) % p.readings == 0 and len(p.micros) <= 3 * p.readings


@given(hours_of_readings(hours=1), st.randoms())
def test_a_pack_does_not_depend_on_the_order_of_its_rows(rows, rng) -> None:
    rows = [r for r in rows if hour_of(r.when) == hour_of(rows[0].when)]
    shuffled = list(rows)
    rng.shuffle(shuffled)
    assert pack(C, shuffled) == pack(C, rows)


def test_rates_outside_1_to_255_go_to_bpm_wide_in_order() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    packed = pack(C, [reading(start + timedelta(seconds=i), bpm)
                      for i, bpm in enumerate([75, 400, 0, 255, -1, 2**31 - 1, 1])])
    assert packed.bpm == bytes([75, 0, 0, 255, 0, 0, 1])
    assert packed.bpm_wide == [400, 0, -1, 2**31 - 1]
    assert [r.bpm for r in unpack(C, packed)] == [75, 400, 0, 255, -1, 2**31 - 1, 1]


def test_a_payload_the_reading_rebuilds_is_not_stored_and_any_other_is() -> None:
    when = datetime(2026, 1, 1, 5, 0, 1, 20, tzinfo=UTC)
    sent = encode_event({"customer_id": C, "heart_rate": 30,
                         "timestamp": "2026-01-01T05:00:01.000020Z"}).decode()
    assert canonical_payload(C, when, 30) == sent
    other = sent.replace("}", ',"device":"x"}')
    packed = pack(C, [ColdReading(when, 30, sent), ColdReading(when, 31, other)])
    assert packed.payloads == [None, other]
    assert unpack(C, packed) == [ColdReading(when, 30, sent), ColdReading(when, 31, other)]
    # not rebuilt where SQL's text could differ: the payload is kept as it came
    assert pack('CUST_"1', [ColdReading(when, 30, sent)]).payloads == [sent]


def test_seconds_are_delta_coded_and_micros_as_wide_as_the_largest_needs() -> None:
    start = datetime(2026, 1, 1, 5, tzinfo=UTC)
    packed = pack(C, [reading(start + timedelta(seconds=s, microseconds=u), 70)
                   for s, u in [(0, 999_999), (1, 0), (1, 5), (3599, 999_999)]])
    assert packed.seconds == [0, 1, 0, 3598]
    assert (packed.micro_step, packed.micros) == (1, bytes.fromhex("0f423f000000000005""0f423f"))


@pytest.mark.parametrize(("micros", "step", "width"), [
    ([0, 0, 0], 0, 0),  # whole seconds: nothing stored
    ([0, 250_000, 500_000, 750_000], 250_000, 1),
    ([1_000, 999_000, 0], 1_000, 2),  # a millisecond clock
    ([2_500 * k for k in (0, 1, 399)], 2_500, 2),  # the generator's clock, 400 customers
    ([7, 999_998], 1, 3),
])
def test_microseconds_are_stored_in_steps_of_their_gcd_as_narrow_as_they_fit(
        micros: list[int], step: int, width: int) -> None:
    start = datetime(2026, 1, 1, 5, tzinfo=UTC)
    rows = [reading(start + timedelta(seconds=i, microseconds=m), 70) for i, m in enumerate(micros)]
    packed = pack(C, rows)
    assert (packed.micro_step, len(packed.micros)) == (step, width * len(micros))
    assert unpack(C, packed) == rows


def test_a_pack_refuses_readings_of_two_hours_and_a_class_without_its_payload() -> None:
    start = datetime(2026, 1, 1, 5, tzinfo=UTC)
    with pytest.raises(ValueError, match="not in the hour"):
        pack(C, [reading(start, 70), reading(start + HOUR, 70)])
    with pytest.raises(ValueError, match="lacks a raw payload"):
        pack(C, [ColdReading(start, 30, None)])
    with pytest.raises(ValueError, match="has a raw payload"):
        pack(C, [ColdReading(start, 70, "{}")])
    with pytest.raises(ValueError, match="at least one"):
        pack(C, [])


def columns_of(customer: str, packed) -> Columns:
    return unpack_columns(customer, packed.hour, packed.seconds, packed.micro_step,
                          packed.micros, packed.bpm, packed.bpm_wide, packed.payloads)


@given(hours_of_readings())
def test_the_column_by_column_unpack_gives_what_unpack_gives(rows: list[ColdReading]) -> None:
    for packed in pack_hours(C, rows):
        expected = unpack(C, packed)
        got = columns_of(C, packed)
        assert list(zip(got.when, got.bpm, got.payload, strict=True)) == [
            (r.when, r.bpm, r.payload) for r in expected]
        assert got.reading_class == [r.reading_class.value for r in expected]
        assert all(w.tzinfo is UTC for w in got.when)


@pytest.mark.parametrize("micro", [0, 7, 250, 2_500, 65_535, 65_536, 999_999])
def test_the_column_by_column_unpack_reads_micros_of_every_width(micro: int) -> None:
    start = datetime(2026, 12, 1, 5, tzinfo=UTC)
    rows = [reading(start + timedelta(seconds=s, microseconds=micro * (s % 2)), bpm, None)
            for s, bpm in enumerate([75, 0, 39, 181, 400, -1, 255, 1, 40, 180, 2**31 - 1])]
    (packed,) = pack_hours(C, rows)
    got = columns_of(C, packed)
    assert list(zip(got.when, got.bpm, got.payload, strict=True)) == [
        (r.when, r.bpm, r.payload) for r in unpack(C, packed)]


def test_the_column_by_column_unpack_refuses_arrays_of_different_lengths() -> None:
    (packed,) = pack_hours(C, [reading(datetime(2026, 12, 1, tzinfo=UTC), 75)])
    with pytest.raises(ValueError, match="differ in length"):
        unpack_columns(C, packed.hour, packed.seconds, packed.micro_step, packed.micros,
                       packed.bpm + b"K", packed.bpm_wide, packed.payloads)
    with pytest.raises(ValueError, match="differ in length"):  # a 0 with no wide rate
        unpack_columns(C, packed.hour, packed.seconds, packed.micro_step, packed.micros,
                       b"\0", packed.bpm_wide, packed.payloads)
