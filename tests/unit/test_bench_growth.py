"""The pure parts of `heartbeat-platform bench --history`: where the history goes, Grafana's
interval, which dashboard queries are timed, and the bytes-per-reading arithmetic."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from heartbeat_platform.bench import (
    HistoryPlan,
    HistoryPlanError,
    catch_up_moment,
    run_bench,
    storage_summary,
)
from heartbeat_platform.config import load_settings
from heartbeat_platform.grafana_queries import grafana_interval
from heartbeat_platform.storage.rollups import Rollup, window_start

END = datetime(2026, 3, 4, 12, 0, 0, tzinfo=UTC)


def test_history_at_the_design_rate_spans_readings_over_10000_seconds() -> None:
    plan = HistoryPlan.ending_at(END, 20_000_000, 10_000, 3)
    assert plan.step == timedelta(seconds=1)
    assert plan.span == timedelta(seconds=2_000)  # 33 min 20 s
    assert plan.start == END - timedelta(seconds=2_000)
    assert plan.describe()["readings_per_s"] == 10_000


def test_dashboard_only_without_history_is_refused_before_anything_starts() -> None:
    with pytest.raises(HistoryPlanError, match="give --history N"):
        run_bench(load_settings(_env_file=None), dashboard_only=True)


def test_cold_without_history_or_with_dashboard_only_is_refused() -> None:
    with pytest.raises(HistoryPlanError, match="give --history N"):
        run_bench(load_settings(_env_file=None), cold=True)
    with pytest.raises(HistoryPlanError, match="separate runs"):
        run_bench(load_settings(_env_file=None), history=10, cold=True, dashboard_only=True)


def test_history_spread_over_hours_fits_inside_them() -> None:
    plan = HistoryPlan.ending_at(END, 20_000_000, 10_000, 3, span_hours=168)
    assert plan.step == timedelta(seconds=302.4)  # 2,000 readings per customer in a week
    assert timedelta(hours=168) - plan.step < plan.span <= timedelta(hours=168)


def test_history_readings_are_in_time_order_and_end_before_the_run() -> None:
    plan = HistoryPlan.ending_at(END, 25_000, 10_000, 3)  # the last tick is half full
    times = [plan.reading_time(i) for i in range(plan.readings)]
    assert times == sorted(times)
    assert times[0] == plan.start
    assert plan.last_reading_at == times[-1] < END


def test_one_customer_never_has_two_readings_at_the_same_time() -> None:
    plan = HistoryPlan.ending_at(END, 30_000, 10_000, 3, span_hours=0.01)
    first_customer = [plan.reading_time(i) for i in range(0, plan.readings, 10_000)]
    assert len(set(first_customer)) == 3


def test_too_many_readings_for_the_span_are_refused() -> None:
    with pytest.raises(HistoryPlanError, match="do not fit"):
        HistoryPlan.ending_at(END, 10**12, 10_000, 3, span_hours=1)


def test_history_older_than_the_retention_window_is_refused() -> None:
    with pytest.raises(HistoryPlanError, match="retention"):
        HistoryPlan.ending_at(END, 1_000_000, 10_000, 3, span_hours=200,
                              max_span=timedelta(days=7))


def test_chunks_cover_every_reading_once() -> None:
    plan = HistoryPlan.ending_at(END, 2_500_001, 10_000, 3, chunk=1_000_000)
    chunks = plan.chunks()
    assert chunks == [(0, 1_000_000), (1_000_000, 2_000_000), (2_000_000, 2_500_001)]


def test_windows_are_every_minute_and_hour_the_history_touches() -> None:
    plan = HistoryPlan.ending_at(END, 20_000_000, 10_000, 3)  # 11:26:40 .. 11:59:59.9999
    minutes = plan.windows(Rollup.FLEET_MINUTE)
    assert minutes[0] == window_start(Rollup.FLEET_MINUTE, plan.start)
    assert minutes[-1] == datetime(2026, 3, 4, 11, 59, tzinfo=UTC)
    assert len(minutes) == 34
    assert plan.windows(Rollup.CUSTOMER_HOURLY) == [datetime(2026, 3, 4, 11, tzinfo=UTC)]


def test_partition_days_include_a_history_that_crosses_midnight() -> None:
    just_after_midnight = datetime(2026, 3, 5, 0, 10, tzinfo=UTC)
    plan = HistoryPlan.ending_at(just_after_midnight, 20_000_000, 10_000, 3)
    assert plan.days() == (date(2026, 3, 4), date(2026, 3, 5))


def test_sql_parameters_carry_the_layout() -> None:
    plan = HistoryPlan.ending_at(END, 20_000_000, 10_000, 3)
    params = plan.sql_params(1_000_000, 2_000_000, 0.05, 0.005)
    assert params == {
        "lo": 1_000_000, "hi": 2_000_000, "start": plan.start, "customers": 10_000,
        "partitions": 3, "step_us": 1_000_000, "anomaly_rate": 0.05, "fault_rate": 0.005,
    }


def test_catch_up_moment_settles_the_day_now_belongs_to() -> None:
    now = datetime(2026, 3, 4, 23, 59, 59, tzinfo=UTC)
    moment = catch_up_moment(now)
    today = window_start(Rollup.CUSTOMER_DAILY, now)
    assert today <= moment - Rollup.CUSTOMER_DAILY.width - Rollup.CUSTOMER_DAILY.settle()
    hour = window_start(Rollup.CUSTOMER_HOURLY, now)
    assert hour <= moment - Rollup.CUSTOMER_HOURLY.width - Rollup.CUSTOMER_HOURLY.settle()


@pytest.mark.parametrize(
    ("span", "interval"),
    [
        (timedelta(hours=6), timedelta(seconds=20)),  # 21.6 s per point
        (timedelta(days=7), timedelta(minutes=10)),  # 604.8 s per point
        (timedelta(hours=1), timedelta(seconds=5)),  # 3.6 s: raised to the datasource's 5 s
        (timedelta(days=30), timedelta(minutes=30)),  # 2,592 s per point
    ],
)
def test_grafana_interval_rounds_like_grafana(span: timedelta, interval: timedelta) -> None:
    assert grafana_interval(span) == interval


def test_storage_summary_divides_by_readings_and_projects_a_day() -> None:
    summary = storage_summary(raw_bytes=150_000, rollup_bytes=10_000, readings=1_000)
    assert summary["bytes_per_reading"] == 160
    assert summary["raw_bytes_per_reading"] == 150
    assert summary["rollup_bytes_per_reading"] == 10
    # 160 bytes x 864 million readings a day = 138.24 GB
    assert summary["projected_gb_per_day"] == 138.2
    assert summary["projected_raw_gb_per_day"] == 129.6
    assert summary["projected_rollup_gb_per_day"] == 8.6
