"""Receivers from settings: which variables make which receivers, and what is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from heartbeat_platform import config, readiness
from heartbeat_platform.alerting.receivers import PAGERDUTY_URL, Receiver
from heartbeat_platform.cli import app

HOOK = "https://hooks.example.com/services/T0/B0/t0ken"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in config.Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def settings(**values: object) -> config.Settings:
    return config.load_settings(_env_file=None, **values)


def test_each_variable_makes_its_receiver() -> None:
    made = settings(
        heartbeat_alert_webhook_url=f"{HOOK}, http://127.0.0.1:8080/b",
        heartbeat_alert_webhook_secret="s3cret",
        heartbeat_alertmanager_url="http://127.0.0.1:9093",
        heartbeat_pagerduty_routing_key="R0UTING",
        heartbeat_alert_escalation_url="https://oncall.example.com/esc",
    )
    assert made.alert_receivers == (
        Receiver.of("webhook", HOOK, "s3cret"),
        Receiver.of("webhook", "http://127.0.0.1:8080/b", "s3cret"),
        Receiver.of("alertmanager", "http://127.0.0.1:9093"),
        Receiver.of("pagerduty", PAGERDUTY_URL, "R0UTING"),
    )
    assert made.alert_escalation_receivers == (
        Receiver.of("webhook", "https://oncall.example.com/esc", "s3cret"),
    )
    built = readiness.alerting_config(made)
    assert built.receivers == made.alert_receivers
    assert [r.name for r in built.alertmanagers] == [made.alert_receivers[2].name]


def test_each_alertmanager_of_a_cluster_is_a_receiver() -> None:
    made = settings(heartbeat_alertmanager_url="https://am1.example.com,https://am2.example.com")
    assert [r.url for r in made.alert_receivers] == [
        "https://am1.example.com", "https://am2.example.com"]
    assert {r.type for r in made.alert_receivers} == {"alertmanager"}


def test_no_variable_no_receiver_and_a_blank_one_is_unset() -> None:
    assert settings().alert_receivers == ()
    assert settings(heartbeat_alert_webhook_url="", heartbeat_alertmanager_url=" ",
                    heartbeat_pagerduty_routing_key="").alert_receivers == ()


def test_settings_never_show_a_receivers_url_or_secret() -> None:
    made = settings(heartbeat_alert_webhook_url=HOOK, heartbeat_alert_webhook_secret="s3cret",
                    heartbeat_pagerduty_routing_key="R0UTING",
                    heartbeat_alertmanager_url="https://u:pw@am.example.com/")
    for text in (repr(made), str(made), repr(readiness.alerting_config(made))):
        for secret in ("t0ken", "s3cret", "R0UTING", "pw@"):
            assert secret not in text, (secret, text)


@pytest.mark.parametrize(("variable", "value"), [
    ("heartbeat_alert_webhook_url", "http://hooks.example.com/t0ken"),
    ("heartbeat_alert_escalation_url", "ftp://hooks.example.com/t0ken"),
    ("heartbeat_alertmanager_url", "http://am.internal:9093/t0ken"),
])
def test_a_url_that_is_not_https_or_loopback_is_refused(variable: str, value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(**{variable: value})
    assert variable.upper() in str(refused.value)
    assert "t0ken" not in str(refused.value)


def test_allow_http_accepts_plain_http_anywhere() -> None:
    made = settings(heartbeat_alert_webhook_url="http://hooks.example.com/x",
                    heartbeat_alert_allow_http=True)
    assert len(made.alert_receivers) == 1


def test_the_pagerduty_url_is_checked_only_when_pagerduty_is_on() -> None:
    assert settings(heartbeat_pagerduty_url="http://events.example.com/").alert_receivers == ()
    with pytest.raises(ValidationError, match="HEARTBEAT_PAGERDUTY_URL"):
        settings(heartbeat_pagerduty_url="http://events.example.com/",
                 heartbeat_pagerduty_routing_key="R0UTING")


def test_a_command_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTBEAT_ALERT_WEBHOOK_URL", "http://hooks.example.com/t0ken")
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "HEARTBEAT_ALERT_WEBHOOK_URL" in lines[0] and "must use https" in lines[0]
    assert "t0ken" not in result.output
