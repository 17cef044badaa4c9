"""The Kafka clients' own log: one line per kind of trouble, not one per reconnect attempt."""

from __future__ import annotations

import logging
import socket
import time

from confluent_kafka import Consumer

from heartbeat_platform.streaming.consumer_config import ConsumerConfig, client_settings
from heartbeat_platform.streaming.quiet_log import RepeatFilter, client_logger


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("x", logging.ERROR, __file__, 1, message, None, None)


def test_a_line_passes_once_per_shape_and_interval() -> None:
    gate = RepeatFilter(every_s=60)
    assert gate.filter(record("127.0.0.1:9092/1: Connect failed (after 0ms)"))
    assert not gate.filter(record("127.0.0.1:9093/2: Connect failed (after 12ms)"))
    assert gate.filter(record("GroupCoordinator: Disconnected"))
    gate.every_s = 0
    assert gate.filter(record("127.0.0.1:9092/1: Connect failed (after 0ms)"))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_consumer_client_logs_through_the_gate_with_a_broker_away() -> None:
    """A real librdkafka client against a port where nothing listens retries several times
    a second; through the gate each kind of line arrives once."""
    settings = client_settings(ConsumerConfig(f"127.0.0.1:{closed_port()}", "postgresql://x/y",
                                              "t", "g"))
    assert settings["logger"] is client_logger()
    raw, gated = Collect(), Collect()
    logger = logging.getLogger("test_client_log.gated")
    logger.addFilter(RepeatFilter())
    logger.addHandler(gated)
    counting = logging.getLogger("test_client_log.raw")
    counting.addHandler(raw)
    clients = [Consumer({**settings, "logger": logger}), Consumer({**settings, "logger": counting})]
    for client in clients:
        client.subscribe(["t"])
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        for client in clients:
            client.poll(0.1)
    for client in clients:
        client.close()
    refused = [line for line in raw.lines if "refused" in line]
    assert len(refused) >= 5, raw.lines  # what reaches stderr without the gate
    shapes = {line.split(": Connect")[0].rsplit(":", 1)[0] for line in refused}
    gated_refused = [line for line in gated.lines if "refused" in line]
    assert 1 <= len(gated_refused) <= len(shapes), gated.lines
