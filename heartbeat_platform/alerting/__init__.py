"""Notifications of alert episodes: delivery of the outbox to webhooks."""
