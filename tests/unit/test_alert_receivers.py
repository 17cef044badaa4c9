"""What each receiver type is sent, signatures, redaction and the URL policy: pure."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import orjson
import pytest

from heartbeat_platform.alerting.receivers import (
    PAGERDUTY_ACTION,
    TRANSITIONS,
    Receiver,
    alertmanager_alert,
    alertmanager_refresh,
    alertmanager_url,
    check_url,
    default_name,
    encode,
    pagerduty_event,
    redact,
    sign,
    verify,
)
from tests.support.webhook_check import readme_verifies

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[1] / "support" / "pagerduty_events_v2.schema.json")
    .read_text()
)
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def episode(state: str = "firing", **changes: object) -> dict:
    """An outbox payload as storage.episodes builds it (jsonb's text of timestamptz)."""
    values = {
        "episode_id": 41, "customer_id": "CUST_00042", "kind": "TACHYCARDIA",
        "state": state, "severity": "critical", "opened_at": "2026-12-07T14:59:32.1+00:00",
        "resolved_at": "2026-12-07T15:04:00+00:00" if state == "resolved" else None,
        "first_heart_rate": 190, "worst_heart_rate": 204, "readings": 2,
        "first_reading_at": "2026-12-07T14:59:32.1+00:00",
        "last_reading_at": "2026-12-07T14:59:33.1+00:00", "acknowledged_at": None,
        "acknowledged_by": None, "resolved_by": None,
    }
    values.update(changes)
    return values


def body(state: str = "firing", **changes: object) -> bytes:
    return orjson.dumps(episode(state, **changes))


# -- URLs ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.example.com/services/T0/B0/XXXXSECRET?token=abc", "https://hooks.example.com/…"),
    ("https://user:pa55@am.example.com:9093/", "https://am.example.com:9093/…"),
    ("http://[::1]:8080/hook#frag", "http://[::1]:8080/…"),
    ("not a url", "<an unreadable URL>"),
])
def test_redact_keeps_scheme_host_and_port_only(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/x", "http://127.0.0.1:9/x", "http://127.5.6.7/x",
    "http://localhost:8080/x", "http://[::1]:9093",
])
def test_https_and_loopback_http_are_allowed(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(("url", "says"), [
    ("http://hooks.example.com/T0/secret-token", "must use https"),
    ("http://10.0.0.8/hook", "must use https"),
    ("http://128.0.0.1/hook", "must use https"),
    ("http://localhost.example.com/hook", "must use https"),
    ("ftp://hooks.example.com/secret-token", "must be an https:// URL"),
    ("file:///etc/passwd", "must be an https:// URL"),
    ("https:///secret-token", "must be an https:// URL"),
    ("https://hooks.example.com:99999/secret-token", "is not a URL"),
])
def test_other_urls_are_refused_in_one_line_that_hides_the_path(url: str, says: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_url(url, setting="HEARTBEAT_ALERT_WEBHOOK_URL")
    message = str(refused.value)
    assert says in message and message.startswith("HEARTBEAT_ALERT_WEBHOOK_URL: ")
    assert "\n" not in message and "secret-token" not in message and "passwd" not in message


def test_allow_http_lets_plain_http_through_but_no_other_scheme() -> None:
    assert check_url("http://hooks.example.com/x", allow_http=True)
    with pytest.raises(ValueError, match="https:// URL"):
        check_url("ftp://hooks.example.com/x", allow_http=True)


def test_a_receiver_shows_its_name_never_its_url_or_secret() -> None:
    receiver = Receiver.of("webhook", "https://hooks.example.com/T0/tok3n", "s3cret")
    for text in (repr(receiver), str(receiver)):
        assert "tok3n" not in text and "s3cret" not in text
    assert receiver.name == default_name("webhook", "https://hooks.example.com/T0/tok3n")
    assert re.fullmatch(r"webhook-[0-9a-f]{12}", receiver.name)
    assert Receiver.of("webhook", "https://hooks.example.com/T0/other").name != receiver.name


def test_a_pagerduty_receiver_needs_a_routing_key_and_names_have_no_space() -> None:
    with pytest.raises(ValueError, match="routing key"):
        Receiver("pd", "pagerduty", "https://events.pagerduty.com/v2/enqueue")
    with pytest.raises(ValueError, match="without spaces"):
        Receiver("my hook", "webhook", "https://a.example.com/")
    with pytest.raises(ValueError, match="type"):
        Receiver("x", "slack", "https://a.example.com/")  # type: ignore[arg-type]


# -- signed webhooks ----------------------------------------------------------------------

def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"k", b"1765119600.{}", hashlib.sha256).hexdigest()
    assert sign("k", 1765119600, b"{}") == f"v1={expected}"
    assert sign("k", 1765119600, b"{}") == (
        "v1=f9112a0b06e9fcd0e12d590416e13c129b9121a7a431a2567208ff61eeb6f36a"  # openssl dgst -hmac
    )


def test_a_webhook_gets_the_payload_as_is_signed_when_it_has_a_secret() -> None:
    payload = body()
    signed = encode(Receiver.of("webhook", "https://h.example.com/x", "s3cret"), "41:firing",
                    payload, NOW)
    assert signed.body == payload and signed.url == "https://h.example.com/x"
    stamp = signed.headers["X-Heartbeat-Timestamp"]
    assert stamp == str(int(NOW.timestamp()))
    assert signed.headers["X-Heartbeat-Signature"] == sign("s3cret", int(stamp), payload)
    assert signed.headers["Idempotency-Key"] == "41:firing"
    plain = encode(Receiver.of("webhook", "https://h.example.com/x"), "41:firing", payload, NOW)
    assert "X-Heartbeat-Signature" not in plain.headers and plain.body == payload


def test_verify_refuses_another_body_secret_or_an_old_timestamp() -> None:
    stamp, payload = int(NOW.timestamp()), body()
    signature = sign("s3cret", stamp, payload)
    now = NOW.timestamp()
    assert verify("s3cret", str(stamp), payload, signature, now)
    assert not verify("s3cret", str(stamp), payload + b" ", signature, now)
    assert not verify("other", str(stamp), payload, signature, now)
    assert not verify("s3cret", str(stamp), payload, signature, now + 301)
    assert not verify("s3cret", "-1", payload, signature, now)


def test_the_readme_snippet_verifies_a_signed_request_and_refuses_a_changed_one() -> None:
    request = encode(Receiver.of("webhook", "https://h.example.com/x", "s3cret"), "41:firing",
                     body(), datetime.now(UTC))
    assert readme_verifies("s3cret", request.headers, request.body)
    assert not readme_verifies("s3cret", request.headers, request.body.replace(b"204", b"205"))
    assert not readme_verifies("other", request.headers, request.body)
    stale = {**request.headers, "X-Heartbeat-Timestamp": "1000"}
    assert not readme_verifies("s3cret", stale, request.body)


def test_basic_auth_comes_from_the_urls_user_part() -> None:
    request = encode(Receiver.of("alertmanager", "https://am:p%40ss@am.example.com/"),
                     "41:firing", body(), NOW)
    assert request.headers["Authorization"] == "Basic YW06cEBzcw=="  # am:p@ss
    assert request.url == "https://am:p%40ss@am.example.com/api/v2/alerts"


# -- Alertmanager -------------------------------------------------------------------------

@pytest.mark.parametrize(("base", "url"), [
    ("http://127.0.0.1:9093", "http://127.0.0.1:9093/api/v2/alerts"),
    ("http://127.0.0.1:9093/", "http://127.0.0.1:9093/api/v2/alerts"),
    ("https://am.example.com/prefix", "https://am.example.com/prefix/api/v2/alerts"),
    ("https://am.example.com/api/v2/alerts", "https://am.example.com/api/v2/alerts"),
])
def test_the_alertmanager_url_is_the_base_plus_api_v2_alerts(base: str, url: str) -> None:
    assert alertmanager_url(base) == url


def test_a_firing_episode_is_an_alertmanager_alert_without_end() -> None:
    request = encode(Receiver.of("alertmanager", "http://127.0.0.1:9093"), "41:firing",
                     body(), NOW)
    (alert,) = orjson.loads(request.body)
    assert alert == {
        "labels": {"alertname": "heartbeat_episode", "customer_id": "CUST_00042",
                   "kind": "TACHYCARDIA", "severity": "critical", "episode_id": "41"},
        "annotations": {"summary": "CUST_00042: TACHYCARDIA, worst 204 bpm over 2 readings"},
        "startsAt": "2026-12-07T14:59:32.1+00:00",
    }
    assert RFC3339.match(alert["startsAt"])


def test_a_resolved_episode_ends_its_alert_and_keeps_its_labels() -> None:
    firing = alertmanager_alert(episode("firing"))
    resolved = alertmanager_alert(episode("resolved"))
    assert resolved["labels"] == firing["labels"]  # the same alert for Alertmanager
    assert resolved["endsAt"] == "2026-12-07T15:04:00+00:00"
    acknowledged = alertmanager_alert(episode("acknowledged", acknowledged_by="nurse"))
    assert "endsAt" not in acknowledged
    assert acknowledged["annotations"]["acknowledged_by"] == "nurse"


def test_a_refresh_sends_every_firing_episode_in_one_list() -> None:
    payloads = [body(episode_id=n, customer_id=f"CUST_{n:05d}") for n in (1, 2, 3)]
    request = alertmanager_refresh(Receiver.of("alertmanager", "http://127.0.0.1:9093"),
                                   payloads)
    alerts = orjson.loads(request.body)
    assert [a["labels"]["episode_id"] for a in alerts] == ["1", "2", "3"]
    assert all("endsAt" not in a for a in alerts)


def test_no_signal_says_since_when() -> None:
    alert = alertmanager_alert(episode(kind="NO_SIGNAL", severity="warning", readings=0))
    assert alert["annotations"]["summary"] == (
        "CUST_00042: NO_SIGNAL, no reading since 2026-12-07T14:59:33.1+00:00")


# -- PagerDuty ----------------------------------------------------------------------------

def test_every_transition_has_a_pagerduty_action() -> None:
    assert set(PAGERDUTY_ACTION) == set(TRANSITIONS)


@pytest.mark.parametrize("state", TRANSITIONS)
@pytest.mark.parametrize("kind", ["TACHYCARDIA", "SENSOR_FAULT", "NO_SIGNAL"])
def test_each_pagerduty_event_matches_the_published_schema(state: str, kind: str) -> None:
    severity = "critical" if kind == "TACHYCARDIA" else "warning"
    receiver = Receiver.of("pagerduty", "https://events.pagerduty.com/v2/enqueue", "R0UTING")
    request = encode(receiver, f"41:{state}", body(state, kind=kind, severity=severity), NOW)
    event = orjson.loads(request.body)
    jsonschema.Draft202012Validator(SCHEMA).validate(event)
    assert event["routing_key"] == "R0UTING"
    assert event["event_action"] == PAGERDUTY_ACTION[state]
    assert event["dedup_key"] == "heartbeat-episode-41"  # the same for every transition
    assert len(event["dedup_key"]) <= 255  # PagerDuty's documented limit
    if event["event_action"] == "trigger":
        payload = event["payload"]
        assert payload["severity"] == severity and payload["source"] == "heartbeat_platform"
        assert RFC3339.match(payload["timestamp"]) and len(payload["summary"]) <= 1024
        assert payload["custom_details"]["customer_id"] == "CUST_00042"
    else:
        assert "payload" not in event  # PagerDuty ignores it on acknowledge and resolve


def test_the_schema_test_can_fail() -> None:
    """What the schema refuses: an unknown action, a severity PagerDuty lacks, no key."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    good = pagerduty_event(episode(), "R0UTING")
    for bad in (
        {**good, "event_action": "escalate"},
        {**good, "payload": {**good["payload"], "severity": "high"}},
        {k: v for k, v in good.items() if k != "routing_key"},
        {**good, "payload": {k: v for k, v in good["payload"].items() if k != "source"}},
    ):
        assert not validator.is_valid(bad), bad
