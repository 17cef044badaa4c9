"""How many episodes and notifications the episode rules give on the generator's readings.

`python -m heartbeat_platform.alert_noise [CUSTOMERS] [SECONDS]` (10,000 and 900 by
default: the design rate for 15 minutes) feeds `domain.episodes.advance` one batch per
second of every customer's reading from `HeartbeatGenerator` (seed 20), as the consumer's
writer applies a batch (open episodes passed back, dropped ones forgotten), once with no
alarm-condition delay and once with the default rules, and prints what each fired, scaled
to an hour at 10,000 customers. The README's "Calm by default" figures come from it. Pure
Python: no Kafka, no database.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from heartbeat_platform.domain.episodes import (
    Episode,
    EpisodeKind,
    EpisodeReading,
    Rules,
    advance,
    episode_kind,
)
from heartbeat_platform.domain.generator import HeartbeatGenerator, customer_id

_START = datetime(2026, 1, 1, tzinfo=UTC)
NO_DELAY = Rules(delay=dict.fromkeys(EpisodeKind, timedelta(0)))


@dataclass(frozen=True, slots=True)
class Noise:
    readings: int
    anomalous: int
    run_lengths: dict[int, int]  # runs of one anomalous kind of one customer, by length
    fired: int
    notifications: int

    @property
    def runs(self) -> int:
        return sum(self.run_lengths.values())


def per_hour(customers: int, seconds: int, fleet: int = 10_000) -> float:
    """Scale from a run of `customers` for `seconds` to an hour of `fleet` customers
    (customers are independent)."""
    return fleet / customers * 3600 / seconds


def heart_rates(customers: int, seconds: int, seed: int = 20) -> list[list[int]]:
    """Every customer's reading of every second, from the platform's generator."""
    generator = HeartbeatGenerator(customer_count=customers, seed=seed)
    rate = generator.generate_heart_rate
    return [[rate() for _ in range(customers)] for _ in range(seconds)]


def run_lengths(rates: list[list[int]]) -> Counter[int]:
    lengths: Counter[int] = Counter()
    current: dict[int, tuple[EpisodeKind | None, int]] = {}
    for second in rates:
        for n, bpm in enumerate(second):
            kind = episode_kind(bpm)
            previous = current.get(n)
            if previous is not None and previous[0] is kind:
                current[n] = (kind, previous[1] + 1)
                continue
            if previous is not None and previous[0] is not None:
                lengths[previous[1]] += 1
            current[n] = (kind, 1)
    lengths.update(length for kind, length in current.values() if kind is not None)
    return lengths


def measure(rates: list[list[int]], rules: Rules) -> Noise:
    """Apply the readings second by second under `rules`; what fired and was notified."""
    ids = [customer_id(n + 1) for n in range(len(rates[0]) if rates else 0)]
    open_episodes: dict[tuple[str, EpisodeKind, datetime], Episode] = {}
    fired = notifications = 0
    for t, second in enumerate(rates):
        at = _START + timedelta(seconds=t)
        batch = [EpisodeReading(c, at, bpm) for c, bpm in zip(ids, second, strict=True)]
        outcome = advance(list(open_episodes.values()), batch, at, rules)
        for episode in outcome.dropped:
            open_episodes.pop(episode.key, None)
        for episode in outcome.episodes:
            if episode.is_open:
                open_episodes[episode.key] = episode
            else:
                open_episodes.pop(episode.key, None)
        fired += sum(1 for t in outcome.transitions if t.state == "firing")
        notifications += len(outcome.transitions)
    lengths = run_lengths(rates)
    return Noise(
        readings=sum(map(len, rates)),
        anomalous=sum(length * count for length, count in lengths.items()),
        run_lengths=dict(sorted(lengths.items())),
        fired=fired,
        notifications=notifications,
    )


def main(argv: list[str]) -> None:
    customers = int(argv[0]) if argv else 10_000
    seconds = int(argv[1]) if len(argv) > 1 else 900
    rates = heart_rates(customers, seconds)
    for name, rules in (("no delay", NO_DELAY), ("defaults", Rules())):
        noise = measure(rates, rules)
        scale = per_hour(customers, seconds)
        print(
            f"{name}: {noise.readings:,} readings, {noise.anomalous:,} anomalous in "
            f"{noise.runs:,} runs (by length {noise.run_lengths}); fired {noise.fired:,}, "
            f"notifications {noise.notifications:,}; per hour at 10,000 customers "
            f"{noise.fired * scale:,.0f} fired, {noise.notifications * scale:,.0f} "
            f"notifications; runs starting no notification {1 - noise.fired / noise.runs:.1%}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
