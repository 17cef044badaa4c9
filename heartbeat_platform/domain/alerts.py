"""Alerts on anomalous readings and the counters a consumer process reports.

Both produce :class:`MetricRow` values (rows of the ``pipeline_metrics`` table) instead of
writing anywhere, so the domain stays free of database code.

Banner severity: BRADYCARDIA and TACHYCARDIA are ``CRITICAL`` (a patient may need help);
INVALID is ``WARNING`` and titled ``SENSOR FAULT`` (the device, not the heart, needs
attention). Banners are logged at WARNING level and rate limited, because an anomaly
storm must not flood the log or slow the consumer down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from heartbeat_platform.domain.events import HeartbeatClass, Reading

__all__ = ["STATS_EVERY", "AlertManager", "MetricRow", "PipelineStats"]

STATS_EVERY = 100  # messages between two stats snapshots (HEARTBEAT_STATS_EVERY's default)

_LOGGER = logging.getLogger("heartbeat_platform.alerts")
_ALERT_CLASSES = (HeartbeatClass.BRADYCARDIA, HeartbeatClass.TACHYCARDIA, HeartbeatClass.INVALID)
_METRIC_NAMES = {klass: f"alert_{klass.value.lower()}" for klass in _ALERT_CLASSES}
_SEVERITY = {
    HeartbeatClass.BRADYCARDIA: "CRITICAL",
    HeartbeatClass.TACHYCARDIA: "CRITICAL",
    HeartbeatClass.INVALID: "WARNING",
}
_TITLE = {
    HeartbeatClass.BRADYCARDIA: "BRADYCARDIA",
    HeartbeatClass.TACHYCARDIA: "TACHYCARDIA",
    HeartbeatClass.INVALID: "SENSOR FAULT",
}


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One ``pipeline_metrics`` row; Kafka coordinates tie an alert back to its message."""

    metric_name: str
    metric_value: float
    customer_id: str | None = None
    kafka_partition: int | None = None
    kafka_offset: int | None = None
    log_epoch: int | None = None
    labels: dict = field(default_factory=dict)


class AlertManager:
    """Counts alerts per type and logs a banner for each, at most ``banner_limit`` per window.

    Banners over the limit are counted, not lost: the first call after the window ends
    (or :meth:`flush_banners`) logs one summary line. Not thread-safe; use one per consumer.
    """

    __slots__ = (
        "_limit",
        "_window",
        "_clock",
        "_logger",
        "_counts",
        "_suppressed",
        "_window_start",
        "_summary_since",
        "_banners",
    )

    def __init__(
        self,
        banner_limit: int = 20,
        window_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = _LOGGER,
    ) -> None:
        if type(banner_limit) is not int or banner_limit < 0:
            raise ValueError(f"banner_limit must be a non-negative integer, got {banner_limit!r}")
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds!r}")
        self._limit = banner_limit
        self._window = float(window_seconds)
        self._clock = clock
        self._logger = logger
        self._counts = dict.fromkeys(_ALERT_CLASSES, 0)
        self._suppressed = dict.fromkeys(_ALERT_CLASSES, 0)
        self._window_start: float | None = None
        self._summary_since = 0.0
        self._banners = 0

    @property
    def counts(self) -> dict[HeartbeatClass, int]:
        """Alerts triggered so far, per anomaly type."""
        return dict(self._counts)

    def trigger_alert(
        self,
        reading: Reading,
        klass: HeartbeatClass,
        kafka_partition: int | None = None,
        kafka_offset: int | None = None,
        log_epoch: int | None = None,
    ) -> MetricRow:
        """Record an anomaly; the metric row is returned even when the banner is suppressed."""
        metric_name = _METRIC_NAMES.get(klass)
        if metric_name is None:
            raise ValueError(f"only anomalies trigger alerts, got {klass!r}")
        count = self._counts[klass] + 1
        self._counts[klass] = count

        now = self._clock()
        if self._window_start is None or now - self._window_start >= self._window:
            self._emit_summary(now)
            self._window_start = self._summary_since = now
            self._banners = 0
        if self._banners < self._limit:
            self._banners += 1
            self._logger.warning(
                "ALERT [%s] %s customer=%s bpm=%d (%s #%d)",
                _SEVERITY[klass],
                _TITLE[klass],
                reading.customer_id,
                reading.heart_rate,
                klass.value.lower(),
                count,
            )
        else:
            self._suppressed[klass] += 1

        return MetricRow(
            metric_name,
            float(reading.heart_rate),
            reading.customer_id,
            kafka_partition,
            kafka_offset,
            log_epoch,
            {"count": count},
        )

    def flush_banners(self) -> None:
        """Log the pending suppression summary now, e.g. on shutdown."""
        self._emit_summary(self._clock())

    def _emit_summary(self, now: float) -> None:
        suppressed = self._suppressed
        total = sum(suppressed.values())
        if not total or self._window_start is None:  # a suppression implies a window
            return
        end = min(now, self._window_start + self._window)
        self._logger.warning(
            "suppressed %d alert banners in the last %.1fs (%s)",
            total,
            end - self._summary_since,
            ", ".join(f"{klass.value.lower()}={n}" for klass, n in suppressed.items() if n),
        )
        self._summary_since = end
        for klass in suppressed:
            suppressed[klass] = 0


@dataclass(slots=True)
class PipelineStats:
    """Cumulative counters of one consumer process, reported as ``stats_*`` metric rows."""

    messages_consumed: int = 0
    records_written: int = 0
    anomalies_bradycardia: int = 0
    anomalies_tachycardia: int = 0
    anomalies_invalid: int = 0
    dead_letters: int = 0
    duplicates_dropped: int = 0
    alerts_triggered: int = 0
    batches: int = 0
    _consumed_at_flush: int = field(default=0, init=False, repr=False, compare=False)

    def record_batch(
        self,
        *,
        messages_consumed: int,
        records_written: int = 0,
        anomalies_bradycardia: int = 0,
        anomalies_tachycardia: int = 0,
        anomalies_invalid: int = 0,
        dead_letters: int = 0,
        duplicates_dropped: int = 0,
        alerts_triggered: int = 0,
    ) -> None:
        """Add one batch's outcome; counts must not be negative (counters only grow)."""
        if (
            min(
                messages_consumed,
                records_written,
                anomalies_bradycardia,
                anomalies_tachycardia,
                anomalies_invalid,
                dead_letters,
                duplicates_dropped,
                alerts_triggered,
            )
            < 0
        ):
            raise ValueError("batch counts must not be negative")
        self.messages_consumed += messages_consumed
        self.records_written += records_written
        self.anomalies_bradycardia += anomalies_bradycardia
        self.anomalies_tachycardia += anomalies_tachycardia
        self.anomalies_invalid += anomalies_invalid
        self.dead_letters += dead_letters
        self.duplicates_dropped += duplicates_dropped
        self.alerts_triggered += alerts_triggered
        self.batches += 1

    @property
    def anomalies(self) -> int:
        """Anomalies written, of every type (the rows of heartbeat_anomalies)."""
        return self.anomalies_bradycardia + self.anomalies_tachycardia + self.anomalies_invalid

    def should_flush(self, every: int = STATS_EVERY) -> bool:
        """True once ``every`` messages were consumed since the last snapshot."""
        return self.messages_consumed - self._consumed_at_flush >= every

    def flush_stats(self, labels: dict | None = None) -> list[MetricRow]:
        """Snapshot every counter as a ``stats_<name>`` row with the given labels."""
        self._consumed_at_flush = self.messages_consumed
        labels = labels or {}
        return [
            MetricRow(f"stats_{name}", float(getattr(self, name)), labels=dict(labels))
            for name in _STAT_NAMES
        ]


_STAT_NAMES = tuple(f.name for f in fields(PipelineStats) if not f.name.startswith("_"))
