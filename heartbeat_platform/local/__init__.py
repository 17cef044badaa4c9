"""Embedded PostgreSQL and Kafka-compatible broker for the one-command local platform."""
