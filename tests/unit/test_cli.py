"""The command's own options: --version, --help, the JSON log formatter, a bad --log-level."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

from heartbeat_platform import cli
from heartbeat_platform.cli import logs, services
from heartbeat_platform.cli.logs import JsonFormatter


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heartbeat_platform", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )


def test_version_prints_the_installed_version() -> None:
    done = _cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"heartbeat-platform {version('heartbeat-platform')}\n"


@pytest.mark.parametrize("command", [[], ["alerts"], ["alerts", "list"], ["up"], ["status"]])
def test_help_shows_a_flag_as_taking_no_value(command: list[str]) -> None:
    """`--open <bool>` read as "takes a value", and `--open true` is refused."""
    done = _cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "--help " in done.stdout
    assert "<bool>" not in done.stdout
    if command == ["alerts", "list"]:
        assert re.search(r"--open +Only open episodes", done.stdout), done.stdout
        assert re.search(r"--limit +<int", done.stdout), done.stdout  # a value, still shown


def test_an_unknown_log_level_after_the_command_is_a_usage_error() -> None:
    done = _cli("status", "--log-level", "loud")
    assert done.returncode == 2
    assert "'loud' is not one of debug, info, warning, error" in done.stderr


def test_json_formatter_keeps_a_record_and_its_exception_on_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.getLogger("heartbeat_platform.x").makeRecord(
            "heartbeat_platform.x", logging.ERROR, __file__, 1, "failed for %s", ("CUST_1",),
            sys.exc_info(),
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["logger"] == "heartbeat_platform.x"
    assert entry["message"] == "failed for CUST_1"
    assert entry["exception"].startswith("Traceback") and "ValueError: bad\nvalue" in entry[
        "exception"
    ]


def test_an_unexpected_failure_under_json_is_one_record_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    def boom(_settings: object) -> dict:
        raise RuntimeError("status broke")

    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setattr(services, "collect_status", boom)
    monkeypatch.setattr(sys, "argv", ["heartbeat-platform", "--log-format", "json", "status"])
    root = logging.getLogger()
    level = root.level
    try:
        with pytest.raises(SystemExit) as exited:
            cli.run()
    finally:
        root.removeHandler(logs.chosen.handler)
        root.setLevel(level)
    assert exited.value.code == 1
    [entry] = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert entry["level"] == "ERROR" and entry["message"] == "unexpected error"
    assert entry["exception"].endswith("RuntimeError: status broke")
