"""`bench --history N --cold` on a small history: the JSON's keys, positive sizes and rates,
reads that return every reading loaded for the customer-day, and the equality check."""

from __future__ import annotations

from heartbeat_platform.bench.cold import COLD_DATABASE, CUSTOMER, cold_stage
from heartbeat_platform.bench.services import drop_database
from heartbeat_platform.config import load_settings

CUSTOMERS = 10
READINGS = 20_000  # 2,000 a customer over two days: 1,000 a customer-day


def test_cold_stage_reports_sizes_rates_reads_and_equality(embedded_postgres) -> None:
    url = embedded_postgres.url()
    settings = load_settings(
        _env_file=None, database_url=url, kafka_bootstrap_servers="127.0.0.1:9",  # unused
        heartbeat_customer_count=CUSTOMERS, kafka_partitions=3,
    )
    try:
        result = cold_stage(settings, READINGS, span_hours=48)
    finally:
        drop_database(url, COLD_DATABASE)

    assert result["history"]["readings"] == READINGS
    hot, cold, compaction = result["hot"], result["cold"], result["compaction"]
    assert len(hot["days"]) == 2
    assert hot["readings"] == cold["readings"] == compaction["readings_moved"] == READINGS
    for value in (hot["bytes_per_reading"], cold["bytes_per_reading"],
                  compaction["readings_per_s"], *(d["readings_per_s"] for d in compaction["days"])):
        assert isinstance(value, float) and value > 0
    assert cold["bytes_per_reading"] < hot["bytes_per_reading"]
    assert [d["day"] for d in compaction["days"]] == hot["days"]
    assert compaction["days_refused"] == {} and compaction["days_busy"] == []

    day = result["reads"]["day"]
    assert result["reads"]["customer"] == CUSTOMER
    assert day["readings_hot_before"] == READINGS // CUSTOMERS // 2
    assert day["readings_python"] == day["readings_sql"] == day["readings_hot_before"]
    assert day["python_median_ms"] > 0 and day["sql_median_ms"] > 0
    assert day["matches_hot_count"] is True
    assert result["reads"]["month"]["covered"] is False
    assert "28 days" in result["reads"]["month"]["why"]

    equality = result["equality"]
    assert equality["days_checked"] == 2
    assert equality["customers_checked"] == 2 * CUSTOMERS
    assert equality["days_differing"] == []
    assert equality["passed"] is True


def test_a_history_of_28_days_covers_a_customer_month(embedded_postgres) -> None:
    url = embedded_postgres.url()
    settings = load_settings(
        _env_file=None, database_url=url, kafka_bootstrap_servers="127.0.0.1:9",  # unused
        heartbeat_customer_count=2, kafka_partitions=3,
    )
    readings = 2 * 28 * 50  # 50 a customer-day
    try:
        result = cold_stage(settings, readings, span_hours=28 * 24)
    finally:
        drop_database(url, COLD_DATABASE)

    assert len(result["hot"]["days"]) == 28
    month = result["reads"]["month"]
    assert month["runs"] == 3
    assert month["readings_python"] == month["readings_sql"] == month["readings_hot_before"]
    assert month["readings_hot_before"] == readings // 2
    assert result["reads"]["day"]["readings_python"] == 50
    assert result["equality"]["passed"] is True
