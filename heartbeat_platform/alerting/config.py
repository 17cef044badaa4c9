"""What the consumer needs to run episodes and deliver their transitions: one frozen
object the settings build (`Settings.alerting`). Kept apart from `delivery`, so that
reading the settings does not import the database driver."""

from __future__ import annotations

from dataclasses import dataclass, field

from heartbeat_platform.alerting.receivers import ALERTMANAGER_REFRESH_S, Receiver
from heartbeat_platform.alerting.storm import StormPolicy
from heartbeat_platform.domain.episodes import Rules


@dataclass(frozen=True)
class AlertingConfig:
    """What the consumer needs to run episodes and deliver their transitions."""

    rules: Rules = field(default_factory=Rules)
    receivers: tuple[Receiver, ...] = ()  # every transition but escalations
    escalation_receivers: tuple[Receiver, ...] = ()  # empty: the receivers
    escalate_after_s: float = 300.0
    give_up_s: float = 86_400.0
    timeout_s: float = 5.0  # each POST's total deadline: connect, send, answer
    # every firing episode goes to each Alertmanager again this often (its resolve_timeout,
    # 5 min by default, must be longer)
    alertmanager_refresh_s: float = ALERTMANAGER_REFRESH_S
    # a webhook receiver's notifications grouped in a storm (`storm`; Alertmanager groups
    # by itself, PagerDuty takes one event a request)
    storm: StormPolicy = field(default_factory=StormPolicy)

    def __post_init__(self) -> None:
        names: dict[str, Receiver] = {}
        for receiver in (*self.receivers, *self.escalation_receivers):
            if names.setdefault(receiver.name, receiver) != receiver:
                raise ValueError(f"two different receivers are named {receiver.name}")

    @property
    def everyone(self) -> dict[str, Receiver]:
        """Every receiver, escalation receivers too, by name (once each)."""
        return {r.name: r for r in (*self.receivers, *self.escalation_receivers)}

    @property
    def alertmanagers(self) -> tuple[Receiver, ...]:
        """The Alertmanager receivers, once each: re-sent every firing episode."""
        return tuple(r for r in self.everyone.values() if r.type == "alertmanager")
