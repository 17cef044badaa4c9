"""Was the topic deleted and created again under a running consumer?

librdkafka neither assigns a subscribed topic that was created again (it stays without
partitions) nor resets a position when the topic's id changes, so the consumer looks for
itself: every `every_s` it asks the topic's id, through one admin client kept for the
consumer's life (a client per question would open new connections, and on a managed
cluster do a SASL handshake, every time). README, "Guarantees".
"""

from __future__ import annotations

import time

from confluent_kafka.admin import AdminClient

from heartbeat_platform.streaming.topics import admin_client, topic_id


class TopicWatch:
    def __init__(self, bootstrap_servers: str, topic: str, overrides: dict | None,
                 every_s: float):
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.overrides = overrides
        self.every_s = every_s
        self._admin: AdminClient | None = None
        self._checked_at = time.monotonic()

    def current_id(self) -> str | None:
        """The topic's id as the broker has it now (None: missing, no ids, no answer)."""
        if self._admin is None:
            self._admin = admin_client(self.bootstrap_servers, self.overrides)
        return topic_id(self.bootstrap_servers, self.topic, admin=self._admin)

    def joined(self, now: float) -> None:
        """A client just joined: its assignment reads the id anyway; the next look waits."""
        self._checked_at = now

    def created_again(self, known: str | None, now: float) -> str | None:
        """The topic's new id if it is no longer `known` (asked at most every `every_s`;
        None otherwise, or when `known` is None: nothing to compare with)."""
        if known is None or now - self._checked_at < self.every_s:
            return None
        self._checked_at = now
        current = self.current_id()
        return current if current is not None and current != known else None
