"""The command's logs: text or one JSON object per line on stderr, options before or after it."""

from __future__ import annotations

import json
import subprocess
import sys


def _cli(*args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heartbeat_platform", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def _json_lines(stderr: str) -> list[dict]:
    lines = stderr.splitlines()
    assert lines, "nothing logged"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    return records


def test_json_logs_with_verbose_after_the_command(cli_env, tmp_path) -> None:
    done = _cli("--log-format", "json", "init-db", "-v", env=cli_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = _json_lines(done.stderr)
    # init-db creates the topic (its own log line) before it applies the schema
    first = next(r for r in records if r["logger"] == "heartbeat_platform.storage.migrations")
    assert {
        "level": "INFO",
        "logger": "heartbeat_platform.storage.migrations",
        "message": "applied migration 001_core_tables",
    }.items() <= first.items()
    assert first["time"].endswith("+00:00")
    assert "schema applied 001_core_tables" in done.stdout  # the report itself stays text


def test_env_selects_json_and_log_level_goes_after_the_command(cli_env, tmp_path) -> None:
    env = {**cli_env, "HEARTBEAT_LOG_FORMAT": "json"}
    done = _cli("init-db", "--log-level", "INFO", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert any(r["message"].startswith("applied migration") for r in _json_lines(done.stderr))


def test_text_logs_by_default_and_warning_unless_asked(cli_env, database_factory, tmp_path) -> None:
    quiet = _cli("init-db", env=cli_env, cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""

    env = {**cli_env, "DATABASE_URL": database_factory()}
    verbose = _cli("init-db", "-v", env=env, cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert " INFO heartbeat_platform.storage.migrations applied migration 001_core_tables" in (
        verbose.stderr
    )
    # the last one given wins: -v before the command, a higher level after it
    again = _cli("-v", "init-db", "--log-level", "warning", env=env, cwd=tmp_path)
    assert again.returncode == 0 and again.stderr == ""


def test_a_failure_is_one_json_error_line(cli_env, tmp_path) -> None:
    env = {
        **cli_env,
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "HEARTBEAT_LOG_FORMAT": "json",
    }
    done = _cli("consume", env=env, cwd=tmp_path)
    assert done.returncode == 1
    [record] = _json_lines(done.stderr)
    assert record["level"] == "ERROR" and record["logger"] == "heartbeat_platform.cli"
    assert "127.0.0.1" in record["message"]
