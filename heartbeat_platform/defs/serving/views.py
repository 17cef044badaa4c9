"""The views of `sql/002_views.sql`, the `customers` table and the Grafana dashboard:
external assets, listed for lineage (their upstream assets are what they read)."""

from typing import Any

import dagster as dg

from heartbeat_platform.defs.asset_keys import (
    ALERT_EPISODES,
    ANOMALIES,
    CUSTOMERS,
    DEAD_LETTERS,
    METRICS,
    RECORDS,
)

_serving: dict[str, Any] = {"group_name": "serving", "kinds": {"postgres", "view"}}
views = [
    dg.AssetSpec(
        "vw_customer_bpm_summary",
        description="Per customer, over the rollups' retention: readings, BPM average/min/max/"
        "stddev, anomalies by type. Daily and hourly rollups plus the raw readings newer than "
        "the newest rolled-up hour; filter by customer_id.",
        deps=[RECORDS, ANOMALIES, "customer_hourly_bpm_stats", "customer_daily_bpm_stats"],
        **_serving,
    ),
    dg.AssetSpec(
        "vw_recent_anomalies",
        description="Anomalies of the last 24 hours, newest first, with a severity.",
        deps=[ANOMALIES],
        **_serving,
    ),
    dg.AssetSpec(
        "vw_pipeline_summary",
        description="One row: totals of records, anomalies by type, dead letters, alerts, "
        "active customers. Totals from fleet_minute_stats plus the raw readings newer than "
        "its newest minute.",
        deps=[RECORDS, ANOMALIES, DEAD_LETTERS, "fleet_minute_stats", CUSTOMERS],
        **_serving,
    ),
]


customers = dg.AssetSpec(
    CUSTOMERS,
    description="Every customer seen: first and last valid reading, last anomaly. Kept "
    "current by each fleet_minute_stats run; the dashboard's customer list and the active "
    "customer count read this small table instead of the readings.",
    deps=["fleet_minute_stats"],
    group_name="rollups",
    kinds={"postgres", "table"},
)

dashboard = dg.AssetSpec(
    "customer_heartbeat_monitoring",
    description="Grafana dashboard \"Customer Heartbeat Monitoring\" (uid heartbeat-monitoring): "
    "fleet average BPM, anomaly breakdown, recent anomalies, pipeline health and consumer lag. "
    "Its upstream assets are what its panels query.",
    deps=[
        RECORDS, ANOMALIES, METRICS, "vw_recent_anomalies", "vw_pipeline_summary",
        "fleet_minute_stats", "customer_hourly_bpm_stats", CUSTOMERS,
        "pipeline_health_snapshot", ALERT_EPISODES,
    ],
    group_name="dashboards",
    kinds={"grafana"},
    metadata={"grafana_uid": "heartbeat-monitoring", "grafana_path": "/d/heartbeat-monitoring"},
)

