"""Upgrade tunnelling through the router: a real WebSocket echo, and a raw protocol.

Backends are real servers on port 0: the ``websockets`` library's threaded
server (echo), and a small socket server that answers an upgrade request with
``101`` and then speaks a line protocol of its own. Clients are the
``websockets`` client and raw sockets.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus

import pytest
import trustme
from websockets.asyncio.client import connect as ws_connect_async
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import Server, ServerConnection
from websockets.sync.server import serve as ws_serve

from tests.support.router_harness import (
    Backend,
    RouterThread,
    SocketServer,
    make_config,
    progress_when_stalled,
    read_head,
    wait_for,
)

BIG = 4 * 1024 * 1024


def router_state(router: RouterThread) -> tuple[int, int]:
    """(open client connections, open backend connections) as the router counts them."""

    async def read() -> tuple[int, int]:
        return len(router.router._clients), len(router.router.pool._open)

    return router.call(read())


# --- a WebSocket echo backend ------------------------------------------------------------


class EchoServer:
    """The websockets library's server: echoes every message; records how each closed."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, str]] = []
        self.closes: list[tuple[int | None, str | None]] = []
        self.lock = threading.Lock()
        self.server: Server = ws_serve(
            self._handle, "127.0.0.1", 0, max_size=2 * BIG, process_request=self._status
        )
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.socket.getsockname()[1])

    @staticmethod
    def _status(ws: ServerConnection, request: Request) -> Response | None:
        """``GET /status`` answers RUNNING (the app contract), for the router's checks."""
        if request.path != "/status":
            return None
        response = ws.respond(HTTPStatus.OK, '{"state": "RUNNING"}')
        response.headers["Content-Type"] = "application/json"
        return response

    def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        with self.lock:
            self.handshakes.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        try:
            for message in ws:
                if message == "close-from-server":
                    ws.close(4002, "server says bye")
                    break
                ws.send(message)
        except ConnectionClosed:
            pass
        received = ws.protocol.close_rcvd
        with self.lock:
            self.closes.append(
                (received.code, received.reason) if received is not None else (None, None)
            )

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.stop()


def test_websocket_echo_both_ways(tmp_path, echo, cluster, router_for) -> None:
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": echo.port}))
    url = f"ws://127.0.0.1:{router.port}/socket?x=1"
    with ws_connect(url, max_size=2 * BIG, open_timeout=10, close_timeout=10) as ws:
        for i in range(300):  # many small messages, text and binary, one at a time
            message: str | bytes = f"message {i}" if i % 2 else bytes([i % 256]) * (i + 1)
            ws.send(message)
            assert ws.recv(timeout=10) == message
        window = [f"pipelined {i}" for i in range(200)]  # many in flight both ways at once
        for message in window:
            ws.send(message)
        assert [ws.recv(timeout=10) for _ in window] == window
        big = bytes(range(256)) * (BIG // 256)  # larger than any buffer on the way
        ws.send(big)
        assert ws.recv(timeout=20) == big
        ws.close(4001, "client says bye")
    wait_for(lambda: echo.closes == [(4001, "client says bye")], "the close to reach the backend")
    handshake = echo.handshakes[0]
    assert handshake["upgrade"].lower() == "websocket"
    assert "upgrade" in handshake["connection"].lower()
    assert handshake["x-forwarded-for"] == "127.0.0.1"
    assert "sec-websocket-key" in handshake
    # Both connections of the tunnel are gone from the router's books.
    wait_for(lambda: router_state(router) == (0, 0), "the router to forget the tunnel")


def test_websocket_through_tls_termination(tmp_path, echo, cluster, router_for) -> None:
    """wss:// to the router, ws:// to the backend: the tunnel runs over the TLS transport.

    The client is websockets' asyncio one, not the sync one used elsewhere here:
    the sync client reads its socket in a thread while the caller's thread
    writes to it, and over TLS that is one OpenSSL connection used by two
    threads at once, which Python 3.11's ssl module does not serialise. With
    TLS 1.3 the server's session tickets arrive just as the client sends its
    upgrade request, and that request is sometimes lost (the test then hung
    until its 10 s open_timeout) or memory corrupted: about 1 connection in
    150 in a tight loop, against uvloop's and asyncio's TLS servers alike, so
    not a router bug. The asyncio client uses its socket from one thread.
    """
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "router.pem", tmp_path / "router.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    cfg = make_config(tmp_path, {"n1": echo.port})
    tls = cfg.router.model_copy(update={"tls_cert": cert_file, "tls_key": key_file})
    cluster.active("n1", 1)
    router = router_for(cfg.model_copy(update={"router": tls}))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    url = f"wss://127.0.0.1:{router.port}/secure"

    async def talk() -> None:
        async with ws_connect_async(
            url, ssl=client_context, max_size=2 * BIG, open_timeout=10, close_timeout=10
        ) as ws:
            for i in range(100):
                await ws.send(f"secret {i}")
                async with asyncio.timeout(10):
                    assert await ws.recv() == f"secret {i}"
            big = bytes(range(256)) * (BIG // 256)
            await ws.send(big)
            async with asyncio.timeout(20):
                assert await ws.recv() == big
            await ws.close(4003, "tls bye")

    asyncio.run(talk())
    wait_for(lambda: echo.closes == [(4003, "tls bye")], "the close to reach the backend")
    assert echo.handshakes[0]["x-forwarded-proto"] == "https"
    wait_for(lambda: router_state(router) == (0, 0), "the router to forget the tunnel")


def test_server_close_reaches_the_client(tmp_path, echo, cluster, router_for) -> None:
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": echo.port}))
    with ws_connect(f"ws://127.0.0.1:{router.port}/", open_timeout=10, close_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send("close-from-server")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4002, "server says bye")
    wait_for(lambda: router_state(router) == (0, 0), "the router to forget the tunnel")


def test_router_shutdown_closes_open_tunnels(tmp_path, echo, cluster, router_for) -> None:
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": echo.port}))
    with ws_connect(f"ws://127.0.0.1:{router.port}/", open_timeout=10, close_timeout=2) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        router.call(router.router.close())
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    wait_for(lambda: len(echo.closes) == 1, "the backend to see its connection end")


# --- a raw protocol behind Upgrade ---------------------------------------------------------


class LineProtocolServer(SocketServer):
    """Answers an upgrade to ``shout/1`` with 101, then upper-cases every line.

    On end of input it sends ``BYE`` and closes (so a client's half-close must
    arrive as one); a request for ``/flood`` gets an endless stream instead,
    counted in ``flooded``. Anything else gets a plain 426; ``GET /status``
    answers RUNNING (the app contract).
    """

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.flooded = 0
        self.stop_flood = threading.Event()
        super().__init__(threaded=True)

    def handle(self, conn: socket.socket) -> None:
        read = read_head(conn, timeout=20)
        if read is None:
            return
        head, rest = read
        if head.startswith(b"GET /status "):  # the router's health checks
            body = b'{"state": "RUNNING"}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        self.heads.append(head)
        lower = head.lower()
        if b"upgrade: shout/1" not in lower:
            conn.sendall(
                b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: shout/1\r\n"
                b"Connection: upgrade\r\nContent-Length: 7\r\n\r\nupgrade"
            )
            return
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: shout/1\r\n"
            b"Connection: Upgrade\r\nX-Shout: on\r\n\r\nHELLO\n"
        )
        if head.startswith(b"GET /flood "):
            self._flood(conn)
            return
        pending = rest
        for _ in range(100_000):  # bounded: one line or one read per turn
            if b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                conn.sendall(line.upper() + b"\n")
                continue
            chunk = conn.recv(65536)
            if not chunk:
                break
            pending += chunk
        conn.sendall(b"BYE\n")  # after the client's half-close: the other direction works

    def _flood(self, conn: socket.socket) -> None:
        block = b"z" * 65536
        try:
            while not self.stop_flood.is_set() and self.flooded < 512 * len(block):
                conn.sendall(block)
                self.flooded += len(block)
        except OSError:
            pass

    def stop(self) -> None:
        self.stop_flood.set()
        super().stop()


@pytest.fixture
def shout() -> Iterator[LineProtocolServer]:
    server = LineProtocolServer()
    try:
        yield server
    finally:
        server.stop()


def read_until(sock: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    data = b""
    while marker not in data and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_to_end(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError("the stream did not end")


UPGRADE = (
    b"GET /talk HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: shout/1\r\n\r\n"
)


def test_raw_upgrade_tunnel_with_half_close(tmp_path, shout, cluster, router_for) -> None:
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": shout.port}))
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        # Bytes of the new protocol right behind the head, in the same packet.
        sock.sendall(UPGRADE + b"first line\n")
        answer = read_until(sock, b"FIRST LINE\n")
        head, _, stream = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        lower = head.lower()
        assert b"upgrade: shout/1" in lower and b"connection: upgrade" in lower
        assert b"x-shout: on" in lower
        assert b"content-length" not in lower and b"transfer-encoding" not in lower
        assert stream.startswith(b"HELLO\n")
        for i in range(50):
            sock.sendall(b"line %d\n" % i)
            assert read_until(sock, b"\n") == b"LINE %d\n" % i
        sock.shutdown(socket.SHUT_WR)  # half-close: we send no more, but still read
        assert read_to_end(sock) == b"BYE\n"
    forwarded = shout.heads[0].lower()
    assert b"connection: upgrade" in forwarded and b"upgrade: shout/1" in forwarded
    assert b"keep-alive" not in forwarded  # only Upgrade is exempt from hop-by-hop stripping
    wait_for(lambda: router_state(router) == (0, 0), "the router to forget the tunnel")


def test_upgrade_refused_is_relayed_and_the_connection_closed(
    tmp_path, shout, cluster, router_for
) -> None:
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": shout.port}))
    request = UPGRADE.replace(b"shout/1", b"whisper/2")
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(request)
        answer = read_to_end(sock)  # ends: the router closes after a non-101 answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 426 ") and body == b"upgrade"
    assert b"connection: close" in head.lower()
    assert b"upgrade: whisper/2" in shout.heads[0].lower()


def test_upgrade_to_a_plain_http_backend_gets_its_answer(tmp_path, cluster, router_for) -> None:
    backend = Backend("n1")  # http.server ignores Upgrade and answers normally
    try:
        cluster.active("n1", 1)
        router = router_for(make_config(tmp_path, {"n1": backend.port}))
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.sendall(UPGRADE)
            answer = read_to_end(sock)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert backend.seen[0].header("Upgrade") == ["shout/1"]
    finally:
        backend.stop()


UPGRADE_BODIES = {
    "length": b"Content-Length: 5\r\n\r\nhello",
    "chunked": b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("body", UPGRADE_BODIES.values(), ids=UPGRADE_BODIES.keys())
def test_upgrade_request_with_a_body_is_rejected(
    tmp_path, shout, cluster, router_for, body
) -> None:
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": shout.port}))
    request = UPGRADE.replace(b"\r\n\r\n", b"\r\n" + body)
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(request)
        assert read_to_end(sock).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        # Pipelined behind a plain request: that one is answered, then the connection ends.
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: app\r\n\r\n" + request)
        answer = read_to_end(sock)
    assert answer.startswith(b"HTTP/1.1 426 ") and answer.count(b"HTTP/1.1 ") == 1
    assert not any(b"upgrade: shout/1" in head.lower() for head in shout.heads)  # never forwarded


def test_tunnel_backpressure_to_a_stalled_client(tmp_path, shout, cluster, router_for) -> None:
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": shout.port}))
    total = 512 * 65536
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(UPGRADE.replace(b"/talk", b"/flood"))
        assert read_until(sock, b"HELLO\n").startswith(b"HTTP/1.1 101 ")
        # We read nothing more: the router must stop reading the backend, not buffer it.
        stalled = progress_when_stalled(lambda: shout.flooded, total)
        assert stalled < 16 * 1024 * 1024, f"backend pushed {stalled >> 20} MiB into the tunnel"
        received = 0
        deadline = time.monotonic() + 20
        while received < stalled and time.monotonic() < deadline:
            received += len(sock.recv(1 << 20))
        assert received >= stalled - 65536  # everything written arrives once we read again
    shout.stop_flood.set()
