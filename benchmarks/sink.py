"""A stand-in control plane for the HTTP benchmark: accepts every POST with 202.

``python -m benchmarks.sink PORT [SECONDS]`` serves on 127.0.0.1 only and
exits by itself after SECONDS (default 600), so a benchmark that dies
cannot leave it behind for long.  ``GET /`` answers ``{"posts": N, "events": M}``, the
numbers of batches and of events received so far.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_COUNTS = {"posts": 0, "events": 0}
_LOCK = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        with _LOCK:
            counts = dict(_COUNTS)
        self._reply(200, json.dumps(counts).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            events = len(json.loads(body)["events"])
        except (ValueError, KeyError, TypeError):
            events = 0
        with _LOCK:
            _COUNTS["posts"] += 1
            _COUNTS["events"] += events
        self._reply(202)

    def _reply(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The edge opens many connections at once under load; the default backlog of 5
    # would drop their SYNs and stall its background sends for seconds.
    request_queue_size = 1024


def main(argv: list[str]) -> None:
    port = int(argv[1])
    lifetime = float(argv[2]) if len(argv) > 2 else 600.0
    server = _Server(("127.0.0.1", port), _Handler)
    threading.Timer(lifetime, server.shutdown).start()
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
