"""The delivery's HTTP sender against misbehaving loopback receivers: a total deadline per
POST, whatever the receiver drips, and at most MAX_ANSWER_BYTES of an answer read."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from heartbeat_platform.alerting.delivery import MAX_ANSWER_BYTES, _KeptAlive


def serve(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A one-connection-at-a-time TCP server on loopback answering with `answer`."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def run() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            # OSError: the sender hung up, as a deadline does
            with conn, contextlib.suppress(OSError):
                conn.recv(65536)  # the request (small)
                answer(conn)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    stop.set()
    thread.join(5)
    server.close()


@pytest.fixture
def dripping() -> Iterator[str]:
    """Status line at once, then a header byte every 0.1 s: each read is quick, the whole
    answer never ends."""
    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(200):
            conn.sendall(b"a")
            time.sleep(0.1)
    yield from serve(answer)


@pytest.fixture
def huge() -> Iterator[str]:
    """A 2xx with a body of 1 MiB, as a broken or hostile receiver might send."""
    def answer(conn: socket.socket) -> None:
        size = 1024 * 1024
        conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n\r\n" % size)
        conn.sendall(b"x" * size)
    yield from serve(answer)


def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_deadline(dripping: str) -> None:
    """Each read is quick, so only the deadline stops it (per-read timeouts would take the
    whole 20 s answer); an answer cut short is a failure, never a delivery."""
    sender = _KeptAlive(timeout_s=1.0)
    with pytest.raises(TimeoutError, match="within 1 s"):
        sender.post(dripping, b"{}", {"Content-Type": "application/json"})
    assert sender.open == {}  # the connection is dropped


def test_a_huge_answer_is_read_only_so_far_and_its_connection_closed(huge: str) -> None:
    sender = _KeptAlive(timeout_s=5.0)
    assert sender.post(huge, b"{}", {}) == 202
    assert sender.open == {}  # the rest was never read, so the connection cannot be reused
    assert MAX_ANSWER_BYTES == 64 * 1024
