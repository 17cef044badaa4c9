"""What every test gets: the fixtures the test folders share (tests/support, registered as
plugins), and the `integration` marker for the tests of tests/integration."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    # one embedded PostgreSQL and one embedded broker per session; a database and topic per test
    "tests.support.services",
    # Apache Kafka 4.4 (one node, and a 3-node cluster) for the tests that prove the
    # guarantees on it
    "tests.support.apache_kafka",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)
