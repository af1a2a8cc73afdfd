"""Small HTTP servers on 127.0.0.1 for tests: another "instance" that answers what a test
says (a listing, a redirect, an oversized body, nothing for a while), recording every request;
and a self-signed certificate for 127.0.0.1."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# (status, headers, body chunks): chunks are written one by one, flushed after each.
Answer = tuple[int, dict[str, str], list[bytes]]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class LocalServer:
    answer: Callable[[str], Answer]
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def local_server(answer: Callable[[str], Answer]) -> Iterator[LocalServer]:
    server = LocalServer(answer)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            server.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
            status, headers, chunks = server.answer(self.path)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if "content-length" not in {k.lower() for k in headers}:
                self.send_header("connection", "close")
            self.end_headers()
            try:
                for chunk in chunks:
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except OSError:
                pass  # the client gave up (a cap, a timeout): what the test wants

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


def json_answer(body: bytes, status: int = 200) -> Answer:
    return status, {"content-type": "application/json",
                    "content-length": str(len(body))}, [body]


def self_signed(tmp: Path, name: str = "server") -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (subjectAltName IP), valid for a day."""
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key
