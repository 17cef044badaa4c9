"""The tables the consumer writes. Dagster does not build them (external assets); the
consumer run materialises each one it wrote at its progress interval (see
`defs/ingest/jobs.py`), and the freshness policies below turn a table red in the catalog
when no run has written it for a while: a stalled consumer, or no readings arriving."""

from datetime import timedelta
from typing import Any

import dagster as dg

from heartbeat_platform.defs.asset_keys import ANOMALIES, DEAD_LETTERS, METRICS, RECORDS, TOPIC
from heartbeat_platform.domain.events import MAX_HEART_RATE, NORMAL_HIGH, NORMAL_LOW

# At the design rate every interval brings thousands of readings and hundreds of anomalies;
# the consumer reports every 30 s. Dead letters only come with bad messages: no policy.
READINGS_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(minutes=10), warn_window=timedelta(minutes=2)
)

_landing: dict[str, Any] = {
    "group_name": "landing", "kinds": {"postgres", "table"}, "deps": [TOPIC]
}
tables = [
    dg.AssetSpec(
        RECORDS,
        description=f"NORMAL readings ({NORMAL_LOW}..{NORMAL_HIGH} bpm), one per "
        "(customer_id, event_timestamp), "
        "each with its Kafka partition and offset. Written by heartbeat_consumer.",
        freshness_policy=READINGS_FRESHNESS,
        **_landing,
    ),
    dg.AssetSpec(
        ANOMALIES,
        description=f"BRADYCARDIA (<{NORMAL_LOW}), TACHYCARDIA (>{NORMAL_HIGH}) and INVALID "
        f"(<=0 or >{MAX_HEART_RATE}, sensor faults) readings with the raw JSON as audit trail; "
        "one alert row each in pipeline_metrics. Written by heartbeat_consumer.",
        freshness_policy=READINGS_FRESHNESS,
        **_landing,
    ),
    dg.AssetSpec(
        DEAD_LETTERS,
        description="Messages that are not readings (bad JSON, missing fields, wrong types), "
        "byte for byte with a reason. Written by heartbeat_consumer.",
        **_landing,
    ),
    dg.AssetSpec(
        METRICS,
        description="alert_<type> rows (one per anomaly), the consumer's cumulative stats_* "
        "snapshots and the health_* rows of pipeline_health_snapshot.",
        freshness_policy=READINGS_FRESHNESS,
        **_landing,
    ),
]
