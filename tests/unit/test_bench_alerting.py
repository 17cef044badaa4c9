"""The pure parts of `bench`'s consume_alerting stage: each mode's environment as the
consumer's settings read it, the rotated order, the summary and the issue's targets."""

from __future__ import annotations

from datetime import timedelta

import pytest

from heartbeat_platform import readiness
from heartbeat_platform.bench.alerting import MODES, mode_order, summarize, targets_met
from heartbeat_platform.config import load_settings
from heartbeat_platform.domain.episodes import DEFAULT_DELAY, EpisodeKind
from heartbeat_platform.local.services import Endpoints

ENDPOINTS = Endpoints("postgresql://x/y", "broker:9092")


def alerting_of(mode: str, monkeypatch: pytest.MonkeyPatch):
    # what the user's environment says is overridden by the mode's own variables
    monkeypatch.setenv("HEARTBEAT_ALERT_DELAY_S", "TACHYCARDIA=60")
    monkeypatch.setenv("HEARTBEAT_ALERT_MIN_READINGS", "5")
    for name, value in MODES[mode].items():
        monkeypatch.setenv(name, value)
    return readiness.consumer_config(load_settings(_env_file=None), ENDPOINTS).alerting


def test_each_mode_gives_the_consumer_what_its_name_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert alerting_of("off", monkeypatch) is None
    defaults = alerting_of("defaults", monkeypatch)
    assert defaults is not None
    assert dict(defaults.rules.delay) == dict(DEFAULT_DELAY)
    assert dict(defaults.rules.min_readings) == dict.fromkeys(EpisodeKind, 1)
    no_delay = alerting_of("no_delay", monkeypatch)
    assert no_delay is not None
    assert dict(no_delay.rules.delay) == dict.fromkeys(EpisodeKind, timedelta(0))
    assert dict(no_delay.rules.min_readings) == dict.fromkeys(EpisodeKind, 1)


def test_every_round_starts_with_the_next_mode() -> None:
    assert mode_order(1) == ["off", "defaults", "no_delay"]
    assert mode_order(3) == [
        "off", "defaults", "no_delay",
        "defaults", "no_delay", "off",
        "no_delay", "off", "defaults",
    ]
    assert mode_order(0) == []


def run(rate: float, rss: float = 100.0) -> dict:
    return {"rows_per_s": rate, "messages": 1000, "busy_seconds": 1.0,
            "consumer_peak_rss_mb": rss}


def test_summary_takes_each_modes_median_and_its_ratio_to_off() -> None:
    summary = summarize([
        ("off", run(100_000)), ("defaults", run(80_000)), ("no_delay", run(50_000, 150)),
        ("defaults", run(95_000)), ("no_delay", run(70_000)), ("off", run(120_000)),
        ("no_delay", run(60_000)), ("off", run(110_000)), ("defaults", run(90_000)),
    ])
    assert summary["order"][:3] == ["off", "defaults", "no_delay"]
    assert summary["off"]["rows_per_s"] == 110_000
    assert summary["off"]["runs_rows_per_s"] == [100_000, 120_000, 110_000]
    assert summary["defaults"]["rows_per_s"] == 90_000
    assert summary["no_delay"]["rows_per_s"] == 60_000
    assert summary["no_delay"]["consumer_peak_rss_mb"] == 150
    assert summary["ratio_defaults_to_off"] == 0.818
    assert summary["ratio_no_delay_to_off"] == 0.545


def test_summary_without_a_rate_off_has_no_ratio() -> None:
    assert summarize([])["ratio_defaults_to_off"] is None
    summary = summarize([("off", run(0.0)), ("defaults", run(10.0))])
    assert summary["ratio_defaults_to_off"] is None
    assert summary["ratio_no_delay_to_off"] is None


def test_targets_hold_the_rates_ratios_and_notification_p99_to_the_issue() -> None:
    summary = summarize([("off", run(120_000)), ("defaults", run(110_000)),
                         ("no_delay", run(80_000))])
    met = targets_met(summary, {"notify_p99_ms": 1_100.0})
    assert met["consume_defaults_rows_per_s"] == {"min": 100_000, "measured": 110_000,
                                                  "met": True}
    assert met["ratio_defaults_to_off"]["met"] is True  # 0.917
    assert met["ratio_no_delay_to_off"]["met"] is False  # 0.667
    assert met["notify_p99_ms"] == {"max": 1_000, "measured": 1_100.0, "met": False}
    assert targets_met(summarize([]), {})["notify_p99_ms"]["met"] is None
