"""The bench's history, drawn and written in SQL, held against the Python it stands for.

`heartbeat-platform bench --history N` loads its readings with one INSERT ... SELECT per
chunk (bench.history); the consumer classifies with `domain.events.classify_heart_rate` and
the producer draws with `domain.generator`. The SQL takes their numbers as parameters, and
these tests run it on a real PostgreSQL: the classification agrees with the Python at every
rate around the limits, and a loaded history is what the generator and the consumer would
have made (the same values per class, in about the same shares, each row where the
consumer puts it), so neither language can change alone.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from heartbeat_platform.bench.history import (
    CLASSIFY_SQL,
    HISTORY_CHUNK_SQL,
    HISTORY_FACTS,
    INGEST_DELAY,
    HistoryPlan,
    load_history,
)
from heartbeat_platform.config import load_settings
from heartbeat_platform.domain.events import (
    MAX_HEART_RATE,
    NORMAL_HIGH,
    NORMAL_LOW,
    HeartbeatClass,
    classify_heart_rate,
    validate_message,
)
from heartbeat_platform.domain.generator import (
    BRADYCARDIA_RATES,
    SENSOR_FAULT_VALUES,
    TACHYCARDIA_RATES,
    HeartbeatGenerator,
    customer_id,
)
from heartbeat_platform.storage.migrations import migrate

RATES = range(-3, MAX_HEART_RATE + 4)  # every rate a limit could sit at, and beyond
END = datetime(2026, 3, 4, 12, 0, 0, tzinfo=UTC)
CUSTOMERS = 1_000
READINGS = 60_000
# High rates, so that every anomaly and fault value turns up in a small history.
ANOMALY_RATE, FAULT_RATE = 0.3, 0.05


@pytest.fixture
def bench_db(database_url: str) -> Iterator[str]:
    migrate(database_url)
    yield database_url


def test_the_history_classifies_every_rate_as_the_consumer_does(db) -> None:
    (classes,) = db.execute(
        f"SELECT array_agg(coalesce({CLASSIFY_SQL}, 'NORMAL') ORDER BY n) "
        "FROM unnest(%(rates)s::int[]) WITH ORDINALITY AS t(heart_rate, n)",
        {**HISTORY_FACTS, "rates": list(RATES)},
    ).fetchone()
    assert classes == [classify_heart_rate(bpm).value for bpm in RATES]
    assert set(classes) == set(HeartbeatClass)


def stored_readings(url: str) -> list[tuple[str, datetime, int, str]]:
    """(customer, time, rate, class) of every reading stored, records and anomalies."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT customer_id, event_timestamp, heart_rate, 'NORMAL' FROM heartbeat_records "
            "UNION ALL SELECT customer_id, event_timestamp, heart_rate, anomaly_type "
            "FROM heartbeat_anomalies ORDER BY 2, 1"
        ).fetchall()


def test_a_loaded_history_is_what_the_generator_and_the_consumer_would_have_made(
    bench_db: str,
) -> None:
    plan = HistoryPlan.ending_at(END, READINGS, CUSTOMERS, 3)
    settings = load_settings(_env_file=None, heartbeat_anomaly_rate=ANOMALY_RATE,
                             heartbeat_fault_rate=FAULT_RATE)
    loaded = load_history(bench_db, plan, settings, log=lambda message: None)
    readings = stored_readings(bench_db)

    # every reading stored once, where the plan puts it, in the table its class goes to
    assert [(c, t) for c, t, _, _ in readings] == [
        (customer_id(i % CUSTOMERS + 1), plan.reading_time(i)) for i in range(READINGS)
    ]
    assert all(kind == classify_heart_rate(bpm) for _, _, bpm, kind in readings)
    by_class: dict[str, list[int]] = {kind: [] for kind in HeartbeatClass}
    for _, _, bpm, kind in readings:
        by_class[kind].append(bpm)
    assert loaded["anomalies"] == READINGS - len(by_class[HeartbeatClass.NORMAL])

    # the generator's values per class, in about the generator's shares
    python = Counter()
    normal_python = []
    generator = HeartbeatGenerator(CUSTOMERS, ANOMALY_RATE, FAULT_RATE, seed=7)
    for _ in range(READINGS):
        bpm = generator.generate_heart_rate()
        python[classify_heart_rate(bpm)] += 1
        if classify_heart_rate(bpm) is HeartbeatClass.NORMAL:
            normal_python.append(bpm)
    assert set(by_class[HeartbeatClass.BRADYCARDIA]) == set(BRADYCARDIA_RATES)
    assert set(by_class[HeartbeatClass.TACHYCARDIA]) == set(TACHYCARDIA_RATES)
    assert set(by_class[HeartbeatClass.INVALID]) == set(SENSOR_FAULT_VALUES)
    assert min(by_class[HeartbeatClass.NORMAL]) == NORMAL_LOW
    assert max(by_class[HeartbeatClass.NORMAL]) <= NORMAL_HIGH
    for kind in HeartbeatClass:
        assert len(by_class[kind]) / READINGS == pytest.approx(python[kind] / READINGS, abs=0.01)
    assert statistics.fmean(by_class[HeartbeatClass.NORMAL]) == pytest.approx(
        statistics.fmean(normal_python), abs=0.5)

    # each anomaly with the raw JSON a consumer would have received, and its alert row
    with psycopg.connect(bench_db) as conn:
        anomalies = conn.execute(
            "SELECT customer_id, event_timestamp, heart_rate, raw_payload FROM heartbeat_anomalies"
        ).fetchall()
        alerts = dict(conn.execute(
            "SELECT metric_name, count(*) FROM pipeline_metrics GROUP BY 1"
        ).fetchall())
    assert all(validate_message(raw.encode()) == (c, bpm, t) for c, t, bpm, raw in anomalies)
    assert alerts == {
        f"alert_{kind.lower()}": len(by_class[kind])
        for kind in HeartbeatClass if kind is not HeartbeatClass.NORMAL
    }


def test_the_normal_rates_are_clamped_to_the_normal_limits(bench_db: str) -> None:
    """A spread so wide that the clamp is hit on both sides: the limits are stored as NORMAL."""
    plan = HistoryPlan.ending_at(END, 2_000, CUSTOMERS, 3)
    with psycopg.connect(bench_db) as conn:
        conn.execute("SELECT heartbeat_ensure_partitions(%s, %s)", plan.days())
        params = {**HISTORY_FACTS, **plan.sql_params(0, plan.readings, 0.0, 0.0),
                  "normal_sd": 1_000.0}
        anomalies = conn.execute(HISTORY_CHUNK_SQL, params).fetchone()[0]
        conn.commit()
    rates = Counter(bpm for _, _, bpm, _ in stored_readings(bench_db))
    assert anomalies == 0
    assert rates[NORMAL_LOW] > 0 and rates[NORMAL_HIGH] > 0
    assert set(rates) <= set(range(NORMAL_LOW, NORMAL_HIGH + 1))
    assert sum(rates.values()) == plan.readings


def test_a_reading_is_stored_after_its_time_within_the_planned_delay(bench_db: str) -> None:
    """The partitions `HistoryPlan.days` asks for hold the stored times the SQL draws."""
    plan = HistoryPlan.ending_at(END, 5_000, CUSTOMERS, 3)
    load_history(bench_db, plan, load_settings(_env_file=None), log=lambda message: None)
    with psycopg.connect(bench_db) as conn:
        low, high = conn.execute(
            "SELECT min(ingested_at - event_timestamp), max(ingested_at - event_timestamp) "
            "FROM heartbeat_records"
        ).fetchone()
    delay_min, delay_max = INGEST_DELAY
    assert delay_min <= low <= high <= delay_max
    assert plan.days()[1] >= (plan.last_reading_at + delay_max).date()
