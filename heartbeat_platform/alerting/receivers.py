"""Receivers of episode notifications and what each one is sent: pure encoders.

A receiver is a name, a type, a URL and a secret (`Receiver`), the shape a table of
receivers could hold later. Three types speak protocols people already run:

* ``webhook``: the episode's JSON object as the outbox holds it, byte for byte, signed
  with the receiver's secret when it has one (`sign`: HMAC-SHA256 over
  ``f"{timestamp}.{body}"``, headers ``X-Heartbeat-Timestamp`` and
  ``X-Heartbeat-Signature: v1=<hex>``);
* ``alertmanager``: a list of one alert for Alertmanager's ``POST /api/v2/alerts``
  (labels ``alertname=heartbeat_episode``, customer, kind, severity, episode id;
  ``endsAt`` once resolved). Alertmanager forgets an alert not sent again within its
  ``resolve_timeout`` (5 min by default), so the deliverer re-sends every firing episode
  every `ALERTMANAGER_REFRESH_S` (`alertmanager_refresh`);
* ``pagerduty``: an Events API v2 event (``trigger``, ``acknowledge``, ``resolve``) whose
  ``dedup_key`` is the episode's, with the secret as ``routing_key``.

Nothing here does I/O; `delivery` sends the `Request`s. Where a URL is shown (logs,
errors, the database) it is the receiver's name or `redact`'s ``scheme://host/…``:
webhook URLs often carry tokens in their path or query.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args
from urllib.parse import unquote, urlsplit

import orjson

ReceiverType = Literal["webhook", "alertmanager", "pagerduty"]
# The transitions the outbox notifies (sql/009, sql/013's CHECK says the same).
TRANSITIONS = ("firing", "acknowledged", "escalated", "resolved")
RECEIVER_TYPES: tuple[str, ...] = get_args(ReceiverType)
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
ALERTMANAGER_PATH = "/api/v2/alerts"
ALERTMANAGER_REFRESH_S = 60.0  # well inside Alertmanager's default resolve_timeout (5 min)
ALERTNAME = "heartbeat_episode"
SOURCE = "heartbeat_platform"  # PagerDuty's payload.source and client
SIGNATURE_VERSION = "v1"
TIMESTAMP_HEADER = "X-Heartbeat-Timestamp"
SIGNATURE_HEADER = "X-Heartbeat-Signature"
# PagerDuty's severities are critical, error, warning and info; ours map one to one.
PAGERDUTY_SEVERITY: Mapping[str, str] = {"critical": "critical", "warning": "warning"}
PAGERDUTY_ACTION: Mapping[str, str] = {
    "firing": "trigger", "escalated": "trigger", "acknowledged": "acknowledge",
    "resolved": "resolve",
}


@dataclass(frozen=True)
class Receiver:
    """Where notifications go. `name` is what the database and the logs keep (never the
    URL); `secret` signs webhooks and is PagerDuty's routing key (unused by Alertmanager,
    whose URL may carry ``user:password@`` for basic authentication)."""

    name: str
    type: ReceiverType
    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.type not in RECEIVER_TYPES:
            raise ValueError(f"receiver {self.name}: type {self.type!r} is not one of "
                             f"{', '.join(RECEIVER_TYPES)}")
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"receiver name {self.name!r} must be non-empty, without spaces")
        if self.type == "pagerduty" and not self.secret:
            raise ValueError(f"receiver {self.name}: pagerduty needs a routing key (secret)")

    @classmethod
    def of(cls, type: ReceiverType, url: str, secret: str | None = None) -> Receiver:
        """A receiver named after its type and URL (`default_name`)."""
        return cls(default_name(type, url), type, url, secret)

    def __str__(self) -> str:
        return f"{self.name} ({self.type}, {redact(self.url)})"


def default_name(type: str, url: str) -> str:
    """``<type>-<12 hex digits of sha256(type + ' ' + url)>``: stable for a URL wherever it
    stands in a list, and says nothing of the URL. sql/013 computes the same for the URLs
    that older versions stored in alert_outbox.delivered_to."""
    return f"{type}-{hashlib.sha256(f'{type} {url}'.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Request:
    """One POST: where, what, which headers."""

    url: str = field(repr=False)
    body: bytes
    headers: Mapping[str, str]


# -- URLs ---------------------------------------------------------------------------------

def redact(url: str) -> str:
    """``scheme://host[:port]/…``: user, password, path and query dropped (a URL's
    secrets live there)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<an unreadable URL>"
    if not parts.scheme or not host:
        return "<an unreadable URL>"
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}{f':{port}' if port else ''}/…"


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8 and ::1
    except ValueError:
        return False


def check_url(url: str, allow_http: bool = False, setting: str = "receiver URL") -> str:
    """`url` when it may receive notifications, else ValueError in one line: https, or
    http to a loopback address (or anywhere with `allow_http`); nothing else."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError(f"{setting}: {redact(url)} is not a URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"{setting}: {redact(url)} must be an https:// URL with a host")
    if parts.scheme == "http" and not allow_http and not is_loopback(host):
        raise ValueError(
            f"{setting}: {redact(url)} must use https (http only to a loopback address, "
            "unless HEARTBEAT_ALERT_ALLOW_HTTP=true)"
        )
    return url


def basic_auth(url: str) -> dict[str, str]:
    """An Authorization header from the URL's ``user:password@`` (http.client ignores it)."""
    parts = urlsplit(url)
    if parts.username is None:
        return {}
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


# -- signatures ---------------------------------------------------------------------------

def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: ``v1=`` and hex HMAC-SHA256 of ``f"{timestamp}.{body}"``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, now: float,
           tolerance_s: float = 300.0) -> bool:
    """What a receiver checks (README, Alerts, has the same in five lines): the signature,
    and a timestamp within `tolerance_s` of `now` (a replayed old POST fails)."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


# -- encoders -----------------------------------------------------------------------------

def encode(receiver: Receiver, key: str, payload: bytes, now: datetime) -> Request:
    """The POST that tells `receiver` of one transition: `payload` is the outbox's JSON
    object (state included), `key` its Idempotency-Key."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": key,
               **basic_auth(receiver.url)}
    if receiver.type == "webhook":
        if receiver.secret:
            stamp = int(now.timestamp())
            headers[TIMESTAMP_HEADER] = str(stamp)
            headers[SIGNATURE_HEADER] = sign(receiver.secret, stamp, payload)
        return Request(receiver.url, payload, headers)
    episode = orjson.loads(payload)
    if receiver.type == "alertmanager":
        return Request(alertmanager_url(receiver.url),
                       orjson.dumps([alertmanager_alert(episode)]), headers)
    assert receiver.secret is not None  # checked when the receiver was made
    return Request(receiver.url, orjson.dumps(pagerduty_event(episode, receiver.secret)),
                   headers)


def alertmanager_url(base: str) -> str:
    """``<base>/api/v2/alerts`` (a base that already ends so is kept)."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    if not path.endswith(ALERTMANAGER_PATH):
        path += ALERTMANAGER_PATH
    return parts._replace(path=path).geturl()


def alertmanager_refresh(receiver: Receiver, payloads: Sequence[bytes]) -> Request:
    """One POST re-sending these firing episodes (Alertmanager takes a list)."""
    alerts = [alertmanager_alert(orjson.loads(p)) for p in payloads]
    headers = {"Content-Type": "application/json", **basic_auth(receiver.url)}
    return Request(alertmanager_url(receiver.url), orjson.dumps(alerts), headers)


def summary(episode: Mapping[str, Any]) -> str:
    """One line a person reads first (Alertmanager's summary, PagerDuty's title)."""
    who, kind = episode["customer_id"], episode["kind"]
    if kind == "NO_SIGNAL":
        return f"{who}: NO_SIGNAL, no reading since {episode['last_reading_at']}"
    readings = episode["readings"]
    return (f"{who}: {kind}, worst {episode['worst_heart_rate']} bpm over {readings} "
            f"reading{'s' if readings != 1 else ''}")


def alertmanager_alert(episode: Mapping[str, Any]) -> dict[str, Any]:
    """A postable alert of Alertmanager's v2 API. Labels identify it (one alert per
    episode); a resolved episode carries `endsAt` (its resolution), a firing one none,
    so Alertmanager keeps it for its resolve_timeout after each POST."""
    annotations = {"summary": summary(episode)}
    if episode.get("acknowledged_by"):
        annotations["acknowledged_by"] = episode["acknowledged_by"]
    alert: dict[str, Any] = {
        "labels": {
            "alertname": ALERTNAME,
            "customer_id": episode["customer_id"],
            "kind": episode["kind"],
            "severity": episode["severity"],
            "episode_id": str(episode["episode_id"]),
        },
        "annotations": annotations,
        "startsAt": episode["opened_at"],
    }
    if episode["state"] == "resolved":
        alert["endsAt"] = episode["resolved_at"]
    return alert


def pagerduty_dedup_key(episode: Mapping[str, Any]) -> str:
    return f"heartbeat-episode-{episode['episode_id']}"


def pagerduty_event(episode: Mapping[str, Any], routing_key: str) -> dict[str, Any]:
    """An Events API v2 event. Acknowledge and resolve need only the key (PagerDuty
    ignores their payload); a trigger (firing, or escalated: the same alert again)
    carries the payload, with the whole episode in custom_details."""
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": PAGERDUTY_ACTION[episode["state"]],
        "dedup_key": pagerduty_dedup_key(episode),
    }
    if event["event_action"] == "trigger":
        event["client"] = SOURCE
        event["payload"] = {
            "summary": summary(episode)[:1024],  # PagerDuty's limit
            "source": SOURCE,
            "severity": PAGERDUTY_SEVERITY.get(episode["severity"], "error"),
            "timestamp": episode["opened_at"],
            "component": episode["customer_id"],
            "group": "heartbeat",
            "class": episode["kind"],
            "custom_details": dict(episode),
        }
    return event
