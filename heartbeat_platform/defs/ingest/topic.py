"""The Kafka topic: the start of the lineage."""

import dagster as dg

from heartbeat_platform.defs.asset_keys import TOPIC

topic = dg.AssetSpec(
    TOPIC,
    description="Kafka topic of heart-rate readings (KAFKA_TOPIC, default heartbeat-events): "
    "JSON {customer_id, heart_rate, timestamp}, key = customer_id, gzip, 3 partitions, 24 h "
    "retention. Written by the heartbeat_producer job (or any producer); read by "
    "heartbeat_consumer.",
    group_name="ingest",
    kinds={"kafka"},
)
