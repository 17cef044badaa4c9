"""Asset keys that several concerns refer to (lineage, observations, checks)."""

import dagster as dg

TOPIC = dg.AssetKey("heartbeat_events")
RECORDS = dg.AssetKey("heartbeat_records")
ANOMALIES = dg.AssetKey("heartbeat_anomalies")
DEAD_LETTERS = dg.AssetKey("heartbeat_dead_letters")
METRICS = dg.AssetKey("pipeline_metrics")
CUSTOMERS = dg.AssetKey("customers")
ALERT_EPISODES = dg.AssetKey("alert_episodes")
