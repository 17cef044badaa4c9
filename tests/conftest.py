"""What every test gets: the fixtures the test folders share (tests/support, registered as
plugins) and the markers of the real services a test starts or uses (registered in
pyproject.toml's [tool.pytest.ini_options]).

A test that requests a service's fixture, itself or through another fixture, is marked for
that service here; a test that starts a service by other means carries the marker itself.
Every test marked for a service is also `integration`: `pytest -m "not integration"` runs
the tests that start nothing (README, Quick start).
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    # one embedded PostgreSQL and one embedded broker per session; a database and topic per test
    "tests.support.services",
    # Apache Kafka 4.4 (one node, and a 3-node cluster) for the tests that prove the
    # guarantees on it
    "tests.support.apache_kafka",
    # a real Alertmanager (Debian's prometheus-alertmanager) per test that asks for one
    "tests.support.alertmanager",
]

# a fixture that starts a real service -> the marker of every test that uses it
SERVICE_FIXTURES = {
    "embedded_postgres": "postgres",
    "embedded_broker": "broker",
    "apache_kafka": "apache_kafka",
    "kafka_jars": "apache_kafka",
    "kafka_cluster": "apache_kafka",
    "kafka_brokers": "apache_kafka",
}
SERVICES = ("postgres", "broker", "apache_kafka", "dagster")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, marker in SERVICE_FIXTURES.items():
            if fixture in used:
                item.add_marker(marker)
        if any(item.get_closest_marker(service) for service in SERVICES):
            item.add_marker("integration")
