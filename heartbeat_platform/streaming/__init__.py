"""Kafka side of the platform: topic admin, producer and the batch consumer."""
