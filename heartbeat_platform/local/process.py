"""Small helpers shared by the embedded services: ports, state files, background processes."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import psutil


def free_port(host: str = "127.0.0.1", preferred: int | None = None) -> int:
    """A TCP port nobody listens on right now: `preferred` if it is free, else one the OS picks.

    A restarted service keeps its port when it can, so clients configured with it reconnect.
    """
    for port in ((preferred, 0) if preferred else (0,)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError(f"no free TCP port on {host}")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: dict) -> None:
    """Write atomically so a concurrent reader never sees half a file."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def process_alive(pid: int, name_contains: str) -> bool:
    """True when `pid` runs and is the program we started (pids get reused)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return any(name_contains in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop_process(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not gone after `timeout` seconds.

    Gone includes a zombie: an embedded service started by another process (a Dagster run
    that set up the embedded services) is that process's child, and nobody reaps it there.
    """
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        if not wait_until(lambda: _gone(proc), timeout):
            proc.kill()
            wait_until(lambda: _gone(proc), timeout)
    except psutil.NoSuchProcess:
        pass


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
