"""How long raw readings are kept, which readings are admissible, which day partitions exist.

Raw readings live in one PostgreSQL partition per UTC day. A day is kept while any part
of it is inside the retention window, and a few days ahead exist so a reading never
waits for its partition. A reading older than the window, or further in the future than
the allowed clock skew, could never be stored for long (or would claim the future), so
the consumer turns it into a dead letter with a reason. Plain Python: no database here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

# A day is removed only this long after its last reading left the window: a consumer that
# judged a reading admissible a moment before can still write it into that day.
DROP_GRACE = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    raw_retention_days: int = 7
    max_clock_skew_s: float = 300.0
    partitions_ahead_days: int = 3

    def admissible(self, now: datetime) -> AdmissibleWindow:
        return AdmissibleWindow(
            now - timedelta(days=self.raw_retention_days),
            now + timedelta(seconds=self.max_clock_skew_s),
            self,
        )

    def days_to_create(self, now: datetime) -> tuple[date, date]:
        """First and last UTC day whose partitions must exist at `now`: the whole
        admissible window (a clock skew longer than the days ahead included), plus the
        days ahead."""
        window = self.admissible(now)
        ahead = now.astimezone(UTC).date() + timedelta(days=self.partitions_ahead_days)
        newest = window.newest.astimezone(UTC).date()
        return window.oldest.astimezone(UTC).date(), max(ahead, newest)

    def expired_days(self, days: Iterable[date], now: datetime) -> list[date]:
        """Days that ended before the window started (and the grace passed): to be removed."""
        cutoff = now - timedelta(days=self.raw_retention_days) - DROP_GRACE
        return sorted(d for d in days if _day_end(d) <= cutoff)


@dataclass(frozen=True, slots=True)
class ColdTierPolicy:
    """How long readings stay hot and how long the cold tier keeps them (README, "Cold
    tier"). A UTC day is compacted once it has been over for `hot_days`, so a reading is
    hot for at least that long; its cold day is dropped whole once it has been over for
    `cold_retention_days`. The hot day partitions themselves stay (empty once compacted)
    for the admissible window, `RetentionPolicy.raw_retention_days`: a late reading inside
    it lands hot and the next compaction merges it into the day's packs. With a raw
    retention of `hot_days` or less a day leaves before it is compacted, as it did before
    the cold tier."""

    hot_days: int = 2
    cold_retention_days: int = 400


@dataclass(frozen=True, slots=True)
class AdmissibleWindow:
    """Event times the consumer stores: oldest <= t <= newest (computed once per batch)."""

    oldest: datetime
    newest: datetime
    policy: RetentionPolicy

    def reason(self, when: datetime) -> str | None:
        """Why a reading at `when` is refused, or None when it is admissible."""
        if when < self.oldest:
            return (
                f"timestamp {when.isoformat()} is older than the raw retention window of "
                f"{self.policy.raw_retention_days} days (oldest accepted now: "
                f"{self.oldest.isoformat(timespec='seconds')}); replay it within the window "
                "or raise HEARTBEAT_RAW_RETENTION_DAYS"
            )
        if when > self.newest:
            ahead = (when - self.newest).total_seconds() + self.policy.max_clock_skew_s
            return (
                f"timestamp {when.isoformat()} is {ahead:.0f} s in the future (allowed clock "
                f"skew {self.policy.max_clock_skew_s:.0f} s, HEARTBEAT_MAX_CLOCK_SKEW_S); "
                "check the sender's clock"
            )
        return None


def day_start(day: date) -> datetime:
    """Midnight UTC that starts `day` (partitions and rollup days are UTC days)."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _day_end(day: date) -> datetime:
    return day_start(day) + timedelta(days=1)
