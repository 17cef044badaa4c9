"""`heartbeat-platform alerts ...` as a person runs it: a real process on a real database;
exit 0 when done, 1 with one error line (no traceback) when refused."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from heartbeat_platform.storage import episodes
from heartbeat_platform.storage.migrations import migrate
from tests.support.alerting_rows import insert_episode

LINE_TIMEOUT_S = 120  # a bound for a hung process, not a measurement


def _cli(*args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heartbeat_platform", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def _refused(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [f"error: {message}"]


def test_ack_then_list_shows_who_acknowledged(conn, cli_env, tmp_path) -> None:
    episode_id = insert_episode(conn, "CUST_00009", "BRADYCARDIA")
    # Into a pipe (where rich assumes 80 columns): the 90-odd-character line stays one line.
    narrow = {k: v for k, v in cli_env.items() if k != "COLUMNS"}
    done = _cli("alerts", "ack", str(episode_id), "--by", "alice", "--note", "on it",
                env=narrow, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith(f"episode {episode_id} (CUST_00009 BRADYCARDIA) acknowledged by "
                           "alice at 20"), done.stdout
    listed = _cli("alerts", "list", "--open", "--json", env=cli_env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (shown,) = json.loads(listed.stdout)
    assert (shown["episode_id"], shown["acknowledged_by"], shown["acknowledge_note"]) == (
        episode_id, "alice", "on it"
    )
    # The table into a pipe: the row whole, on one line.
    table = _cli("alerts", "list", "--open", env=narrow, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    (row,) = [line for line in table.stdout.splitlines() if line.split()[:1] == [str(episode_id)]]
    assert "CUST_00009" in row and "BRADYCARDIA" in row and "by alice" in row, table.stdout
    assert shown["acknowledged_at"][:10] in row, table.stdout


def test_refusals_exit_1_with_one_line(conn, cli_env, tmp_path) -> None:
    episode_id = insert_episode(conn)
    assert _cli("alerts", "resolve", str(episode_id), "--by", "alice",
                env=cli_env, cwd=tmp_path).returncode == 0
    again = _cli("alerts", "resolve", str(episode_id), "--by", "bob", env=cli_env, cwd=tmp_path)
    _refused(again, f"episode {episode_id} is already resolved (at "
             f"{_resolved_at(conn, episode_id)}, by alice); cannot resolve it")
    _refused(_cli("alerts", "ack", "777", "--by", "bob", env=cli_env, cwd=tmp_path),
             "no episode 777")
    _refused(
        _cli("alerts", "override", "set", "CUST_00001", "bradycardia", "200", "--by", "bob",
             env=cli_env, cwd=tmp_path),
        "BRADYCARDIA 200 for CUST_00001 refused: the BRADYCARDIA bound (200) must not exceed "
        "the TACHYCARDIA bound (180), or no heart rate is NORMAL",
    )


def _resolved_at(conn: psycopg.Connection, episode_id: int) -> str:
    from heartbeat_platform.storage.alert_operations import format_time

    (resolved_at,) = conn.execute(
        "SELECT resolved_at FROM alert_episodes WHERE episode_id = %s", (episode_id,)
    ).fetchone()
    return format_time(resolved_at)


def test_override_set_clear_and_history(conn, cli_env, tmp_path) -> None:
    for args in (
        ("set", "CUST_00042", "BRADYCARDIA", "35", "--by", "alice", "--note", "athlete"),
        ("set", "CUST_00042", "tachycardia", "190", "--by", "bob"),
        ("clear", "CUST_00042", "BRADYCARDIA", "--by", "carol"),
    ):
        done = _cli("alerts", "override", *args, env=cli_env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    in_force = _cli("alerts", "override", "list", "--json", env=cli_env, cwd=tmp_path)
    assert [(o["kind"], o["threshold"], o["set_by"]) for o in json.loads(in_force.stdout)] == [
        ("TACHYCARDIA", 190, "bob")
    ]
    history = _cli("alerts", "override", "list", "--history", "CUST_00042", "--json",
                   env=cli_env, cwd=tmp_path)
    assert [(o["kind"], o["threshold"], o["set_by"], o["note"])
            for o in json.loads(history.stdout)] == [
        ("BRADYCARDIA", None, "carol", None),
        ("TACHYCARDIA", 190, "bob", None),
        ("BRADYCARDIA", 35, "alice", "athlete"),
    ]
    text = _cli("alerts", "override", "list", "--history", "CUST_00042", env=cli_env,
                cwd=tmp_path)
    assert "cleared" in text.stdout and "athlete" in text.stdout


def test_tail_prints_a_transition_queued_while_it_runs_and_stops_on_ctrl_c(
    conn, cli_env, tmp_path
) -> None:
    insert_episode(conn, "CUST_00001")  # queued before tail started: not shown
    episode_id = insert_episode(conn, "CUST_00077", "TACHYCARDIA", notify=False)
    tail = subprocess.Popen(
        [sys.executable, "-m", "heartbeat_platform", "alerts", "tail"],
        env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        started = _line(tail.stderr)
        assert started.startswith("following alert transitions after outbox id"), started
        episodes.enqueue(conn, [episode_id], "firing")
        fields = _line(tail.stdout).split()
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=LINE_TIMEOUT_S) == 0
    finally:
        tail.kill()
    # time (date, clock), "episode", id, customer, kind, state, severity
    assert fields[2:] == ["episode", str(episode_id), "CUST_00077", "TACHYCARDIA", "firing",
                          "critical"]
    assert tail.stdout is not None and tail.stdout.read() == ""  # nothing else was printed


def _line(stream) -> str:
    """The next line of a child's pipe, or fail if none comes within LINE_TIMEOUT_S."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        assert selector.select(LINE_TIMEOUT_S), "no output from the process"
    return stream.readline().strip()
