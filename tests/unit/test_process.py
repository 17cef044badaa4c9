"""Stopping the embedded services' processes (heartbeat_platform.local.process)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from heartbeat_platform.local.process import process_alive, stop_process


def test_a_process_nobody_reaps_counts_as_stopped_once_it_is_a_zombie() -> None:
    """A service started by another process stays a zombie after it exits until that
    process reaps it; `down` must not wait for that (it used to time out and crash)."""
    parent = subprocess.Popen(  # starts the "service" and never reaps it, like a run worker
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
         "print(child.pid, flush=True)\n"
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        service = int(parent.stdout.readline())
        stop_process(service, timeout=3)  # used to time out and raise here
        assert psutil.Process(service).status() == psutil.STATUS_ZOMBIE
        assert not process_alive(service, "python")
    finally:
        parent.kill()
        parent.wait(5)


def test_a_process_that_ignores_sigterm_is_killed() -> None:
    child = subprocess.Popen([
        sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    ])
    try:
        time.sleep(0.5)  # the handler is in place
        stop_process(child.pid, timeout=1)
        assert child.wait(5) == -9
    finally:
        if child.poll() is None:
            child.kill()
