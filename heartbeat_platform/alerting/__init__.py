"""Notifications of alert episodes: the outbox delivered to webhooks, Alertmanager, PagerDuty."""
