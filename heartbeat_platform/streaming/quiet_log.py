"""Warnings that repeat (a broker away, a commit refused) logged once per key per interval,
so an outage gives a line every few seconds, not one per poll."""

from __future__ import annotations

import logging
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
