"""A local HTTP server for the download and publish tests (no internet): serves bytes from
memory with Range support and can cut a transfer short or answer with HTTP errors on demand."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1 with Range support.

    - ``drop[path] = n``: the next GET of ``path`` announces the full length, sends ``n`` bytes
      of the body and hangs up (an interrupted transfer).
    - ``fail[path] = [codes]``: the next GETs of ``path`` are answered with these HTTP errors.
    - ``ignore_range``: answer every GET with the whole file (a server without Range support).
    - ``requests`` logs (path, Range header) of every GET; ``sent`` counts body bytes per path.
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}
        self.fail: dict[str, list[int]] = {}
        self.ignore_range = False
        self.sent: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def serve_dir(self, folder: Path, prefix: str = "/pub/") -> str:
        """Serve every file of ``folder`` under ``prefix``; returns that folder's URL."""
        for f in folder.iterdir():
            self.files[prefix + f.name] = f.read_bytes()
        return self.url(prefix)

    def total(self) -> int:
        """Body bytes sent so far, all paths together."""
        return sum(self.sent.values())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv: Server = self.server
        rng = self.headers.get("Range")
        with srv.lock:
            srv.requests.append((self.path, rng))
            failures = srv.fail.get(self.path)
            code = failures.pop(0) if failures else None
        if code is not None:
            self.send_error(code)
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and not srv.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        cut = srv.drop.pop(self.path, None)
        if cut is not None:  # part of the body, then hang up
            body, self.close_connection = body[:cut], True
        self.wfile.write(body)
        self.wfile.flush()
        with srv.lock:
            srv.sent[self.path] = srv.sent.get(self.path, 0) + len(body)


@contextmanager
def serving() -> Iterator[Server]:
    """A running :class:`Server` on a free port, shut down on exit."""
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
