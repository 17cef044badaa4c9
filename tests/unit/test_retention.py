"""Which readings are admissible and which day partitions exist or go (domain.retention)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heartbeat_platform.domain.retention import DROP_GRACE, RetentionPolicy
from heartbeat_platform.storage.rollups import Rollup, window_start

DEFAULTS = RetentionPolicy()  # 7 days of raw readings, 300 s of clock skew, 3 days ahead
NOW = datetime(2026, 3, 10, 14, 30, 15, 123456, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
DAY = timedelta(days=1)

# Instants anywhere in a century, given in UTC or in zones whose local date often differs
# from the UTC date (the day of a partition is always the UTC day).
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-9)),
         timezone(timedelta(hours=14))]
instants = st.builds(
    lambda moment, zone: moment.astimezone(zone),
    st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 12, 31),
                 timezones=st.just(UTC)),
    st.sampled_from(ZONES),
)
policies = st.builds(
    RetentionPolicy,
    raw_retention_days=st.integers(1, 3650),
    max_clock_skew_s=st.floats(0, 86_399, allow_nan=False),  # less than a day
    partitions_ahead_days=st.integers(1, 366),
)


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# -- days to create ---------------------------------------------------------------------------
def test_days_to_create_with_the_defaults() -> None:
    assert DEFAULTS.days_to_create(NOW) == (date(2026, 3, 3), date(2026, 3, 13))


@given(now=instants, policy=policies)
def test_days_to_create_cover_the_retention_window_and_the_days_ahead(
    now: datetime, policy: RetentionPolicy
) -> None:
    first, last = policy.days_to_create(now)
    window = policy.admissible(now)
    assert first == utc_day(now - timedelta(days=policy.raw_retention_days))
    assert last == utc_day(now) + timedelta(days=policy.partitions_ahead_days)
    # every admissible reading has its day: the oldest and the newest one included
    assert first <= utc_day(window.oldest) and utc_day(window.newest) <= last


@given(
    now=instants,
    skew_s=st.floats(0, 30 * 86_400, allow_nan=False),
    ahead=st.integers(1, 5),
)
def test_every_admissible_reading_has_a_day_to_create_whatever_the_clock_skew(
    now: datetime, skew_s: float, ahead: int
) -> None:
    """HEARTBEAT_MAX_CLOCK_SKEW_S may exceed the days ahead: the newest admissible
    reading must still have its partition, or the consumer's batch fails on it."""
    policy = RetentionPolicy(7, skew_s, ahead)
    _, last = policy.days_to_create(now)
    assert utc_day(policy.admissible(now).newest) <= last


def test_days_to_create_follow_the_utc_day_across_midnight() -> None:
    last_instant = datetime(2026, 3, 9, 23, 59, 59, 999999, tzinfo=UTC)
    midnight = last_instant + MICROSECOND
    assert DEFAULTS.days_to_create(last_instant) == (date(2026, 3, 2), date(2026, 3, 12))
    assert DEFAULTS.days_to_create(midnight) == (date(2026, 3, 3), date(2026, 3, 13))
    # 02:00 in India is still the previous UTC day
    india = datetime(2026, 3, 10, 2, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert DEFAULTS.days_to_create(india) == (date(2026, 3, 2), date(2026, 3, 12))


# -- admissible readings ----------------------------------------------------------------------
def test_reading_exactly_at_the_oldest_bound_is_admissible_one_microsecond_older_is_not() -> None:
    window = DEFAULTS.admissible(NOW)
    assert window.oldest == NOW - timedelta(days=7)
    assert window.reason(window.oldest) is None
    reason = window.reason(window.oldest - MICROSECOND)
    assert reason is not None
    assert "HEARTBEAT_RAW_RETENTION_DAYS" in reason and "7 days" in reason
    assert "HEARTBEAT_MAX_CLOCK_SKEW_S" not in reason


def test_reading_exactly_at_the_newest_bound_is_admissible_one_microsecond_newer_is_not() -> None:
    window = DEFAULTS.admissible(NOW)
    assert window.newest == NOW + timedelta(seconds=300)
    assert window.reason(window.newest) is None
    reason = window.reason(window.newest + MICROSECOND)
    assert reason is not None
    assert "HEARTBEAT_MAX_CLOCK_SKEW_S" in reason and "300 s" in reason
    assert "HEARTBEAT_RAW_RETENTION_DAYS" not in reason


def test_reasons_name_the_configured_values() -> None:
    window = RetentionPolicy(raw_retention_days=30, max_clock_skew_s=5).admissible(NOW)
    too_old = window.reason(NOW - timedelta(days=31))
    too_new = window.reason(NOW + timedelta(hours=1))
    assert too_old is not None and "30 days" in too_old
    assert too_new is not None and "skew 5 s" in too_new
    assert "3600 s in the future" in too_new  # how far ahead of now, not of the bound


@pytest.mark.parametrize(
    "offset", [timedelta(0), -timedelta(days=7), timedelta(seconds=300), -timedelta(days=3)]
)
def test_readings_inside_the_window_are_admissible_in_any_time_zone(offset: timedelta) -> None:
    window = DEFAULTS.admissible(NOW)
    for zone in ZONES:
        assert window.reason((NOW + offset).astimezone(zone)) is None


# -- expired days -----------------------------------------------------------------------------
@st.composite
def retention_cases(draw: st.DrawFn) -> tuple[datetime, RetentionPolicy, list[date]]:
    """A moment, a policy, and days around the edge of its window (and far from it)."""
    now = draw(instants)
    policy = draw(policies)
    edge = utc_day(now) - timedelta(days=policy.raw_retention_days)
    offsets = draw(st.lists(st.integers(-3, 3) | st.integers(-4000, 4000), max_size=20))
    days = [edge + timedelta(days=k) for k in offsets]
    return now, policy, days


@given(retention_cases())
def test_expired_days_never_include_a_day_any_part_of_which_is_inside_the_window(
    case: tuple[datetime, RetentionPolicy, list[date]],
) -> None:
    now, policy, days = case
    oldest = policy.admissible(now).oldest
    expired = policy.expired_days(days, now)
    assert expired == sorted(expired) and set(expired) <= set(days)
    for day in expired:
        last_instant = day_start(day) + DAY - MICROSECOND
        assert last_instant < oldest, (day, oldest)


@given(retention_cases())
def test_expired_days_include_every_day_that_left_the_window_a_grace_ago(
    case: tuple[datetime, RetentionPolicy, list[date]],
) -> None:
    now, policy, days = case
    cutoff = policy.admissible(now).oldest - DROP_GRACE
    expired = set(policy.expired_days(days, now))
    assert {d for d in days if day_start(d) + DAY <= cutoff} <= expired


def test_a_day_expires_exactly_one_grace_after_its_last_instant_left_the_window() -> None:
    day = date(2026, 3, 2)
    # the day's end (2026-03-03 00:00) leaves the 7-day window at 2026-03-10 00:00
    expires_at = day_start(day) + DAY + timedelta(days=7) + DROP_GRACE
    assert DEFAULTS.expired_days([day], expires_at) == [day]
    assert DEFAULTS.expired_days([day], expires_at - MICROSECOND) == []
    # the next day is not touched by the same moment
    assert DEFAULTS.expired_days([day + DAY], expires_at) == []


# -- the day a reading falls in ---------------------------------------------------------------
def test_day_boundary_readings_fall_in_their_own_utc_day() -> None:
    last_instant = datetime(2026, 3, 9, 23, 59, 59, 999999, tzinfo=UTC)
    midnight = datetime(2026, 3, 10, tzinfo=UTC)
    assert window_start(Rollup.CUSTOMER_DAILY, last_instant) == datetime(2026, 3, 9, tzinfo=UTC)
    assert window_start(Rollup.CUSTOMER_DAILY, midnight) == midnight
    assert window_start(Rollup.CUSTOMER_HOURLY, last_instant) == datetime(
        2026, 3, 9, 23, tzinfo=UTC
    )
    assert window_start(Rollup.FLEET_MINUTE, last_instant) == datetime(
        2026, 3, 9, 23, 59, tzinfo=UTC
    )
    # an instant given in another zone falls in its UTC day and UTC hour
    india = midnight.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert window_start(Rollup.CUSTOMER_DAILY, india) == midnight
    assert window_start(Rollup.CUSTOMER_HOURLY, india - MICROSECOND) == datetime(
        2026, 3, 9, 23, tzinfo=UTC
    )
    # the partitions that exist at each of the two instants contain that instant's day
    for moment in (last_instant, midnight):
        first, last = DEFAULTS.days_to_create(moment)
        assert first <= utc_day(moment) <= last


def test_rollups_must_outlive_the_raw_readings() -> None:
    """Retention waits for a day's daily rollup; a rollup kept shorter would keep raw days
    (and the disk) for ever, so the setting is refused."""
    from pydantic import ValidationError

    from heartbeat_platform.config import load_settings

    with pytest.raises(ValidationError, match="HEARTBEAT_ROLLUP_RETENTION_DAYS"):
        load_settings(_env_file=None, heartbeat_raw_retention_days=7,
                      heartbeat_rollup_retention_days=8)
    assert load_settings(_env_file=None, heartbeat_rollup_retention_days=9)
