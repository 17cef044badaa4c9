"""A webhook receiver that records when each notification arrived: the bench's far end.

It runs in a process of its own (`ReceiverProcess`), so its HTTP work does not share an
interpreter lock with the producer it is timed against. Each receipt is the arrival time,
the Idempotency-Key and the payload's episode fields needed to time it (one per episode
of a storm's grouped POST).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event


@dataclass(frozen=True)
class Receipt:
    received_at: float  # epoch seconds
    key: str  # Idempotency-Key
    state: str
    first_reading_at: str | None


def _serve(port_out: Connection, receipts_out: Connection, stop: Event) -> None:
    receipts: list[Receipt] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would offer

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            now, key = time.time(), self.headers.get("Idempotency-Key", "")
            # a storm's grouped POST names several episodes: each is a receipt
            for episode in body.get("episodes", [body]):
                receipts.append(Receipt(now, key, episode.get("state", ""),
                                        episode.get("first_reading_at")))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 0.2
    port_out.send(server.server_address[1])
    while not stop.is_set():
        server.handle_request()
    server.server_close()
    receipts_out.send(receipts)


class ReceiverProcess:
    """Start with `with ReceiverProcess() as receiver:`; `receiver.url`, then `receipts()`."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        port_in, port_out = context.Pipe(duplex=False)
        self._receipts_in, receipts_out = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve, args=(port_out, receipts_out, self._stop), daemon=True
        )
        self._process.start()
        self.url = f"http://127.0.0.1:{port_in.recv()}/hook"
        self._receipts: list[Receipt] | None = None

    def receipts(self) -> list[Receipt]:
        """Stop the receiver (once) and return what it received."""
        if self._receipts is None:
            self._stop.set()
            self._receipts = self._receipts_in.recv()
            self._process.join(10)
        return self._receipts

    def __enter__(self) -> ReceiverProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.receipts()
