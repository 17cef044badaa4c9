"""Data-quality checks on the tables the consumer writes.

Every check reads the readings of the last hour (CHECK_WINDOW) by event time: the day
partitions and the time indexes keep that a bounded read, whatever history holds. The
`data_quality` job runs them every five minutes.

Severities are chosen by what a failure means downstream:
- blocking ERROR: anomaly types that contradict the heart rate, and missing or malformed
  required values. Such rows mean the consumer (or someone writing by hand) broke the
  rules; a job that materialises anything downstream of these tables together with the
  checks stops on such a failure.
- WARN: duplicate readings (the summaries count each reading once anyway), an anomaly
  share outside its expected band (a real event or a sensor problem worth a look, not bad
  data) and a stale latest reading (the producer may simply be stopped).
"""

from collections.abc import Callable
from datetime import timedelta

import dagster as dg
import psycopg

from heartbeat_platform.defs.asset_keys import ANOMALIES, RECORDS
from heartbeat_platform.defs.resources import PostgresResource
from heartbeat_platform.domain.events import (
    CUSTOMER_ID_PATTERN,
    CUSTOMER_ID_RULE,
    classify_heart_rate,
)
from heartbeat_platform.storage.database import one_row

WHOLE_CUSTOMER_ID = f"^{CUSTOMER_ID_PATTERN}$"  # PostgreSQL's `~` finds a match anywhere
ANOMALY_SHARE_BOUNDS = (0.005, 0.20)  # generator: 5% cardiac + 0.5% sensor faults
CHECK_WINDOW = timedelta(hours=1)
ANOMALY_SHARE_WINDOW = CHECK_WINDOW
ANOMALY_SHARE_MIN_READINGS = 500  # fewer readings than this say nothing about the share
FRESHNESS_LIMIT = timedelta(minutes=10)
SAMPLE_ROWS = 5
# Each check's body on a connection, by check key (filled below): the @asset_check runs it
# in the data_quality job, the consumer run in its own (see `evaluate`).
EVALUATORS: dict[dg.AssetCheckKey, Callable[[psycopg.Connection], dg.AssetCheckResult]] = {}


@dg.asset_check(
    asset=ANOMALIES,
    blocking=True,
    description="Every anomaly_type of the last hour is what classify_heart_rate() gives its "
    "heart_rate.",
)
def anomaly_type_matches_heart_rate(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connect() as conn:
        return _anomaly_type_matches_heart_rate(conn)


def _anomaly_type_matches_heart_rate(conn: psycopg.Connection) -> dg.AssetCheckResult:
    groups = conn.execute(
        "SELECT heart_rate, anomaly_type, count(*) FROM heartbeat_anomalies "
        "WHERE event_timestamp > now() - %s GROUP BY 1, 2",
        (CHECK_WINDOW,),
    ).fetchall()
    wrong = [
        (bpm, stored, classify_heart_rate(bpm).value, n)
        for bpm, stored, n in groups
        if stored != classify_heart_rate(bpm).value
    ]
    return dg.AssetCheckResult(
        passed=not wrong,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "mismatched_rows": sum(n for *_, n in wrong),
            "examples": [f"{bpm} bpm stored as {s}, is {want}" for bpm, s, want, _ in wrong][
                :SAMPLE_ROWS
            ],
        },
    )


def _required_values_check(asset: dg.AssetKey, table: str, columns: tuple[str, ...]):
    missing = " OR ".join(f"{c} IS NULL" for c in columns)
    query = (
        f"SELECT count(*) FROM {table} WHERE event_timestamp > now() - %s "
        f"AND ({missing} OR customer_id !~ %s)"
    )

    @dg.asset_check(
        asset=asset,
        name="required_values_present",
        blocking=True,
        description=f"No NULL in {', '.join(columns)}; every customer_id is {CUSTOMER_ID_RULE} "
        "(readings of the last hour).",
    )
    def check(postgres: PostgresResource) -> dg.AssetCheckResult:
        with postgres.connect() as conn:
            return count_bad_rows(conn)

    def count_bad_rows(conn: psycopg.Connection) -> dg.AssetCheckResult:
        bad = one_row(conn.execute(query, (CHECK_WINDOW, WHOLE_CUSTOMER_ID)))[0]
        return dg.AssetCheckResult(
            passed=bad == 0, severity=dg.AssetCheckSeverity.ERROR, metadata={"bad_rows": bad}
        )

    EVALUATORS[dg.AssetCheckKey(asset, "required_values_present")] = count_bad_rows
    return check


@dg.asset_check(
    asset=ANOMALIES,
    description="No reading (customer_id, event_timestamp) of the last hour stored both as "
    "an anomaly and as a record. Each table's primary key keeps a reading once in it "
    "(sql/007); no key spans the two, so a reading sent again with another heart rate "
    "(another class) would land in both.",
)
def no_duplicate_readings(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connect() as conn:
        return _no_duplicate_readings(conn)


def _no_duplicate_readings(conn: psycopg.Connection) -> dg.AssetCheckResult:
    (both,) = one_row(conn.execute(
        """SELECT count(*) FROM heartbeat_anomalies a
           JOIN heartbeat_records r USING (customer_id, event_timestamp)
           WHERE a.event_timestamp > now() - %(w)s
             AND r.event_timestamp > now() - %(w)s""",
        {"w": CHECK_WINDOW},
    ))
    return dg.AssetCheckResult(
        passed=both == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"readings_in_both_tables": both},
    )


@dg.asset_check(
    asset=ANOMALIES,
    additional_deps=[RECORDS],
    description=f"Anomalies are {ANOMALY_SHARE_BOUNDS[0]:.1%} to {ANOMALY_SHARE_BOUNDS[1]:.0%} "
    f"of the readings of the last hour (judged from {ANOMALY_SHARE_MIN_READINGS} readings on).",
)
def anomaly_share_within_bounds(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connect() as conn:
        return _anomaly_share_within_bounds(conn)


def _anomaly_share_within_bounds(conn: psycopg.Connection) -> dg.AssetCheckResult:
    records, anomalies = one_row(conn.execute(
        """SELECT (SELECT count(*) FROM heartbeat_records
                    WHERE event_timestamp > now() - %(w)s),
                  (SELECT count(*) FROM heartbeat_anomalies
                    WHERE event_timestamp > now() - %(w)s)""",
        {"w": ANOMALY_SHARE_WINDOW},
    ))
    readings = records + anomalies
    share = anomalies / readings if readings else 0.0
    low, high = ANOMALY_SHARE_BOUNDS
    enough = readings >= ANOMALY_SHARE_MIN_READINGS
    return dg.AssetCheckResult(
        passed=not enough or low <= share <= high,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"anomaly_share": share, "readings_last_hour": readings, "judged": enough},
    )


@dg.asset_check(
    asset=RECORDS,
    description=f"The latest reading is at most {FRESHNESS_LIMIT} old.",
)
def latest_reading_is_fresh(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.connect() as conn:
        return _latest_reading_is_fresh(conn)


def _latest_reading_is_fresh(conn: psycopg.Connection) -> dg.AssetCheckResult:
    age = one_row(conn.execute(  # a bounded read: only the window that would pass
        "SELECT now() - max(event_timestamp) FROM heartbeat_records "
        "WHERE event_timestamp > now() - %s",
        (FRESHNESS_LIMIT,),
    ))[0]
    return dg.AssetCheckResult(
        passed=age is not None,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "latest_reading_age_s": age.total_seconds() if age is not None else -1.0,
            "has_recent_readings": age is not None,
        },
    )


blocking_checks = [
    anomaly_type_matches_heart_rate,
    _required_values_check(
        ANOMALIES, "heartbeat_anomalies",
        ("customer_id", "event_timestamp", "heart_rate", "anomaly_type", "raw_payload"),
    ),
    _required_values_check(
        RECORDS, "heartbeat_records", ("customer_id", "event_timestamp", "heart_rate"),
    ),
]
all_checks = [
    *blocking_checks, no_duplicate_readings, anomaly_share_within_bounds, latest_reading_is_fresh,
]
EVALUATORS.update({
    dg.AssetCheckKey(ANOMALIES, "anomaly_type_matches_heart_rate"):
        _anomaly_type_matches_heart_rate,
    dg.AssetCheckKey(ANOMALIES, "no_duplicate_readings"): _no_duplicate_readings,
    dg.AssetCheckKey(ANOMALIES, "anomaly_share_within_bounds"): _anomaly_share_within_bounds,
    dg.AssetCheckKey(RECORDS, "latest_reading_is_fresh"): _latest_reading_is_fresh,
})


def evaluate(conn: psycopg.Connection) -> list[dg.AssetCheckEvaluation]:
    """Every landing check on `conn`, as the events a run logs for checks it evaluates
    outside their own job: what the consumer run reports with its materialisations."""
    evaluations = []
    for key, check in EVALUATORS.items():
        result = check(conn)
        evaluations.append(dg.AssetCheckEvaluation(
            asset_key=key.asset_key, check_name=key.name, passed=result.passed,
            metadata=result.metadata, severity=result.severity,
        ))
    return evaluations
