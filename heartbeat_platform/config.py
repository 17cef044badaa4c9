"""One settings object for the CLI, Dagster and tests, read from the environment and `.env`.

Every knob has a default that works on a laptop: with no `DATABASE_URL` and no
`KAFKA_BOOTSTRAP_SERVERS` the platform starts embedded services under `HEARTBEAT_STATE_DIR`.
A knob that sets a field of an object the settings build (`RetentionPolicy`, `Rules`,
`ConsumerConfig`, `AlertingConfig`, the generator) takes that field's default, written
there once: code that builds the object without settings gets the same default.
A real Kafka's TLS/SASL settings come from `KAFKA_CLIENT_PROPERTIES` and a few KAFKA_*
variables, checked when the settings load and handed to every Kafka client through
`Settings.kafka_client_config`.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from heartbeat_platform.alerting.config import AlertingConfig
from heartbeat_platform.alerting.receivers import PAGERDUTY_URL, Receiver, check_url
from heartbeat_platform.alerting.storm import StormPolicy
from heartbeat_platform.domain.episodes import NO_SIGNAL_AFTER, EpisodeKind, Rules
from heartbeat_platform.domain.generator import (
    DEFAULT_ANOMALY_RATE,
    DEFAULT_CUSTOMER_COUNT,
    DEFAULT_FAULT_RATE,
    MAX_CUSTOMER_COUNT,
)
from heartbeat_platform.domain.retention import ColdTierPolicy, RetentionPolicy
from heartbeat_platform.streaming.consumer_config import ConsumerConfig
from heartbeat_platform.streaming.kafka_config import client_config, needs_security


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass `cls`'s field `name`, the one place it is written."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    if found.default is dataclasses.MISSING:
        raise TypeError(f"{cls.__name__}.{name} has no default")
    return found.default


class Settings(BaseSettings):
    # hide_input_in_errors: a refused setting's error never repeats the values given (a
    # receiver's URL, a password); our own messages say what is wrong.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True,
        hide_input_in_errors=True,
    )

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user:pass@host:port/db); unset = embedded",
    )
    kafka_bootstrap_servers: str | None = Field(
        default=None, description="Kafka bootstrap servers (host:port,...); unset = embedded"
    )
    kafka_topic: str = "heartbeat-events"
    kafka_group_id: str = "heartbeat-consumer"
    kafka_partitions: int = Field(default=3, ge=1)
    # How the consumer group assigns partitions: the classic protocol with this assignor
    # (cooperative-sticky moves only the partitions that change owner; range is eager), or
    # KIP-848's "consumer" protocol (Kafka 4.0+, the broker assigns incrementally).
    kafka_group_protocol: Literal["classic", "consumer"] = default_of(
        ConsumerConfig, "group_protocol"
    )
    kafka_assignment_strategy: Literal["cooperative-sticky", "range", "roundrobin"] = (
        default_of(ConsumerConfig, "assignment_strategy")
    )
    kafka_retention_ms: int = Field(default=24 * 3600 * 1000, ge=1)
    # Copies of each partition when `init-db` creates the topic. Unset: min(3, brokers in
    # the cluster); -1: the broker's default.replication.factor. And how many of them an
    # acks=all write needs: unset means 2 when there are 3 or more copies (one broker may
    # fail without stopping producers or losing a write), else the broker's default.
    heartbeat_topic_replication_factor: int | None = Field(
        default=None, ge=-1, description="copies of each partition (unset: min(3, brokers))"
    )
    heartbeat_topic_min_insync_replicas: int | None = Field(
        default=None, ge=1,
        description="copies an acks=all write needs (unset: 2 with 3+ copies, else broker's)",
    )
    heartbeat_state_dir: Path = Path(".heartbeat")
    # Which broker the platform starts when KAFKA_BOOTSTRAP_SERVERS is unset: Tansu (in
    # memory, quick to start) or one Apache Kafka node with its log on disk (README, "Which
    # local broker"); `up --broker`, `demo --broker` set it for one run.
    heartbeat_local_broker: Literal["tansu", "kafka"] = Field(
        default="tansu", description="local broker to start: tansu or kafka"
    )
    heartbeat_kafka_home: Path | None = Field(
        default=None, description="an unpacked Apache Kafka release (else jars from Maven)"
    )
    # The embedded broker keeps every message in memory (no retention): at this much memory
    # (its RSS, ~51 bytes a reading plus ~15 MB) `up` rotates its log once every reading is
    # stored. 256 MB is 8-9 minutes at 10,000 readings/s (7 rotations in the README's
    # hour-long soak), about a day at the demo's 50 readings/s.
    heartbeat_broker_max_log_mb: int = Field(
        default=256, ge=1, description="embedded broker memory that triggers a log rotation"
    )
    heartbeat_broker_rotation_max_lag: int = Field(
        default=100_000, ge=0,
        description="unstored readings above which a rotation is refused (tried again later)",
    )
    heartbeat_broker_check_interval_s: float = Field(
        default=5.0, gt=0, description="how often `up` checks the embedded broker's memory"
    )
    # A real cluster's security: a Kafka client.properties file and/or the common keys as
    # variables (which win over the file); see `kafka_client_config`.
    kafka_client_properties: Path | None = Field(
        default=None, description="Kafka client.properties file (TLS, SASL) for every client"
    )
    kafka_security_protocol: str | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None

    heartbeat_customer_count: int = Field(
        default=DEFAULT_CUSTOMER_COUNT, ge=1, le=MAX_CUSTOMER_COUNT
    )
    heartbeat_anomaly_rate: float = Field(default=DEFAULT_ANOMALY_RATE, ge=0.0, le=1.0)
    heartbeat_fault_rate: float = Field(default=DEFAULT_FAULT_RATE, ge=0.0, le=1.0)

    heartbeat_consume_batch_size: int = Field(
        default=default_of(ConsumerConfig, "batch_size"), ge=1, le=1_000_000
    )
    heartbeat_max_message_bytes: int = Field(
        default=default_of(ConsumerConfig, "max_message_bytes"), ge=1_024, le=64 * 1_048_576,
        description="larger Kafka messages become dead letters keeping their first 1 KiB",
    )
    heartbeat_stats_every: int = Field(default=default_of(ConsumerConfig, "stats_every"), ge=1)
    # Prometheus /metrics of `consume` and `produce` (each its own port; unset = off)
    heartbeat_metrics_port: int | None = Field(default=None, ge=0, le=65_535)
    heartbeat_metrics_host: str = "127.0.0.1"

    heartbeat_raw_retention_days: int = Field(
        default=default_of(RetentionPolicy, "raw_retention_days"), ge=1, le=3650,
        description="days raw readings are kept (day partitions)",
    )
    heartbeat_max_clock_skew_s: float = Field(
        default=default_of(RetentionPolicy, "max_clock_skew_s"), ge=0,
        description="how far in the future a reading's timestamp may be",
    )
    heartbeat_partitions_ahead_days: int = Field(
        default=default_of(RetentionPolicy, "partitions_ahead_days"), ge=1, le=366,
        description="day partitions created ahead of today",
    )
    heartbeat_partition_check_s: float = Field(
        default=default_of(ConsumerConfig, "partition_check_every_s"), gt=0,
        description="how often a consumer ensures those day partitions",
    )
    heartbeat_rollup_retention_days: int = Field(
        default=400, ge=1, description="days the minute, hour and day rollups are kept"
    )
    heartbeat_hot_days: int = Field(
        default=default_of(ColdTierPolicy, "hot_days"), ge=0, le=3650,
        description="days a UTC day stays hot (row tables) after it ends before compaction "
        "packs it into the cold tier",
    )
    heartbeat_cold_retention_days: int = Field(
        default=default_of(ColdTierPolicy, "cold_retention_days"), ge=1, le=36500,
        description="days the cold tier keeps every reading (day partitions dropped whole)",
    )

    # Alerting (README, "Alerts: episodes and notifications"). URLs are secrets too: a
    # webhook's path or query often carries its token.
    heartbeat_alerting: bool = Field(
        default=True,
        description="false (or off): the consumer keeps no episodes and notifies nobody; "
        "the banner and alert_<type> row per anomalous reading stay",
    )
    heartbeat_alert_webhook_url: SecretStr | None = Field(
        default=None, description="comma-separated URLs that receive every episode transition"
    )
    heartbeat_alert_escalation_url: SecretStr | None = Field(
        default=None, description="comma-separated URLs for escalations; unset: the receivers"
    )
    heartbeat_alert_webhook_secret: SecretStr | None = Field(
        default=None, description="signs every webhook POST (HMAC-SHA256 header); unset: unsigned"
    )
    heartbeat_alertmanager_url: SecretStr | None = Field(
        default=None,
        description="comma-separated Alertmanager base URLs: episodes go to /api/v2/alerts",
    )
    heartbeat_alertmanager_refresh_s: float = Field(
        default=default_of(AlertingConfig, "alertmanager_refresh_s"), gt=0,
        description="how often firing episodes go to Alertmanager again (< its resolve_timeout)",
    )
    heartbeat_pagerduty_routing_key: SecretStr | None = Field(
        default=None, description="a PagerDuty Events API v2 integration key: episodes go there"
    )
    heartbeat_pagerduty_url: str = Field(
        default=PAGERDUTY_URL, description="PagerDuty's Events API v2 enqueue URL"
    )
    heartbeat_alert_allow_http: bool = Field(
        default=False, description="allow http:// receivers beyond loopback (unencrypted)"
    )
    heartbeat_alert_min_readings: str = Field(
        default="",
        description="readings of a kind in a row before its episode fires, e.g. "
        "'SENSOR_FAULT=3,BRADYCARDIA=2' or '2' for every kind; kinds not named: 1",
    )
    # The alarm-condition delay (README, Alerts: "Calm by default"); both it and the
    # readings above must be reached before an episode fires.
    heartbeat_alert_delay_s: str = Field(
        default="",
        description="seconds a kind must be sustained (by reading times) before its "
        "episode fires, e.g. 'TACHYCARDIA=10,SENSOR_FAULT=30' or '0' for every kind; "
        "kinds not named: domain.episodes.DEFAULT_DELAY",
    )
    # Storm grouping of a webhook receiver's notifications (alerting/storm.py)
    heartbeat_alert_group_over: int = Field(
        default=default_of(StormPolicy, "group_over"), ge=0,
        description="more notifications than this for one receiver within the window: "
        "grouped; 0: never",
    )
    heartbeat_alert_group_window_s: float = Field(
        default=default_of(StormPolicy, "window_s"), gt=0,
        description="the window (seconds) that counts notifications for storm grouping",
    )
    heartbeat_alert_resolve_after_normal: int = Field(
        default=default_of(Rules, "resolve_after_normal"), ge=1,
        description="NORMAL readings in a row that resolve an episode",
    )
    heartbeat_escalate_after_s: float = Field(
        default=default_of(AlertingConfig, "escalate_after_s"), gt=0,
        description="firing unacknowledged this long: escalated once",
    )
    heartbeat_no_signal_after_s: float = Field(
        default=NO_SIGNAL_AFTER.total_seconds(), gt=0,
        description="no reading this long (seen in 24 h): NO_SIGNAL",
    )
    heartbeat_alert_give_up_s: float = Field(
        default=default_of(AlertingConfig, "give_up_s"), gt=0,
        description="an undelivered notification is given up after this",
    )
    heartbeat_alert_retention_days: int = Field(
        default=30, ge=1, description="days resolved episodes (and their notifications) are kept"
    )
    # The outbox is a delivery queue, its biggest table at the design rate (sizes measured
    # in the README, Alerts: Retention). Past this, a resolved episode's delivered (or
    # given-up) notifications go; the episode row keeps what they said.
    heartbeat_alert_notification_retention_hours: float = Field(
        default=48.0, ge=1.0,
        description="hours delivered notifications of resolved episodes are kept",
    )

    @field_validator(
        "database_url", "kafka_bootstrap_servers", "kafka_client_properties",
        "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
        "kafka_sasl_password", "kafka_ssl_ca_location",
        "heartbeat_topic_replication_factor", "heartbeat_topic_min_insync_replicas",
        "heartbeat_alert_webhook_url", "heartbeat_alert_escalation_url",
        "heartbeat_alert_webhook_secret", "heartbeat_alertmanager_url",
        "heartbeat_pagerduty_routing_key",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """`DATABASE_URL=` in a .env file means "use the embedded service", not an empty URL."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("heartbeat_topic_replication_factor")
    @classmethod
    def _replication_factor(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("a topic needs at least 1 copy (or -1: the broker's default)")
        return value

    @field_validator("heartbeat_alert_min_readings")
    @classmethod
    def _min_readings(cls, value: str) -> str:
        min_readings_by_kind(value)  # raises ValueError naming what is wrong
        return value

    @field_validator("heartbeat_alert_delay_s")
    @classmethod
    def _delay(cls, value: str) -> str:
        delay_by_kind(value)  # raises ValueError naming what is wrong
        return value

    @property
    def alert_rules(self) -> Rules:
        """The episode rules these settings give (`domain.episodes`)."""
        return Rules(
            min_readings=min_readings_by_kind(self.heartbeat_alert_min_readings),
            resolve_after_normal=self.heartbeat_alert_resolve_after_normal,
            delay=delay_by_kind(self.heartbeat_alert_delay_s),
        )

    @property
    def alert_receivers(self) -> tuple[Receiver, ...]:
        """Who hears of every transition but escalations: each webhook URL (signed with
        HEARTBEAT_ALERT_WEBHOOK_SECRET when set), each Alertmanager, PagerDuty."""
        secret = _secret(self.heartbeat_alert_webhook_secret)
        found = [Receiver.of("webhook", url, secret)
                 for url in _url_list(_secret(self.heartbeat_alert_webhook_url))]
        # several: each instance of an Alertmanager HA cluster (clients send to all)
        found += [Receiver.of("alertmanager", url)
                  for url in _url_list(_secret(self.heartbeat_alertmanager_url))]
        if self.heartbeat_pagerduty_routing_key is not None:
            found.append(Receiver.of("pagerduty", self.heartbeat_pagerduty_url,
                                     _secret(self.heartbeat_pagerduty_routing_key)))
        return tuple(found)

    @property
    def storm_policy(self) -> StormPolicy:
        """Storm grouping as these settings give it (`alerting.storm`)."""
        return StormPolicy(self.heartbeat_alert_group_over, self.heartbeat_alert_group_window_s)

    @property
    def alert_escalation_receivers(self) -> tuple[Receiver, ...]:
        """HEARTBEAT_ALERT_ESCALATION_URL's webhooks; empty: escalations go to the others."""
        secret = _secret(self.heartbeat_alert_webhook_secret)
        return tuple(Receiver.of("webhook", url, secret)
                     for url in _url_list(_secret(self.heartbeat_alert_escalation_url)))

    @model_validator(mode="after")
    def _receiver_urls_allowed(self) -> Settings:
        """https, or http to loopback (or anywhere with HEARTBEAT_ALERT_ALLOW_HTTP): a bad
        URL is refused when the settings load, in one line that does not show it whole."""
        allow = self.heartbeat_alert_allow_http
        checked = [
            ("HEARTBEAT_ALERT_WEBHOOK_URL", _url_list(_secret(self.heartbeat_alert_webhook_url))),
            ("HEARTBEAT_ALERT_ESCALATION_URL",
             _url_list(_secret(self.heartbeat_alert_escalation_url))),
            ("HEARTBEAT_ALERTMANAGER_URL", _url_list(_secret(self.heartbeat_alertmanager_url))),
        ]
        if self.heartbeat_pagerduty_routing_key is not None:
            checked.append(("HEARTBEAT_PAGERDUTY_URL", (self.heartbeat_pagerduty_url,)))
        for setting, urls in checked:
            for url in urls:
                check_url(url, allow, setting)
        return self

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "DATABASE_URL must start with postgresql:// (for example "
                "postgresql://heartbeat:secret@localhost:5433/heartbeat)"
            )
        return value

    @model_validator(mode="after")
    def _rollups_outlive_raw_readings(self) -> Settings:
        """Retention drops a raw day only once its daily rollup holds it; a rollup that
        left before its readings would keep those days (and the disk) for ever."""
        if self.heartbeat_rollup_retention_days <= self.heartbeat_raw_retention_days + 1:
            raise ValueError(
                "HEARTBEAT_ROLLUP_RETENTION_DAYS must be longer than "
                "HEARTBEAT_RAW_RETENTION_DAYS + 1 (rollups outlive the readings they summarise)"
            )
        return self

    @model_validator(mode="after")
    def _absolute_state_dir(self) -> Settings:
        object.__setattr__(self, "heartbeat_state_dir", self.heartbeat_state_dir.resolve())
        if self.kafka_client_properties is not None:  # the same file for Dagster's processes
            object.__setattr__(
                self, "kafka_client_properties", self.kafka_client_properties.resolve()
            )
        return self

    @model_validator(mode="after")
    def _kafka_client_settings_work(self) -> Settings:
        """Check the client settings when a command starts (a bad file, key or value says
        so now, not as a connection that never comes up); the file's bootstrap.servers
        applies when KAFKA_BOOTSTRAP_SERVERS is unset."""
        config, bootstrap = client_config(
            self.kafka_client_properties, self._kafka_variables(), self.kafka_group_protocol
        )
        if self.kafka_bootstrap_servers is None and bootstrap:
            object.__setattr__(self, "kafka_bootstrap_servers", bootstrap)
        if self.kafka_bootstrap_servers is None and needs_security(config):
            raise ValueError(
                f"security.protocol={config['security.protocol']} needs a Kafka cluster: set "
                "KAFKA_BOOTSTRAP_SERVERS (the embedded broker speaks PLAINTEXT only)"
            )
        return self

    def _kafka_variables(self) -> dict[str, str | None]:
        password = self.kafka_sasl_password
        return {
            "security.protocol": self.kafka_security_protocol,
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "sasl.password": password.get_secret_value() if password else None,
            "ssl.ca.location": self.kafka_ssl_ca_location,
        }

    @property
    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings every Kafka client of the platform takes on top of its own
        (producer, consumer, admin, lag probe): KAFKA_CLIENT_PROPERTIES, then the KAFKA_*
        security variables over it. Empty for the embedded broker."""
        return client_config(
            self.kafka_client_properties, self._kafka_variables(), self.kafka_group_protocol
        )[0]

    @property
    def cold_tier(self) -> ColdTierPolicy:
        return ColdTierPolicy(self.heartbeat_hot_days, self.heartbeat_cold_retention_days)

    @property
    def retention(self) -> RetentionPolicy:
        return RetentionPolicy(
            self.heartbeat_raw_retention_days,
            self.heartbeat_max_clock_skew_s,
            self.heartbeat_partitions_ahead_days,
        )

    @property
    def embedded(self) -> bool:
        """True when at least one service must be started locally."""
        return self.database_url is None or self.kafka_bootstrap_servers is None


def min_readings_by_kind(text: str) -> dict[EpisodeKind, int]:
    """'KIND=N,...' -> {kind: N} for the kinds named (`Rules` gives the others theirs);
    a bare 'N' is every kind's (a KIND=N item beside it wins for its kind)."""
    found: dict[EpisodeKind, int] = {}
    for kind, value, item in _by_kind(text, "HEARTBEAT_ALERT_MIN_READINGS", "N"):
        try:
            readings = int(value)
        except ValueError:
            raise ValueError(
                f"HEARTBEAT_ALERT_MIN_READINGS: {item!r} needs a whole number N"
            ) from None
        if readings < 1:
            raise ValueError(f"HEARTBEAT_ALERT_MIN_READINGS: {item!r} needs N >= 1")
        found.update(dict.fromkeys(kind, readings))
    return found


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def delay_by_kind(text: str) -> dict[EpisodeKind, timedelta]:
    """'KIND=S,...' (seconds) -> {kind: delay} for the kinds named (`Rules` gives the
    others DEFAULT_DELAY's); a bare 'S' is every kind's (a KIND=S item beside it wins)."""
    found: dict[EpisodeKind, timedelta] = {}
    for kind, value, item in _by_kind(text, "HEARTBEAT_ALERT_DELAY_S", "S"):
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"HEARTBEAT_ALERT_DELAY_S: {item!r} needs a number S") from None
        if not 0 <= seconds <= 86_400:  # also refuses nan and inf
            raise ValueError(f"HEARTBEAT_ALERT_DELAY_S: {item!r} needs 0 <= S <= 86400")
        found.update(dict.fromkeys(kind, timedelta(seconds=seconds)))
    return found


def _by_kind(
    text: str, variable: str, letter: str
) -> list[tuple[tuple[EpisodeKind, ...], str, str]]:
    """The items of a 'KIND=value,...' setting: (kinds it sets, value, item as written),
    a bare value (every kind) first so that the named kinds override it."""
    items: list[tuple[tuple[EpisodeKind, ...], str, str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = item.partition("=")
        if not equals:
            items.insert(0, (tuple(EpisodeKind), item, item))
            continue
        try:
            kind = EpisodeKind(name.strip().upper())
        except ValueError:
            raise ValueError(
                f"{variable}: {item!r} is not KIND={letter} with KIND one of "
                f"{', '.join(EpisodeKind)}"
            ) from None
        items.append(((kind,), value.strip(), item))
    return items


def _url_list(text: str | None) -> tuple[str, ...]:
    return tuple(url.strip() for url in (text or "").split(",") if url.strip())


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/.env, with explicit overrides (used by tests and CLI flags)."""
    return Settings(**overrides)
