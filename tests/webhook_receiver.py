"""A webhook receiver the tests start on 127.0.0.1: it records every request and
answers what the test says (500s for a while, then 200s), on a thread of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """``answer(received_so_far_for_this_id) -> status``; 200 by default."""

    answer: Callable[[str, int], int] = lambda msg_id, n: 200
    host: str = "127.0.0.1"
    port: int = 0
    location: str = ""  # sent with a 3xx answer
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                headers = {k.lower(): v for k, v in self.headers.items()}
                msg_id = headers.get("webhook-id", "")
                with receiver._lock:
                    seen = sum(
                        1 for r in receiver.requests if r.headers.get("webhook-id") == msg_id
                    )
                    status = receiver.answer(msg_id, seen)
                    receiver.requests.append(Received(time.time(), headers, body, status))
                self.send_response(status)
                if 300 <= status < 400 and receiver.location:
                    self.send_header("location", receiver.location)
                self.send_header("content-type", "text/plain")
                reply = b"ok" if status < 300 else b"not now " + b"x" * 4000
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # socketserver's 5 drops concurrent connects (1 s SYN retry)

        self._server = Server((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def taken(self) -> list[Received]:
        """The requests answered 2xx, in arrival order."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.answered < 300]

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)


def main() -> None:
    """``python -m tests.webhook_receiver PORT LOG``: a receiver in a process of its own
    (bench/events.py), answering 200 and appending ``<arrival time>\\t<body>`` per POST."""
    import sys

    port, path = int(sys.argv[1]), sys.argv[2]
    out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            at = time.time()
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            out.write(f"{at}\t{body.decode()}\n")
            out.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 256

    Server(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
