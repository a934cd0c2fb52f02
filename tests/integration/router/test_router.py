"""The router against real HTTP backends over real sockets (tests/support/router_harness.py)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from hakit.config import Mode
from hakit.coord.base import Lease
from hakit.coord.view import ClusterView
from hakit.router import ProxyLimits
from tests.support.router_harness import (
    BLOCK,
    RETRY_AFTER,
    ROUTER_PROCESS,
    Backend,
    ClusterHolder,
    PeakRss,
    answered_by,
    get,
    make_config,
    progress_when_stalled,
    raw,
    record,
    refusing_socket,
)

# --- choice of backend ----------------------------------------------------------------


def test_forwards_only_to_the_lease_holder(tmp_path, backends, cluster, router_for) -> None:
    n1, n2 = backends("n1"), backends("n2")
    cluster.active("n1", 3, others=("n2",))  # n2 runs too (warm) but is a standby
    router = router_for(make_config(tmp_path, {"n1": n1.port, "n2": n2.port}, Mode.WARM_STANDBY))
    for _ in range(5):
        status, _, body = get(router)
        assert (status, answered_by(body)) == (200, "n1")
    assert len(n1.seen) == 5 and n2.seen == []


def test_lease_switch_moves_the_next_request(tmp_path, backends, cluster, router_for) -> None:
    n1, n2 = backends("n1"), backends("n2")
    cluster.active("n1", 1, others=("n2",))
    router = router_for(make_config(tmp_path, {"n1": n1.port, "n2": n2.port}))
    conn = router.client()
    try:
        conn.request("GET", "/")
        assert answered_by(conn.getresponse().read()) == "n1"
        cluster.active("n2", 2, others=("n1",))
        router.refresh()
        conn.request("GET", "/")  # same client connection: the choice is per request
        assert answered_by(conn.getresponse().read()) == "n2"
    finally:
        conn.close()


NOBODY_MAY_SERVE: dict[str, Callable[[ClusterHolder], None]] = {
    "no lease": lambda c: setattr(
        c, "view", ClusterView(None, {"n1": record("n1", "active", 1)}, 0)
    ),
    "lease expired": lambda c: setattr(
        c,
        "view",
        ClusterView(
            Lease.as_read("n1", 1, time.time() - 1, time.time()),
            {"n1": record("n1", "active", 1)},
            0,
        ),
    ),
    "holder starting": lambda c: c.active("n1", 1, state="STARTING"),
    "holder in maintenance": lambda c: c.active("n1", 1, state="MAINTENANCE"),
    "holder in error": lambda c: c.active("n1", 1, state="ERROR"),
    "epoch mismatch": lambda c: setattr(
        c,
        "view",
        ClusterView(
            Lease.as_read("n1", 2, time.time() + 600, time.time()),
            {"n1": record("n1", "active", 1)},
            0,
        ),
    ),
}


@pytest.mark.parametrize("situation", NOBODY_MAY_SERVE.values(), ids=NOBODY_MAY_SERVE.keys())
def test_maintenance_page_when_nobody_may_serve(
    tmp_path, backends, cluster, router_for, situation
) -> None:
    n1 = backends("n1")
    situation(cluster)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    status, headers, body = get(router, Accept="text/html,*/*;q=0.8")
    assert status == 503
    assert headers["Retry-After"] == str(RETRY_AFTER)
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert page.startswith("<!DOCTYPE html>") and 'http-equiv="refresh"' in page
    assert "switched over or maintained" in page
    assert "src=" not in page and "href=" not in page and "@import" not in page  # self-contained
    assert n1.seen == []


def test_maintenance_page_as_json_for_api_clients(tmp_path, backends, cluster, router_for) -> None:
    n1 = backends("n1")
    router = router_for(make_config(tmp_path, {"n1": n1.port}))  # no lease at all
    status, headers, body = get(router, Accept="application/json")
    assert (status, headers["Content-Type"]) == (503, "application/json")
    assert headers["Retry-After"] == str(RETRY_AFTER)
    assert json.loads(body)["error"] == "unavailable"
    # A HEAD gets the same answer without the body, and the connection stays usable.
    conn = router.client()
    try:
        conn.request("HEAD", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (503, b"")
        conn.request("GET", "/", headers={"Accept": "application/json"})
        assert conn.getresponse().status == 503
    finally:
        conn.close()


# --- passive failure detection ------------------------------------------------------


def test_refused_node_is_marked_down_until_its_record_changes(
    tmp_path, backends, cluster, router_for
) -> None:
    sock = refusing_socket()
    n1: Backend | None = None
    try:
        cluster.active("n1", 1)
        router = router_for(make_config(tmp_path, {"n1": sock.getsockname()[1]}))
        conn = router.client()
        try:
            conn.request("POST", "/", body=b"x")
            assert conn.getresponse().status == 502  # not idempotent: a plain failure
        finally:
            conn.close()
        assert set(router.down_marks()) == {"n1"}
        status, headers, _ = get(router, Accept="application/json")
        assert (status, headers["Retry-After"]) == (
            503,
            str(RETRY_AFTER),
        )  # known down: maintenance

        n1 = Backend("n1", sock)  # the app is back on the same port, but the record is unchanged
        router.refresh()
        assert get(router)[0] == 503 and n1.seen == []  # still marked: not tried

        cluster.active("n1", 1, at=2.0)  # the agent republished its record
        router.refresh()
        status, _, body = get(router)
        assert (status, answered_by(body)) == (200, "n1")
        assert router.down_marks() == {}
    finally:
        if n1 is not None:
            n1.stop()
        else:
            sock.close()


def test_down_mark_ages_out_even_if_the_record_never_changes(tmp_path, cluster, router_for) -> None:
    sock = refusing_socket()
    try:
        cluster.active("n1", 1)
        cfg = make_config(tmp_path, {"n1": sock.getsockname()[1]})
        router = router_for(cfg, ProxyLimits(down_mark_max_age=0.0))
        assert get(router)[0] == 503
        assert set(router.down_marks()) == {"n1"}
        router.refresh()  # same record, but the mark is older than its maximum age
        assert router.down_marks() == {}
    finally:
        sock.close()


def test_active_active_skips_a_refused_node(tmp_path, backends, cluster, router_for) -> None:
    sock = refusing_socket()
    try:
        n2 = backends("n2")
        cluster.view = ClusterView(
            None, {"n1": record("n1", "active", 0), "n2": record("n2", "active", 0)}, 0
        )
        cfg = make_config(
            tmp_path, {"n1": sock.getsockname()[1], "n2": n2.port}, Mode.ACTIVE_ACTIVE
        )
        router = router_for(cfg)
        for _ in range(4):
            status, _, body = get(router)
            assert (status, answered_by(body)) == (200, "n2")
        conn = router.client()
        try:  # a refused connect sent nothing: even a POST moves on to the other node
            conn.request("POST", "/", body=b"payload")
            assert answered_by(conn.getresponse().read()) == "n2"
        finally:
            conn.close()
        assert set(router.down_marks()) == {"n1"}
    finally:
        sock.close()


# --- connections and headers --------------------------------------------------------


def test_keep_alive_on_both_sides(tmp_path, backends, cluster, router_for) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    for _ in range(2):  # two client connections one after the other
        conn = router.client()
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            client_socket = conn.sock
            for _ in range(4):
                conn.request("GET", "/")
                response = conn.getresponse()
                assert response.status == 200 and not response.will_close
                response.read()
                assert conn.sock is client_socket  # http.client did not reconnect
        finally:
            conn.close()
    assert len(n1.seen) == 10
    assert n1.connections == 1  # one backend connection, kept in the pool across clients


def test_forwarded_headers(tmp_path, backends, cluster, router_for) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    headers = {
        "Host": "jira.example:8443",
        "X-Forwarded-For": "10.1.2.3",
        "X-Forwarded-Proto": "https",
    }
    status, _, _ = get(router, **headers)
    assert status == 200
    seen = n1.seen[-1]
    # 127.0.0.1 is not in router.trusted_proxies: what it claims is replaced.
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("X-Forwarded-Proto") == ["http"]
    assert seen.header("X-Forwarded-Host") == ["jira.example:8443"]
    assert seen.header("Host") == ["jira.example:8443"]  # the app builds its URLs from it
    # From a trusted proxy they are extended (For) or kept (Proto); see tests/unit/router/test_headers.py.
    cfg = make_config(tmp_path, {"n1": n1.port})
    trusting = cfg.model_copy(
        update={"router": cfg.router.model_copy(update={"trusted_proxies": ("127.0.0.0/8",)})}
    )
    assert get(router_for(trusting), **headers)[0] == 200
    seen = n1.seen[-1]
    assert seen.header("X-Forwarded-For") == ["10.1.2.3, 127.0.0.1"]
    assert seen.header("X-Forwarded-Proto") == ["https"]


def test_hop_by_hop_headers_are_stripped(tmp_path, backends, cluster, router_for) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    request = (
        b"GET /hop HTTP/1.1\r\nHost: app\r\n"
        b"Connection: close, X-Hop, Cookie, Authorization\r\n"
        b"X-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\nUpgrade: h2c\r\nTrailer: X-T\r\n"
        b"Cookie: JSESSIONID=abc.n1\r\nAuthorization: Basic dTpw\r\nX-End-To-End: kept\r\n\r\n"
    )
    answer = raw(router.port, request)  # returns once the router closed: Connection: close honoured
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b"hop"
    response_headers = head.lower()
    assert b"connection: close" in response_headers
    assert b"x-internal" not in response_headers and b"keep-alive" not in response_headers
    seen = n1.seen[-1]
    names = {name.lower() for name, _ in seen.headers}
    for hop in (
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "trailer",
    ):
        assert hop not in names, hop
    assert seen.header("Cookie") == ["JSESSIONID=abc.n1"]
    assert seen.header("Authorization") == ["Basic dTpw"]
    assert seen.header("X-End-To-End") == ["kept"]
    # The client's "close" was for its own connection: the backend connection is reused.
    assert get(router)[0] == 200
    assert n1.connections == 1


def test_pipelined_requests_are_answered_in_order(tmp_path, backends, cluster, router_for) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    requests = b"".join(
        b"GET /%d HTTP/1.1\r\nHost: app\r\n%s\r\n"
        % (i, b"Connection: close\r\n" if i == 3 else b"")
        for i in range(1, 4)
    )
    answer = raw(router.port, requests)
    paths = [
        json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["path"]
        for part in answer.split(b"HTTP/1.1 200 OK")[1:]
    ]
    assert paths == ["/1", "/2", "/3"]


class ClosingKeepAliveBackend:
    """Answers the first request on each connection, then closes on reading the next.

    What a backend whose keep-alive timeout fires just as the router reuses the
    connection looks like: the request was written, no answer ever comes.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            for answered in (True, False):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                if answered:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")

    def stop(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)
        self._listener.close()


def test_stale_pooled_connection_is_retried_only_when_safe(tmp_path, cluster, router_for) -> None:
    backend = ClosingKeepAliveBackend()
    try:
        cluster.active("n1", 1)
        router = router_for(make_config(tmp_path, {"n1": backend.port}))
        assert get(router)[2] == b"fresh"  # opens a connection, which goes to the pool
        status, _, body = get(router)  # reused, closed unanswered: repeated on a new one
        assert (status, body) == (200, b"fresh")
        assert backend.connections == 2
        conn = router.client()
        try:  # a POST may have been processed: never repeated, reported as 502
            conn.request("POST", "/", body=b"once")
            assert conn.getresponse().status == 502
        finally:
            conn.close()
        assert backend.connections == 2
        assert router.down_marks() == {}  # the node answered connects: not down
    finally:
        backend.stop()


def test_expect_100_continue_is_relayed(tmp_path, backends, cluster, router_for) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = b""
        for _ in range(100):  # bounded: until the interim head is complete
            if b"\r\n\r\n" in interim:
                break
            interim += sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"hello")
        answer = interim.split(b"\r\n\r\n", 1)[1]
        for _ in range(100):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert (
        json.loads(answer.split(b"\r\n\r\n", 1)[1])["sha256"]
        == hashlib.sha256(b"hello").hexdigest()
    )


# --- bodies and framing ---------------------------------------------------------------


def test_post_body_arrives_intact(tmp_path, backends, cluster, router_for) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    body = os.urandom(3 * 1024 * 1024 + 17)
    conn = router.client()
    try:
        conn.request(
            "POST", "/records", body=body, headers={"Content-Type": "application/octet-stream"}
        )
        answer = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    assert answer["length"] == len(body)


def test_chunked_request_body(tmp_path, backends, cluster, router_for) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    pieces = [b"first,", os.urandom(100_000), b"", b"last"]  # http.client skips the empty one
    conn = router.client()
    try:
        conn.request("POST", "/upload", body=iter(pieces), encode_chunked=True)
        answer = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert answer["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert n1.seen[-1].header("Transfer-Encoding") == ["chunked"]


def test_chunked_response(tmp_path, backends, cluster, router_for) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    status, headers, body = get(router, "/chunked")
    assert (status, headers.get("Transfer-Encoding"), body) == (200, "chunked", b"alpha-beta-n1")
    # An HTTP/1.0 client cannot read chunked: it gets the body ended by the close.
    answer = raw(router.port, b"GET /chunked HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and body == b"alpha-beta-n1"


def test_close_delimited_response_is_rechunked(tmp_path, backends, cluster, router_for) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    conn = router.client()
    try:
        conn.request("GET", "/close-delimited")
        response = conn.getresponse()
        assert response.getheader("Transfer-Encoding") == "chunked" and not response.will_close
        assert response.read() == b"until-close-n1"
        client_socket = conn.sock
        conn.request("GET", "/")  # the client connection survived the backend's close
        assert conn.getresponse().status == 200 and conn.sock is client_socket
    finally:
        conn.close()


def test_head_and_no_content_responses_keep_framing(
    tmp_path, backends, cluster, router_for
) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    conn = router.client()
    try:
        conn.request("HEAD", "/anything")
        response = conn.getresponse()
        assert (response.status, response.getheader("Content-Length")) == (200, "12")
        assert response.read() == b""
        conn.request("GET", "/nocontent")
        response = conn.getresponse()
        assert (response.status, response.read()) == (204, b"")
        conn.request("GET", "/after")  # no stray bytes left on either connection
        assert json.loads(conn.getresponse().read())["path"] == "/after"
    finally:
        conn.close()
    assert n1.connections == 1


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: app\r\nBad Header\r\n\r\n", 400),
        (b"NOT-HTTP\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Many: b\r\n" * 8000 + b"\r\n", 431),
    ],
    ids=[
        "bad header",
        "not http",
        "no host",
        "two hosts",
        "cl+te",
        "two lengths",
        "huge header",
        "many headers",
    ],
)
def test_malformed_request_is_rejected_and_never_forwarded(
    tmp_path, backends, cluster, router_for, request_bytes, status
) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    answer = raw(router.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:100]
    assert b"connection: close" in answer.lower()
    assert n1.seen == [] and n1.connections == 0


def test_backend_dying_mid_response_closes_the_client(
    tmp_path, backends, cluster, router_for
) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    conn = router.client()
    try:
        conn.request("GET", "/die")
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        conn.close()
    assert get(router)[0] == 200  # the router itself carries on


# --- streaming with bounded memory (router in its own process) ------------------------


@pytest.fixture
def router_process(tmp_path: Path, backends) -> Iterator[tuple[int, psutil.Process, Backend]]:
    n1 = backends("n1")
    cfg = make_config(tmp_path, {"n1": n1.port})
    proc = subprocess.Popen(
        [sys.executable, "-c", ROUTER_PROCESS, cfg.model_dump_json()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the router prints its port once listening
        assert line.strip().isdigit(), f"router process did not start (exit {proc.poll()})"
        yield int(line), psutil.Process(proc.pid), n1
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


SIZE = 200 * len(BLOCK)
# Kernel socket buffers on both sides of the router hold some MiB; a router
# buffering the stream in memory would let the producer run to 200 MiB.
STALLED_AT_MOST = 64 * 1024 * 1024
RSS_GROWTH_AT_MOST = 32 * 1024 * 1024


def test_200mb_download_to_a_stalled_client_is_not_buffered(router_process) -> None:
    port, process, n1 = router_process
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/warm-up")
        assert conn.getresponse().read()
        baseline = process.memory_info().rss
        with PeakRss(process) as rss:
            conn.request("GET", f"/download?size={SIZE}")
            response = conn.getresponse()  # the head only: the body waits unread
            stalled = progress_when_stalled(lambda: n1.progress, SIZE)
            assert stalled < STALLED_AT_MOST, (
                f"backend wrote {stalled >> 20} MiB into a stalled client"
            )
            received, first = 0, b""
            for _ in range(SIZE):  # bounded: each read returns at least one byte
                data = response.read(1 << 20)
                if not data:
                    break
                first = first or data[:1024]
                received += len(data)
    finally:
        conn.close()
    assert received == SIZE and first == BLOCK[:1024]
    growth = rss.peak - baseline
    assert growth < RSS_GROWTH_AT_MOST, f"router RSS grew by {growth >> 20} MiB"


def test_200mb_upload_to_a_stalled_backend_is_not_buffered(router_process) -> None:
    port, process, n1 = router_process
    sent = 0
    answer: dict[str, Any] = {}

    def blocks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(200):
            yield BLOCK
            sent += len(BLOCK)

    def upload() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            headers = {"Content-Length": str(SIZE)}
            conn.request("POST", "/upload-held", body=blocks(), headers=headers)
            answer.update(json.loads(conn.getresponse().read()))
        finally:
            conn.close()

    warm = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        warm.request("GET", "/warm-up")
        assert warm.getresponse().read()
    finally:
        warm.close()
    baseline = process.memory_info().rss
    client = threading.Thread(target=upload, daemon=True)
    try:
        with PeakRss(process) as rss:
            client.start()
            stalled = progress_when_stalled(lambda: sent, SIZE)
            assert stalled < STALLED_AT_MOST, (
                f"client sent {stalled >> 20} MiB to a stalled backend"
            )
            n1.release.set()
            client.join(30)
    finally:
        n1.release.set()
        client.join(30)
    expected = hashlib.sha256()
    for _ in range(200):
        expected.update(BLOCK)
    assert (answer["length"], answer["sha256"]) == (SIZE, expected.hexdigest())
    growth = rss.peak - baseline
    assert growth < RSS_GROWTH_AT_MOST, f"router RSS grew by {growth >> 20} MiB"
