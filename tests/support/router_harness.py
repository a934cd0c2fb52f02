"""The router test harness: real HTTP backends, a Router on its own loop, raw clients.

Shared by tests/integration/router/. Backends are threaded
``http.server`` instances on port 0, each answering with its own name and what
it received. The cluster view is built by hand and read by the router from a
mutable holder; ``router.refresh()`` is called instead of waiting a poll
interval, so a test's next request sees the change. The fixtures (``backends``,
``cluster``, ``router_for``) reach the tests through tests/integration/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, ParamSpec, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest
import uvloop

from hakit.config import AppConfig, ClusterConfig, Config, Mode, NodeConfig, RouterConfig
from hakit.coord.base import Lease, NodeRecord
from hakit.coord.view import ClusterView
from hakit.router import ProxyLimits, Router
from hakit.router.pathreport import StateStore

T = TypeVar("T")
P = ParamSpec("P")
RETRY_AFTER = 7
BLOCK = bytes(range(256)) * 4096  # 1 MiB, not all zeros


# --- backends ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    sha256: str
    length: int

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def read_body(rfile: BinaryIO, headers: Message) -> tuple[str, int]:
    """Read a request body (chunked or Content-Length) from ``rfile``: its sha256 and length."""
    digest, length = hashlib.sha256(), 0
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        for _ in range(10_000_000):  # bounded: one chunk per turn
            size = int(rfile.readline(100).split(b";")[0], 16)
            if size == 0:
                while rfile.readline(1000) not in (b"\r\n", b""):
                    pass
                break
            data = rfile.read(size)
            digest.update(data)
            length += len(data)
            rfile.readline(10)
    else:
        remaining = int(headers.get("Content-Length", "0"))
        while remaining:
            data = rfile.read(min(remaining, 1 << 20))
            if not data:
                raise ConnectionError("request body cut short")
            digest.update(data)
            length += len(data)
            remaining -= len(data)
    return digest.hexdigest(), length


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are separate writes: no 40 ms delayed-ACK stall
    server: Backend

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> tuple[str, int]:
        return read_body(self.rfile, self.headers)

    def _record(self, sha: str = "", length: int = 0) -> Seen:
        seen = Seen(self.command, self.path, list(self.headers.items()), sha, length)
        with self.server.lock:
            self.server.seen.append(seen)
        return seen

    def _send(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _answer(self, seen: Seen) -> None:
        body = {"node": self.server.name, "path": seen.path, "headers": seen.headers}
        body |= {"sha256": seen.sha256, "length": seen.length}
        self._send(200, json.dumps(body).encode(), (("Content-Type", "application/json"),))

    def do_GET(self) -> None:
        seen = self._record()
        url = urlsplit(self.path)
        if url.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"alpha-", b"beta-", self.server.name.encode()):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/close-delimited":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"until-close-" + self.server.name.encode())
            self.close_connection = True
        elif url.path == "/nocontent":
            self.send_response(204)
            self.end_headers()
        elif url.path == "/hop":
            extra = (
                ("Connection", "X-Internal"),
                ("X-Internal", "secret"),
                ("Keep-Alive", "timeout=5"),
            )
            self._send(200, b"hop", extra)
        elif url.path == "/download":
            size = int(parse_qs(url.query)["size"][0])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            view = memoryview(BLOCK)
            while size:
                part = view[: min(size, len(BLOCK))]
                self.wfile.write(part)
                size -= len(part)
                self.server.progress += len(part)
        elif url.path == "/die":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self._answer(seen)

    def do_HEAD(self) -> None:
        self._record()
        self._send(200, b"twelve bytes", (("X-Node", self.server.name),))

    def do_POST(self) -> None:
        if self.path == "/upload-held":  # a slow consumer: reads nothing until released
            self.server.release.wait(30)
        sha, length = self._read_body()
        self._answer(self._record(sha, length))


class Backend(ThreadingHTTPServer):
    """A real HTTP server on its own port, answering with its name.

    Subclasses answer otherwise by setting ``handler``."""

    daemon_threads = True
    handler: type[BaseHTTPRequestHandler] = _Handler

    def __init__(self, name: str, sock: socket.socket | None = None, port: int = 0) -> None:
        """``sock``: serve on a socket bound earlier; ``port``: bind this port (0: any)."""
        super().__init__(("127.0.0.1", port), self.handler, bind_and_activate=sock is None)
        if sock is not None:  # take over a socket bound earlier (port known in advance)
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()
            self.server_activate()
        self.name = name
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.connections = 0
        self.progress = 0  # bytes of /download written so far
        self.release = threading.Event()  # lets /upload-held start reading
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


def started_by(make: Callable[P, T], end: Callable[[T], object]) -> Iterator[Callable[P, T]]:
    """The body of a fixture that yields ``make``, remembering what it made, and
    ends each of those with ``end`` after the test: ``yield from started_by(...)``."""
    started: list[T] = []

    def start(*args: P.args, **kwargs: P.kwargs) -> T:
        thing = make(*args, **kwargs)
        started.append(thing)
        return thing

    try:
        yield start
    finally:
        for thing in started:
            end(thing)


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    """``backends(name, sock=None)`` starts a Backend; all are stopped after the test."""
    yield from started_by(Backend, Backend.stop)


# --- cluster view and router ------------------------------------------------------------


def make_config(tmp_path: Path, ports: dict[str, int], mode: Mode = Mode.COLD_STANDBY) -> Config:
    return Config(
        cluster=ClusterConfig(mode=mode, state_dir=tmp_path),
        app=AppConfig(start="true", home=tmp_path / "home", database_url="sqlite:///app.db"),
        # hold_timeout 0: these tests expect the maintenance page at once.
        router=RouterConfig(retry_after=RETRY_AFTER, state_poll_interval=60, hold_timeout=0),
        nodes=tuple(NodeConfig(name=name, port=port) for name, port in ports.items()),
    )


def record(node: str, role: str, epoch: int, state: str = "RUNNING", at: float = 1.0) -> NodeRecord:
    return NodeRecord(node=node, role=role, app_state=state, epoch=epoch, updated_at=at)


class ClusterHolder:
    """The view the router reads; tests replace it."""

    def __init__(self) -> None:
        self.view = ClusterView(None, {}, 0.0)

    def source(self) -> ClusterView:
        return replace(self.view, read_at=time.time())

    def active(self, holder: str, epoch: int, others: tuple[str, ...] = (), **kw: Any) -> None:
        nodes = {holder: record(holder, "active", epoch, **kw)}
        nodes |= {name: record(name, "standby", 0) for name in others}
        self.view = ClusterView(
            Lease.as_read(holder, epoch, time.time() + 600, time.time()), nodes, time.time()
        )


class ViewSource(Protocol):
    """What the router reads the cluster view from (a ClusterHolder or a module's own)."""

    def source(self) -> ClusterView: ...


class RouterThread:
    """A Router on its own event loop in a thread; tests talk to it with blocking clients."""

    def __init__(
        self,
        cfg: Config,
        cluster: ViewSource | Callable[[], ClusterView],
        limits: ProxyLimits | None = None,
        *,
        admin: bool = False,
        store: StateStore | None = None,
        timeout: float = 10,
    ) -> None:
        """``cluster``: a holder of the view or the function giving it; ``admin``: also
        serve the admin port (/metrics, /nodes) on a port of its own; ``timeout``: how
        long a call into the loop may take."""
        source = cluster if callable(cluster) else cluster.source
        self.router = Router(cfg, source, limits=limits, store=store)
        self.timeout = timeout
        self.loop = uvloop.new_event_loop()  # the loop `hakit router` runs on
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        where = ("127.0.0.1", 0) if admin else None
        _, self.port = self.call(self.router.start("127.0.0.1", 0, admin=where))
        self.admin_port = 0
        if admin:
            server = self.router.obs.admin
            assert server is not None and server.address is not None
            self.admin_port = server.address[1]

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout)

    def refresh(self) -> None:
        self.call(self.router.refresh())

    def down_marks(self) -> dict[str, float]:
        async def read() -> dict[str, float]:
            return self.router.down_marks

        return self.call(read())

    def client(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def close(self) -> None:
        if self.loop.is_closed():
            return  # closed by the test already
        try:
            self.call(self.router.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


@pytest.fixture
def cluster() -> ClusterHolder:
    return ClusterHolder()


@pytest.fixture
def router_for(cluster: ClusterHolder) -> Iterator[Callable[..., RouterThread]]:
    def start(cfg: Config, limits: ProxyLimits | None = None) -> RouterThread:
        return RouterThread(cfg, cluster, limits)

    yield from started_by(start, RouterThread.close)


def get(router: RouterThread, path: str = "/", **headers: str) -> tuple[int, dict[str, str], bytes]:
    conn = router.client()
    try:
        conn.request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def answered_by(body: bytes) -> str:
    return str(json.loads(body)["node"])


def raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` and read until the router closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    raise AssertionError("the router did not close the connection")


def refusing_socket() -> socket.socket:
    """A bound but not listening socket: connecting to its port is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


ROUTER_PROCESS = """
import asyncio, signal, sys, time
import uvloop
from hakit.config import Config
from hakit.coord.base import Lease, NodeRecord
from hakit.coord.view import ClusterView
from hakit.router import ProxyLimits, Router

cfg = Config.model_validate_json(sys.argv[1])
name = cfg.nodes[0].name

def view():
    now = time.time()
    return ClusterView(Lease.as_read(name, 1, now + 60, now), {name: NodeRecord(name, "active", "RUNNING", 1, now)}, now)

async def main():
    router = Router(cfg, view)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    _, port = await router.start("127.0.0.1", 0)
    print(port, flush=True)
    await stop.wait()
    await router.close()

uvloop.run(main())
"""


class PeakRss:
    """Samples a process's resident memory in a thread; ``peak`` is the highest seen."""

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def progress_when_stalled(read: Callable[[], int], total: int, timeout: float = 20) -> int:
    """Poll a producer's byte count until it reaches ``total`` or stops moving for 0.3 s."""
    last, last_change = read(), time.monotonic()
    deadline = last_change + timeout
    while time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
        if value >= total:
            return value
        if value != last:
            last, last_change = value, time.monotonic()
        elif time.monotonic() - last_change >= 0.3:
            return value
    raise AssertionError(f"the producer neither finished nor stalled within {timeout} s")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class SocketServer:
    """A raw TCP server on port 0 that hands each accepted connection to ``handle``
    (in the accept thread, or one thread per connection with ``threaded``); the
    connection is closed when ``handle`` returns. Set a subclass's attributes before
    calling ``__init__``: it starts accepting at once."""

    def __init__(self, threaded: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self._threaded = threaded
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            if self._threaded:
                threading.Thread(target=self._handle_and_close, args=(conn,), daemon=True).start()
            else:
                self._handle_and_close(conn)

    def _handle_and_close(self, conn: socket.socket) -> None:
        with conn:
            self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.sock.close()
        self._thread.join(5)


def read_head(conn: socket.socket, timeout: float = 10) -> tuple[bytes, bytes] | None:
    """Read a request head: (the head without its blank line, the bytes that followed it);
    None when the peer closed before the head ended."""
    conn.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest
