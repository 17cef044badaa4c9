"""Receivers as data: `alerts receivers add|list|remove|test` against a running consumer on
the real services. A receiver added is in force within seconds, with no restart, and hears
only of episodes that fire after it came (no resolution out of nowhere); one removed hears
nothing more; its URL is in no table the Grafana role reads."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest

from heartbeat_platform.alerting.delivery import TEST_CUSTOMER, TEST_EPISODE_ID
from tests.integration.test_alert_episodes import CONSUMER_LOGS, script, send, stop, wait_for
from tests.integration.test_alert_receivers import Recorder, consumer, episode_ids, prepared
from tests.support.webhook_check import readme_verifies

__all__ = ["prepared"]  # the fixture, shared


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.close()


def _cli(*args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heartbeat_platform", "alerts", "receivers",
                           *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _done(db, episode_id: int, state: str) -> bool:
    row = db.execute("SELECT done_at IS NOT NULL FROM alert_outbox WHERE episode_id = %s AND "
                     "state = %s", (episode_id, state)).fetchone()
    return bool(row and row[0])


def in_force_says(names: str) -> bool:
    """The consumer's log's latest line on the receivers in force names these."""
    lines = [line for line in CONSUMER_LOGS[-1].read_text().splitlines()
             if "alert receivers in force: " in line]
    return bool(lines) and lines[-1].endswith(f"alert receivers in force: {names}")


def _heard(recorder: Recorder) -> list[tuple[str, str]]:
    return [(body["customer_id"], body["state"])
            for body in (orjson.loads(b) for _, _, b in recorder.posts)]


def test_a_receiver_added_to_a_running_consumer_hears_only_what_fires_after_it(
    prepared, recorder: Recorder, db, cli_env, tmp_path
) -> None:
    start_at = datetime.now(UTC) - timedelta(minutes=5)
    proc = consumer(prepared)  # no receiver in the settings
    try:
        send(prepared, script(start_at, CUST_00001=[72, 190]))
        wait_for(lambda: episode_ids(db, "CUST_00001"), what="episode 1")
        (before,) = episode_ids(db, "CUST_00001")
        wait_for(lambda: _done(db, before, "firing"), what="its firing, told to nobody")

        added = _cli("add", "ward", "--url", f"{recorder.base}/hook", "--by", "nurse",
                     env=cli_env, cwd=tmp_path)
        assert added.returncode == 0, added.stderr
        assert added.stdout.startswith(
            f"receiver ward (webhook, {recorder.base}/…) added by nurse"), added.stdout

        # the running consumer reloads the stored receivers every couple of seconds
        wait_for(lambda: in_force_says(f"ward (webhook, {recorder.base}/…)"),
                 what="the consumer's log naming the new receiver")
        heard = "CUST_00002"
        send(prepared, script(start_at + timedelta(seconds=2), CUST_00002=[35]))
        wait_for(lambda: recorder.posts, what="the new receiver's first notification")
        assert _heard(recorder) == [(heard, "firing")]

        send(prepared, script(start_at + timedelta(minutes=1),
                              CUST_00001=[70, 70, 70], **{heard: [70, 70, 70]}))
        (after,) = episode_ids(db, heard)
        wait_for(lambda: _done(db, before, "resolved") and _done(db, after, "resolved"),
                 what="both resolutions delivered")
        assert _heard(recorder) == [(heard, "firing"), (heard, "resolved")], (
            "no resolution of an episode the receiver was never told of")

        listed = _cli("list", "--json", env=cli_env, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        (shown,) = json.loads(listed.stdout)
        assert (shown["name"], shown["type"], shown["url"], shown["added_by"]) == (
            "ward", "webhook", f"{recorder.base}/…", "nurse")

        removed = _cli("remove", "ward", env=cli_env, cwd=tmp_path)
        assert removed.returncode == 0, removed.stderr
        wait_for(lambda: in_force_says("none"), what="the consumer's log: no receiver")
        send(prepared, script(start_at + timedelta(minutes=2), CUST_00090=[35]))
        wait_for(lambda: episode_ids(db, "CUST_00090"), what="the last episode")
        (last,) = episode_ids(db, "CUST_00090")
        wait_for(lambda: _done(db, last, "firing"), what="its firing")
        (told,) = db.execute("SELECT delivered_to FROM alert_outbox WHERE episode_id = %s "
                             "AND state = 'firing'", (last,)).fetchone()
    finally:
        stop(proc)
    assert told == []
    assert _heard(recorder) == [(heard, "firing"), (heard, "resolved")]


def test_the_grafana_role_cannot_read_the_receivers(prepared, db, cli_env, tmp_path) -> None:
    added = _cli("add", "secret-ward", "--url", "https://hooks.example.com/T0KEN",
                 env=cli_env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
        db.execute("SET LOCAL ROLE heartbeat_grafana_reader")
        db.execute("SELECT * FROM alert_receivers")
    (pipeline_can,) = db.execute(
        "SELECT has_table_privilege('heartbeat_pipeline', 'alert_receivers', 'SELECT')"
    ).fetchone()
    assert pipeline_can, "the deliverer (pipeline role) reads them"


def test_receivers_test_sends_a_signed_test_episode_firing_then_resolved(
    prepared, recorder: Recorder, cli_env, tmp_path
) -> None:
    added = _cli("add", "signed", "--url", f"{recorder.base}/hook", "--secret-env",
                 "WARD_SECRET", env=cli_env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr

    unset = _cli("test", "signed", env=cli_env, cwd=tmp_path)
    assert unset.returncode == 1
    assert unset.stderr.strip().splitlines() == [
        "error: receiver signed: $WARD_SECRET is not set in the deliverer's environment"]
    assert recorder.posts == []

    done = _cli("test", "signed", env={**cli_env, "WARD_SECRET": "s3cret"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"signed (webhook, {recorder.base}/…): test episode firing: HTTP 204",
        f"signed (webhook, {recorder.base}/…): test episode resolved: HTTP 204"]
    bodies = [orjson.loads(body) for _, _, body in recorder.posts]
    assert [(b["episode_id"], b["customer_id"], b["state"]) for b in bodies] == [
        (TEST_EPISODE_ID, TEST_CUSTOMER, "firing"), (TEST_EPISODE_ID, TEST_CUSTOMER, "resolved")]
    assert all(readme_verifies("s3cret", headers, body) for _, headers, body in recorder.posts)


@pytest.mark.parametrize(("args", "message"), [
    (("--url", "http://hooks.example.com/x"),
     "receiver bad: http://hooks.example.com/… must use https (http only to a loopback "
     "address, unless HEARTBEAT_ALERT_ALLOW_HTTP=true)"),
    (("--url", "https://events.pagerduty.com/v2/enqueue", "--type", "pagerduty"),
     "receiver bad: pagerduty needs --secret-env, the variable holding its routing key"),
    (("--url", "https://hooks.example.com/x", "--secret-env", "not a variable"),
     "receiver name 'bad' or variable 'not a variable' is not allowed (a name: letters, "
     "digits, '_', '.', '-'; a variable: an environment variable's name)"),
])
def test_a_refused_receiver_is_one_line(prepared, cli_env, tmp_path, args, message) -> None:
    done = _cli("add", "bad", *args, env=cli_env, cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    assert done.stderr.strip().splitlines() == [f"error: {message}"]


def test_a_second_receiver_of_the_same_name_is_refused(prepared, cli_env, tmp_path) -> None:
    first = _cli("add", "ward", "--url", "https://hooks.example.com/a", env=cli_env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = _cli("add", "ward", "--url", "https://hooks.example.com/b", env=cli_env, cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "error: a receiver named ward exists: remove it first"]
