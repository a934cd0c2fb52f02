"""Malformed requests over raw sockets: refused with the documented status, never forwarded.

The cases live in tests/data/malformed_requests.json (its "_about" says the
format; the "desync-guardian" ones are AWS http-desync-guardian's severe
corpus). Each case gets its own router and its own backend: a raw TCP server
that logs every byte it receives and answers only complete requests (parsed
with httptools). The router is closed before the backend's log is read, so a
request it had started to forward would be in the log by then.
"""

from __future__ import annotations

import contextlib
import json
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest

from tests.support.router_harness import ClusterHolder, RouterThread, make_config

DATA = Path(__file__).parents[2] / "data" / "malformed_requests.json"
CASES: list[dict[str, Any]] = json.loads(DATA.read_text())["cases"]
_REPEAT = re.compile(r"<<(.*?)\*(\d+)>>", re.DOTALL)


def expand(raw: str) -> bytes:
    """The case's bytes: JSON text with code points 0-255, <<text*N>> repeated."""
    return _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), raw).encode("latin-1")


# --- a backend that logs every byte --------------------------------------------------------


RUNNING = b'{"state": "RUNNING"}'


@dataclass
class _Conn:
    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    complete: int = 0  # complete requests parsed
    closed_by_peer: bool = False
    probe: bool = False  # the router's own /status check (checks.py): not logged
    parser: Any = None

    def on_url(self, url: bytes) -> None:
        self.probe = self.probe or (url == b"/status" and not self.complete)

    def on_message_complete(self) -> None:
        self.complete += 1
        body = RUNNING if self.probe else b"ok"
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        self.sock.sendall(head + body)


class LoggingBackend:
    """A raw TCP server on port 0 recording each connection's bytes (one thread, selectors)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.conns: list[_Conn] = []
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            conn = _Conn(sock)
            conn.parser = httptools.HttpRequestParser(conn)
            self.conns.append(conn)
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        while True:
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                conn.closed_by_peer = True
                self._selector.unregister(conn.sock)
                conn.sock.close()
                return
            conn.received += data
            # logged; a backend would refuse it too
            with contextlib.suppress(httptools.HttpParserError):
                conn.parser.feed_data(data)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)

    def stop(self) -> None:
        """Stop, after taking in every connection and byte already delivered to us."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(5)
        self._accept()
        for conn in self.conns:
            if not conn.closed_by_peer:
                self._read(conn)
        for conn in self.conns:
            conn.sock.close()
        self.listener.close()
        self._selector.close()

    @property
    def requests(self) -> list[_Conn]:
        """The connections the router forwarded requests on (not its health checks)."""
        return [conn for conn in self.conns if not conn.probe]

    @property
    def received(self) -> bytes:
        return b"".join(bytes(conn.received) for conn in self.requests)

    @property
    def complete(self) -> int:
        return sum(conn.complete for conn in self.requests)


class Setup:
    """One backend and one router in front of it; ``stop`` (idempotent) ends both."""

    def __init__(self, tmp_path: Path) -> None:
        self.backend = LoggingBackend()
        cluster = ClusterHolder()
        cluster.active("n1", 1)
        self.router = RouterThread(make_config(tmp_path, {"n1": self.backend.port}), cluster, None)
        self._stopped = False

    def stop(self) -> None:
        """Close the router first: whatever it had started to forward is with the backend then."""
        if not self._stopped:
            self._stopped = True
            try:
                self.router.close()
            finally:
                self.backend.stop()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    started = Setup(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def send_and_read(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send ``data``, read until the router closes; (answer, closed) ."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # refused before the end of it: the answer is still there to read
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
    return b"".join(chunks), False


def test_the_conformance_file_is_complete() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names)) and len(names) >= 40
    severe = [case for case in CASES if "tests/severe.yaml" in case["reference"]]
    assert len(severe) == 27  # every case of http-desync-guardian's severe.yaml
    for case in CASES:
        assert case["status"] in (200, 400, 414, 431, 501, 505) and case["reference"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_malformed_request(setup: Setup, case: dict[str, Any]) -> None:
    backend = setup.backend
    answer, closed = send_and_read(setup.router.port, expand(case["raw"]))
    head = answer.partition(b"\r\n\r\n")[0]
    status = case["status"]
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    if status == 200:  # a control case: forwarded as it is
        setup.stop()
        assert backend.complete == 1
        return
    assert closed, "the router kept the connection open after refusing the request"
    assert b"\r\nconnection: close" in head.lower()
    setup.stop()
    if case.get("reaches_backend") == "incomplete":
        # The body was bad: the head may have gone ahead, but never a whole request.
        assert backend.complete == 0
        assert all(conn.closed_by_peer for conn in backend.requests)
        assert b"0\r\n\r\n" not in backend.received  # no end of the chunked body was sent
    else:
        assert backend.received == b"", backend.received[:300]


def test_valid_requests_reach_the_logging_backend(setup: Setup) -> None:
    """The log above can fail: well-formed requests show up in it."""
    backend, router = setup.backend, setup.router
    # Connection: close, so that the router closes once it answered.
    get = b"GET /ok HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    answer, _ = send_and_read(router.port, get)
    assert answer.startswith(b"HTTP/1.1 200 ")
    chunked = (
        b"POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    answer, _ = send_and_read(router.port, chunked)
    assert answer.startswith(b"HTTP/1.1 200 ")
    setup.stop()
    assert backend.complete == 2
    assert b"GET /ok HTTP/1.1\r\n" in backend.received
    assert b"POST /up HTTP/1.1\r\n" in backend.received and b"0\r\n\r\n" in backend.received
