"""Episodes through the real consumer to receivers that speak their own protocols: a real
Alertmanager (Debian's binary), a signed webhook checked with the README's own lines, and a
PagerDuty Events API v2 stand-in that holds every event to PagerDuty's published schema.
Receivers' URLs and secrets must appear nowhere the Grafana role or a log could show them.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import orjson
import pytest

from heartbeat_platform import readiness
from heartbeat_platform.alerting.delivery import _KeptAlive
from heartbeat_platform.alerting.receivers import (
    Receiver,
    alertmanager_refresh,
    default_name,
    verify,
)
from heartbeat_platform.storage import alert_operations
from heartbeat_platform.storage.migrations import migrate, sql_dir
from tests.integration.test_alert_episodes import (
    CONSUMER_LOGS,
    consumer_process,
    script,
    send,
    stop,
    wait_for,
)
from tests.support.alerting_rows import insert_episode
from tests.support.alertmanager import RESOLVE_TIMEOUT_S, Alertmanager
from tests.support.webhook_check import readme_verifies

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[1] / "support" / "pagerduty_events_v2.schema.json")
    .read_text()
)


class Recorder:
    """An HTTP receiver keeping each POST's path, headers and raw body; it answers
    `status` (503 while `failing` is set) with `answer` as its body."""

    def __init__(self, status: int = 204, answer: bytes = b"") -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.refused = 0
        self.failing = threading.Event()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if recorder.failing.is_set():
                    recorder.refused += 1
                    code, reply = 503, b""
                else:
                    recorder.posts.append((self.path, dict(self.headers), body))
                    code, reply = status, answer
                self.send_response(code)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


@pytest.fixture
def pagerduty() -> Iterator[Recorder]:
    server = Recorder(202, b'{"status":"success","message":"Event processed"}')
    yield server
    server.close()


@pytest.fixture
def prepared(settings_factory, database_url):
    settings = settings_factory(database_url=database_url, heartbeat_consume_batch_size=50)
    readiness.prepare(settings)
    return settings


class _NoWebhook:
    url = ""  # HEARTBEAT_ALERT_WEBHOOK_URL blank: unset


def consumer(settings, **env: str):
    """`consume` with the receivers `env` names (no webhook unless it names one)."""
    return consumer_process(settings, _NoWebhook(), **env)


def episode_ids(db, customer: str) -> list[int]:
    return [r[0] for r in db.execute(
        "SELECT episode_id FROM alert_episodes WHERE customer_id = %s ORDER BY episode_id",
        (customer,)).fetchall()]


def nothing_shows(db, *secrets: str) -> None:
    """No row of the tables the Grafana role reads about alerts holds any of `secrets`,
    nor the consumer's log."""
    for table in ("alert_outbox", "alert_episodes"):
        for secret in secrets:
            (found,) = db.execute(
                f"SELECT count(*) FROM {table} t WHERE row_to_json(t)::text LIKE %s",
                (f"%{secret}%",),
            ).fetchone()
            assert found == 0, f"{secret!r} in {table}"
    log = CONSUMER_LOGS[-1].read_text()
    for secret in secrets:
        assert secret not in log, f"{secret!r} in the consumer's log"


# -- a real Alertmanager -------------------------------------------------------------------

def test_alertmanager_holds_a_firing_episode_while_it_fires_and_drops_it_once_resolved(
    prepared, alertmanager: Alertmanager, db, tmp_path: Path
) -> None:
    """Alertmanager forgets an alert not sent again within its resolve_timeout (4 s here):
    a control alert posted once is gone after it, while the consumer's episode, re-sent
    every second, stays active; once the readings resolve it, endsAt takes it out."""
    control = Receiver.of("alertmanager", alertmanager.url)
    control_episode = {
        "episode_id": 999_999, "customer_id": "CUST_99999", "kind": "BRADYCARDIA",
        "state": "firing", "severity": "critical",
        "opened_at": datetime.now(UTC).isoformat(), "resolved_at": None,
        "worst_heart_rate": 30, "readings": 1, "last_reading_at": None,
    }
    request = alertmanager_refresh(control, [orjson.dumps(control_episode)])
    assert _KeptAlive(5.0).post(request.url, request.body, dict(request.headers)) == 200

    start_at = datetime.now(UTC) - timedelta(minutes=5)
    proc = consumer(prepared, HEARTBEAT_ALERTMANAGER_URL=alertmanager.url,
                    HEARTBEAT_ALERTMANAGER_REFRESH_S="1")
    try:
        send(prepared, script(start_at, CUST_00001=[72, 190, 204]))
        wait_for(lambda: len(episode_ids(db, "CUST_00001")) == 1, what="the episode")
        (episode_id,) = episode_ids(db, "CUST_00001")
        key = str(episode_id)
        wait_for(lambda: key in alertmanager.episode_alerts(), what="the alert in Alertmanager")
        alert = alertmanager.episode_alerts()[key]
        assert alert["labels"] == {
            "alertname": "heartbeat_episode", "customer_id": "CUST_00001",
            "kind": "TACHYCARDIA", "severity": "critical", "episode_id": key,
        }
        assert alert["annotations"]["summary"] == (
            "CUST_00001: TACHYCARDIA, worst 204 bpm over 2 readings")
        assert alert["status"]["state"] == "active"

        time.sleep(RESOLVE_TIMEOUT_S + 3)  # past resolve_timeout: only re-sent alerts stay
        held = alertmanager.episode_alerts()
        (tmp_path / "alertmanager-answer.json").write_text(json.dumps(alertmanager.alerts()))
        assert "999999" not in held, "the control alert outlived resolve_timeout"
        assert key in held and held[key]["status"]["state"] == "active"

        send(prepared, script(start_at + timedelta(seconds=10), CUST_00001=[70, 70, 70]))
        wait_for(lambda: key not in alertmanager.episode_alerts(),
                 what="the resolved episode gone from Alertmanager's active alerts")
        (state,) = db.execute("SELECT state FROM alert_episodes WHERE episode_id = %s",
                              (episode_id,)).fetchone()
        assert state == "resolved"
        time.sleep(2.5)  # more re-send rounds: a resolved episode is not sent again
        assert key not in alertmanager.episode_alerts()
        delivered = db.execute(
            "SELECT state, delivered_to FROM alert_outbox WHERE episode_id = %s ORDER BY 1",
            (episode_id,)).fetchall()
        assert delivered == [("firing", [control.name]), ("resolved", [control.name])]
    finally:
        stop(proc)


# -- a signed webhook ----------------------------------------------------------------------

def test_a_signed_webhook_verifies_with_the_readme_lines_and_its_url_is_never_stored(
    prepared, recorder: Recorder, db
) -> None:
    """The URL carries a token in its path and query, as Slack's and others' do: the
    outbox keeps the receiver's name, last_error too (while the receiver answers 503),
    the log shows neither token nor secret, and every POST verifies."""
    url = f"{recorder.base}/hooks/T0-t0ken-path?key=qu3ry-t0ken"
    secret = "whsec-5ecret-value"
    name = default_name("webhook", url)
    recorder.failing.set()
    proc = consumer(prepared, HEARTBEAT_ALERT_WEBHOOK_URL=url,
                    HEARTBEAT_ALERT_WEBHOOK_SECRET=secret)
    try:
        start_at = datetime.now(UTC) - timedelta(minutes=5)
        send(prepared, script(start_at, CUST_00002=[60, 30, 70, 70, 70]))
        wait_for(lambda: recorder.refused >= 2, what="refused deliveries")
        (error,) = db.execute(
            "SELECT last_error FROM alert_outbox WHERE state = 'firing'").fetchone()
        assert error == f"{name}: HTTP 503"
        recorder.failing.clear()
        wait_for(lambda: db.execute(
            "SELECT count(*) FROM alert_outbox WHERE done_at IS NOT NULL").fetchone()[0] == 2,
            what="firing and resolved delivered")
    finally:
        stop(proc)
    assert [p[0] for p in recorder.posts] == ["/hooks/T0-t0ken-path?key=qu3ry-t0ken"] * 2
    for _, headers, body in recorder.posts:
        assert readme_verifies(secret, headers, body)
        assert verify(secret, headers["X-Heartbeat-Timestamp"], body,
                      headers["X-Heartbeat-Signature"], time.time())
        assert not readme_verifies("another-secret", headers, body)
    states = [orjson.loads(body)["state"] for _, _, body in recorder.posts]
    assert states == ["firing", "resolved"]
    rows = db.execute("SELECT delivered_to, last_error FROM alert_outbox").fetchall()
    assert rows == [([name], None), ([name], None)]
    nothing_shows(db, "t0ken", secret, recorder.base)


# -- PagerDuty Events API v2 ---------------------------------------------------------------

def test_pagerduty_gets_trigger_acknowledge_resolve_of_one_dedup_key_each_per_its_schema(
    prepared, pagerduty: Recorder, db
) -> None:
    routing_key = "R0UTINGKEY0123456789abcdef012345"
    proc = consumer(prepared, HEARTBEAT_PAGERDUTY_ROUTING_KEY=routing_key,
                    HEARTBEAT_PAGERDUTY_URL=f"{pagerduty.base}/v2/enqueue")
    try:
        start_at = datetime.now(UTC) - timedelta(minutes=5)
        send(prepared, script(start_at, CUST_00003=[72, 0, 0]))  # a sensor fault
        wait_for(lambda: len(pagerduty.posts) == 1, what="the trigger")
        (episode_id,) = episode_ids(db, "CUST_00003")
        alert_operations.acknowledge(db, episode_id, "nurse", "on my way")
        wait_for(lambda: len(pagerduty.posts) == 2, what="the acknowledgement")
        send(prepared, script(start_at + timedelta(seconds=10), CUST_00003=[70, 70, 70]))
        wait_for(lambda: len(pagerduty.posts) == 3, what="the resolution")
    finally:
        stop(proc)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    events = []
    for path, headers, body in pagerduty.posts:
        assert path == "/v2/enqueue" and headers["Content-Type"] == "application/json"
        event = orjson.loads(body)
        validator.validate(event)
        events.append(event)
    assert [e["event_action"] for e in events] == ["trigger", "acknowledge", "resolve"]
    assert {e["dedup_key"] for e in events} == {f"heartbeat-episode-{episode_id}"}
    assert {e["routing_key"] for e in events} == {routing_key}
    trigger = events[0]["payload"]
    assert trigger["severity"] == "warning" and trigger["class"] == "SENSOR_FAULT"
    assert trigger["custom_details"]["customer_id"] == "CUST_00003"
    nothing_shows(db, routing_key)


# -- sql/013 -------------------------------------------------------------------------------

def test_migration_013_replaces_stored_urls_by_the_names_the_code_gives_them(
    database_url, db, tmp_path: Path
) -> None:
    """Rows written before 013 held webhook URLs: they now hold the receivers' names
    (`default_name`, computed the same way in SQL), and errors lose their URLs."""
    older = tmp_path / "sql"
    older.mkdir()
    for path in sorted(sql_dir().glob("*.sql")):
        if int(path.name[:3]) < 13:
            shutil.copy(path, older / path.name)
    migrate(database_url, older)
    episode_id = insert_episode(db, "CUST_00001")
    hook = "https://hooks.example.com/T0/t0ken?k=v"
    local = "http://127.0.0.1:8080/hook"
    db.execute(
        "UPDATE alert_outbox SET delivered_to = %s, last_error = %s WHERE episode_id = %s",
        ([local, hook], f"{hook}: HTTP 503 (see https://u:p@other.example.com/a/b?c=d)",
         episode_id),
    )
    migrate(database_url)
    delivered, error = db.execute(
        "SELECT delivered_to, last_error FROM alert_outbox WHERE episode_id = %s",
        (episode_id,)).fetchone()
    assert delivered == [default_name("webhook", local), default_name("webhook", hook)]
    assert error == f"{default_name('webhook', hook)}: HTTP 503 (see https://other.example.com/…)"
    alert_operations.acknowledge(db, episode_id, "nurse")  # 'acknowledged' is a state now
    assert db.execute("SELECT count(*) FROM alert_outbox WHERE state = 'acknowledged'"
                      ).fetchone() == (1,)
