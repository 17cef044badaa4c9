"""Pure domain core: events, validation, classification, generation and alerting.

No Kafka, database or orchestration imports here, so it is fast to test and to reuse.
"""

from heartbeat_platform.domain.alerts import AlertManager, MetricRow, PipelineStats
from heartbeat_platform.domain.events import (
    HeartbeatClass,
    InvalidMessage,
    Reading,
    classify_heart_rate,
    encode_event,
    validate_message,
)
from heartbeat_platform.domain.generator import (
    DEFAULT_ANOMALY_RATE,
    DEFAULT_CUSTOMER_COUNT,
    DEFAULT_FAULT_RATE,
    MAX_CUSTOMER_COUNT,
    SENSOR_FAULT_VALUES,
    HeartbeatGenerator,
    customer_id,
)

__all__ = [
    "DEFAULT_ANOMALY_RATE",
    "DEFAULT_CUSTOMER_COUNT",
    "DEFAULT_FAULT_RATE",
    "MAX_CUSTOMER_COUNT",
    "SENSOR_FAULT_VALUES",
    "AlertManager",
    "HeartbeatClass",
    "HeartbeatGenerator",
    "InvalidMessage",
    "MetricRow",
    "PipelineStats",
    "Reading",
    "classify_heart_rate",
    "customer_id",
    "encode_event",
    "validate_message",
]
