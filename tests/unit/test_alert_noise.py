"""alert_noise: the README's "Calm by default" measurement, on a small fleet."""

from __future__ import annotations

from heartbeat_platform.alert_noise import NO_DELAY, heart_rates, measure, run_lengths
from heartbeat_platform.domain.episodes import Rules


def test_without_a_delay_nearly_every_run_fires_and_at_the_defaults_none_does() -> None:
    rates = heart_rates(200, 120)
    before, calm = measure(rates, NO_DELAY), measure(rates, Rules())
    assert before.readings == calm.readings == 24_000
    assert 0.04 < before.anomalous / before.readings < 0.07  # the generator's 5.5%
    assert 0.9 * before.runs < before.fired <= before.runs
    assert before.notifications >= before.fired
    assert (calm.fired, calm.notifications) == (0, 0)  # independent noise never lasts 10 s


def test_run_lengths_count_runs_of_one_kind_per_customer() -> None:
    # two customers: 190 190 30 | 80 0 0 ; the last column's runs end with the data
    assert run_lengths([[190, 80], [190, 0], [30, 0]]) == {2: 2, 1: 1}
