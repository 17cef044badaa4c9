"""Fixtures and helpers the test folders share, imported by package path: the service
fixtures (services, apache_kafka) are plugins that tests/conftest.py registers; the helpers
(stored, pipeline, alerting_rows, grafana_rules) are imported as `tests.support.<module>`."""
