"""Read timeouts of client connections: raw-socket cases, then slowhttptest against the router.

The router runs with one-second timeouts (its sweeper checks every 0.25 s, so
a timeout fires within 1-1.5 s). Every wait below is a deadline on a condition,
never a sleep that makes a test pass. slowhttptest (Debian package) runs are
bounded: a few seconds, 200 connections; while they run a normal client must
keep getting answers, and by their end the router must have closed the slow
connections itself (slowhttptest's own CSV says so, and the router's count of
open connections).
"""

from __future__ import annotations

import csv
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.config import Config
from hakit.router.http import LINGER_SECONDS
from tests.support.router_harness import (
    Backend,
    ClusterHolder,
    RouterThread,
    _Handler,
    make_config,
    wait_for,
)

TIMEOUT = 1.0  # header_timeout, body_idle_timeout and client_idle_timeout in these tests


SLOW_CONTINUE = 2.5 * TIMEOUT  # how long /slow-continue makes a client wait for its 100


class _StatusHandler(_Handler):
    """test_router's backend, plus the /status the router's health checks read."""

    def do_GET(self) -> None:
        if self.path == "/status":
            self._send(200, b'{"state": "RUNNING"}', (("Content-Type", "application/json"),))
        else:
            super().do_GET()

    def handle_expect_100(self) -> bool:
        if self.path == "/slow-continue":  # a backend slow to say "send your body"
            threading.Event().wait(SLOW_CONTINUE)
        return super().handle_expect_100()


def timeout_config(tmp_path: Path, port: int) -> Config:
    cfg = make_config(tmp_path, {"n1": port})
    timeouts = {
        "header_timeout": TIMEOUT,
        "body_idle_timeout": TIMEOUT,
        "client_idle_timeout": TIMEOUT,
    }
    return cfg.model_copy(update={"router": cfg.router.model_copy(update=timeouts)})


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Backend, RouterThread]]:
    backend = Backend("n1")
    backend.RequestHandlerClass = _StatusHandler
    backend.handle_error = lambda request, address: None  # type: ignore[method-assign]  # cut bodies
    cluster = ClusterHolder()
    cluster.active("n1", 1)
    try:
        router = RouterThread(timeout_config(tmp_path, backend.port), cluster, None)
    except BaseException:
        backend.stop()
        raise
    try:
        yield backend, router
    finally:
        router.close()
        backend.stop()


def read_until_closed(sock: socket.socket, deadline: float) -> tuple[bytes, float]:
    """Everything until the peer closes (by ``deadline``, else AssertionError); (data, when)."""
    chunks = []
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"still open; read so far: {b''.join(chunks)[:200]!r}") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return b"".join(chunks), time.monotonic()
        chunks.append(chunk)


def requests_seen(backend: Backend) -> list[str]:
    return [seen.path for seen in backend.seen if seen.path != "/status"]


# --- raw sockets ----------------------------------------------------------------------------


def test_silent_connection_is_closed_without_an_answer(setup) -> None:
    _, router = setup
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        start = time.monotonic()
        answer, closed_at = read_until_closed(sock, start + 10)
    assert answer == b""  # no 408 for a client that never asked anything (browser preconnects)
    assert closed_at - start >= TIMEOUT


def test_slowloris_head_gets_408_although_bytes_keep_coming(setup) -> None:
    backend, router = setup
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: app\r\n")
        answer = b""
        for index in range(100):  # a header line every 0.1 s: progress, but no end
            sock.settimeout(0.1)
            try:
                answer = sock.recv(65536)
                break
            except TimeoutError:
                pass
            try:
                sock.sendall(b"X-%d: y\r\n" % index)
            except (BrokenPipeError, ConnectionResetError):
                break
        rest, closed_at = read_until_closed(sock, time.monotonic() + 5)
    answer += rest
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert b"connection: close" in answer.lower()
    assert TIMEOUT <= closed_at - start < 10 * TIMEOUT
    assert requests_seen(backend) == []


def test_stalled_body_gets_408_and_the_backend_no_request(setup) -> None:
    backend, router = setup
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nabc")
        start = time.monotonic()
        answer, closed_at = read_until_closed(sock, start + 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert closed_at - start >= TIMEOUT
    assert requests_seen(backend) == []  # the backend never got a whole request


def test_slow_but_steady_body_is_not_cut(setup) -> None:
    _backend, router = setup
    body = b"0123456789"
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(b"POST /steady HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\n")
        start = time.monotonic()
        for byte in body:  # one byte every 0.2 s: 2 s in all, each gap under body_idle_timeout
            sock.sendall(bytes([byte]))
            time.sleep(0.2)  # the pace of a slow client, not a wait for the router
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = json.loads(response.read())
    assert time.monotonic() - start > 1.5 * TIMEOUT  # longer than any single timeout
    assert response.status == 200 and data["length"] == 10


def test_waiting_for_100_continue_is_not_a_stalled_body(setup) -> None:
    _backend, router = setup
    head = b"POST /slow-continue HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\n"
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(head + b"Content-Length: 5\r\n\r\n")
        start = time.monotonic()
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 "), interim[:100]
        assert time.monotonic() - start >= SLOW_CONTINUE  # longer than body_idle_timeout
        sock.sendall(b"hello")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200 and json.loads(response.read())["length"] == 5
    # Told to go on, a client that then sends nothing is a stalled body.
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(head.replace(b"/slow-continue", b"/fast") + b"Content-Length: 5\r\n\r\n")
        answer, _ = read_until_closed(sock, time.monotonic() + 10)
    assert answer.startswith(b"HTTP/1.1 100 ") and b"HTTP/1.1 408 " in answer, answer[:300]


def test_idle_keep_alive_connection_is_closed(setup) -> None:
    _, router = setup
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: app\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.read()
        assert response.status == 200 and not response.will_close
        idle_from = time.monotonic()
        answer, closed_at = read_until_closed(sock, idle_from + 10)
    assert answer == b""  # nothing owed: closed silently
    assert closed_at - idle_from >= TIMEOUT


# --- slowhttptest ---------------------------------------------------------------------------

SLOWHTTPTEST = shutil.which("slowhttptest")
CONNECTIONS = 200


def open_clients(router: RouterThread) -> int:
    async def count() -> int:
        return len(router.router.clients)

    return router.call(count())


def ask(port: int) -> tuple[int, float]:
    """One normal request over a new connection: its status and seconds."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/normal")
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - start
    finally:
        conn.close()


def start_slowhttptest(mode: str, port: int, prefix: Path, *extra: str) -> subprocess.Popen[bytes]:
    """Start it (bounded: -l seconds; ``finish_slowhttptest`` waits with a hard timeout)."""
    command = [
        SLOWHTTPTEST or "slowhttptest",
        mode,
        "-c",
        str(CONNECTIONS),
        "-r",
        str(CONNECTIONS),  # all connections in the first second
        "-l",
        "5",  # test length, seconds
        "-p",
        "2",
        "-u",
        f"http://127.0.0.1:{port}/",
        "-g",
        "-o",
        str(prefix),
        *extra,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_slowhttptest(
    process: subprocess.Popen[bytes], prefix: Path
) -> tuple[list[dict[str, int]], str]:
    """Its end (killed by its PID after 60 s): its per-second CSV rows and its output."""
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()  # the process this test started
        process.communicate()
        raise
    assert process.returncode == 0, stdout[-2000:] + stderr[-2000:]
    with open(f"{prefix}.csv") as file:
        rows = [{key: int(value) for key, value in row.items()} for row in csv.DictReader(file)]
    print("slowhttptest: " + "; ".join(f"{row}" for row in rows))
    return rows, stdout.decode(errors="replace")


@pytest.mark.skipif(SLOWHTTPTEST is None, reason="slowhttptest is not installed (Debian package)")
@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("-H", ("-i", "1")),  # slowloris: a header line every second, never the end
        ("-B", ("-i", "3", "-s", "100000")),  # slow body: a few bytes every 3 s
    ],
    ids=["slowloris", "slow-body"],
)
def test_slowhttptest_leaves_the_router_serving_others(
    setup, tmp_path: Path, mode: str, extra: tuple[str, ...]
) -> None:
    backend, router = setup
    prefix = tmp_path / "run"
    attack = start_slowhttptest(mode, router.port, prefix, *extra)
    answers: list[tuple[int, float, int]] = []  # status, seconds, slow connections still open
    try:
        # The attack holds its connections open (the router closes them after TIMEOUT)...
        wait_for(
            lambda: open_clients(router) >= CONNECTIONS * 0.5,
            "slowhttptest to hold its connections open",
            timeout=30,
        )
        # ...and meanwhile a normal client is answered, never waiting for a slow one: asked
        # at once, then again while they stay open (by order, not by time: at least once).
        while len(answers) < 10 and (not answers or answers[-1][2] >= CONNECTIONS * 0.5):
            status, seconds = ask(router.port)
            answers.append((status, seconds, open_clients(router)))
    finally:
        rows, output = finish_slowhttptest(attack, prefix)
    print(f"{mode}: normal client answers (status, seconds, slow connections open): {answers}")
    assert max(row["Connected"] for row in rows) >= CONNECTIONS * 0.5
    assert {status for status, _, _ in answers} == {200}
    assert max(seconds for _, seconds, _ in answers) < 2 * TIMEOUT
    # ...and the router closed the slow connections: slowhttptest stopped before its time
    # limit because none was left open (its last per-second row is written before that).
    assert "No open connections left" in output, output[-500:]
    assert rows[-1]["Closed"] >= CONNECTIONS * 0.5, rows[-1]
    # The router's side of the last ones may still be lingering after its 408 (it reads
    # what the client still sends, up to LINGER_SECONDS, before it closes): bounded wait.
    wait_for(
        lambda: open_clients(router) <= 1,  # at most the normal client's last connection
        "the router to close the slow connections",
        timeout=LINGER_SECONDS + 2 * TIMEOUT,
    )
    # No slow request ever reached the app whole: the slow bodies were POSTs, and the GETs
    # of / seen are slowhttptest's probe (-p) checking that the service stays available.
    assert not any(seen.method == "POST" for seen in backend.seen)
    assert requests_seen(backend).count("/") <= 5
