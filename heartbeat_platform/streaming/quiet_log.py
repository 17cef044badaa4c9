"""Warnings that repeat (a broker away, a commit refused) logged once per key per interval,
so an outage gives a line every few seconds, not one per poll; the Kafka clients' own log
goes through the same kind of gate."""

from __future__ import annotations

import logging
import re
import time


class QuietLog:
    def __init__(self, log: logging.Logger, every_s: float = 10.0):
        self.log = log
        self.every_s = every_s
        self._logged_at: dict[object, float] = {}

    def warning(self, key: object, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._logged_at.get(key, float("-inf")) >= self.every_s:
            self._logged_at[key] = now
            self.log.warning(message, *args)


class RepeatFilter(logging.Filter):
    """Lets a line through once per `every_s` per shape (the line with its numbers taken
    out): librdkafka logs every reconnect attempt to a broker that is away, several a
    second, and its error callback already says "brokers are down" (README,
    "Configuration", on logs)."""

    def __init__(self, every_s: float = 30.0):
        super().__init__()
        self.every_s = every_s
        self._passed_at: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        shape = _DIGITS.sub("#", record.getMessage())
        now = time.monotonic()
        if now - self._passed_at.get(shape, float("-inf")) < self.every_s:
            return False
        self._passed_at[shape] = now
        return True


_DIGITS = re.compile(r"\d+")
CLIENT_LOG = logging.getLogger("heartbeat_platform.librdkafka")
CLIENT_LOG.addFilter(RepeatFilter())


def client_logger() -> logging.Logger:
    """Where a Kafka client's own log goes (librdkafka's `logger`): Python logging, each
    kind of line at most every 30 s, instead of raw lines on stderr."""
    return CLIENT_LOG
