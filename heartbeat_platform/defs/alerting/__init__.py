"""Alerting's control room: the episodes table with its checks, episode statistics every
five minutes, and the NO_SIGNAL sweep every minute."""
