"""Planned and unplanned moves lose nothing, and the router says the truth when it must fail.

A real `hakit router` process reads the real SQLite coordination store, which the test
writes as the agents would (tests/support/router_process.py); the backends are real
processes, killed with real signals. Each backend logs every request it receives, so
a test can tell what reached which node, and how often.

- A request with a body sent while no node can take it is held, its body buffered
  up to ``router.hold_body_limit``, and delivered intact once a node serves.
- A body over the limit gets the 503 page at once, saying it was not processed.
- A POST whose node dies mid-request gets a 502 saying it may or may not have been
  saved, and is never sent to another node.
- The router publishes the requests it has in flight to each node, and whether it
  sees the node draining, so a switchover can wait for them (hakit.health.datapath.in_flight).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from hakit.health.datapath import in_flight
from hakit.router.pages import NOT_PROCESSED
from tests.support.router_process import BackendProcess, RouterProcess, wait_for

HOLD = "30s"  # longer than any client timeout below: a held answer means it waited for us
LIMIT = 64 * 1024  # router.hold_body_limit in these tests
CLIENT_TIMEOUT = 20.0
MAY_OR_MAY_NOT = "it may or may not have been saved: check before resending"

Answer = tuple[int, dict[str, str], bytes]


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, BackendProcess]]:
    started = {name: BackendProcess(name, tmp_path) for name in ("n1", "n2")}
    try:
        yield started
    finally:
        for backend in started.values():
            backend.stop()


def start_router(tmp_path: Path, mode: str, nodes: dict[str, BackendProcess]) -> RouterProcess:
    return RouterProcess(
        tmp_path, mode, list(nodes.values()), hold_timeout=HOLD, hold_body_limit="64KiB"
    )


@pytest.fixture
def routers() -> Iterator[list[RouterProcess]]:
    started: list[RouterProcess] = []
    try:
        yield started
    finally:
        for router in started:
            router.stop()


def request(
    router: RouterProcess, method: str, path: str, body: bytes | None = None, **headers: str
) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def body_of(size: int) -> bytes:
    """``size`` bytes that are not all alike: a lost, repeated or moved byte shows."""
    return os.urandom(size)


def posted(backend: BackendProcess, path: str) -> list[str]:
    """The lines ``backend`` logged for POSTs to ``path`` (head and body seen)."""
    return [line for line in backend.requests() if line.startswith(f"POST {path} ")]


def until_held(router: RouterProcess, answer: Future[Answer], count: int = 1) -> None:
    def held() -> bool:
        assert not answer.done(), f"answered instead of held: {answer.result()!r}"
        return router.held() >= count

    wait_for(held, "the request to be held")


# --- held through a move, delivered intact ---------------------------------------------


def test_post_with_a_body_is_held_then_delivered_intact(
    tmp_path: Path, nodes: dict[str, BackendProcess], routers: list[RouterProcess], pool
) -> None:
    router = start_router(tmp_path, "cold-standby", nodes)
    routers.append(router)
    router.store.standby("n1", "n2")  # nobody holds the lease: a failover in progress
    payload = body_of(10 * 1024)
    answer = pool.submit(request, router, "POST", "/echo", payload)
    until_held(router, answer)
    assert nodes["n1"].requests() == [] and nodes["n2"].requests() == []

    router.store.active("n1")  # the failover ends: n1 serves
    status, headers, body = answer.result(CLIENT_TIMEOUT)
    assert (status, headers["X-Node"]) == (200, "n1")
    assert body == payload  # byte for byte
    assert len(posted(nodes["n1"], "/echo")) == 2  # its head and its body, once
    assert router.held() == 0


def test_chunked_post_is_buffered_while_held(
    tmp_path: Path, nodes: dict[str, BackendProcess], routers: list[RouterProcess]
) -> None:
    router = start_router(tmp_path, "cold-standby", nodes)
    routers.append(router)
    router.store.standby("n1", "n2")
    pieces = [body_of(5000) for _ in range(8)]  # 40,000 bytes: under the limit
    with socket.create_connection(("127.0.0.1", router.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
            + b"0\r\n\r\n"
        )
        wait_for(lambda: router.held() == 1, "the request to be held")
        router.store.active("n1")
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"".join(pieces)


# --- too large to hold: the 503 page at once ----------------------------------------------


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_body_over_the_hold_limit_gets_the_503_page_at_once(
    tmp_path: Path, nodes: dict[str, BackendProcess], routers: list[RouterProcess]
) -> None:
    router = start_router(tmp_path, "cold-standby", nodes)
    routers.append(router)
    router.store.standby("n1", "n2")

    # By its Content-Length: answered before a byte of the body was sent.
    for accept in ("application/json", "text/html"):
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.sendall(
                b"POST /upload HTTP/1.1\r\nHost: app\r\nAccept: %s\r\n"
                b"Content-Length: %d\r\n\r\n" % (accept.encode(), LIMIT + 1)
            )
            answer = read_until_closed(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), head
        assert b"\r\nRetry-After: 7\r\n" in head
        if accept == "application/json":
            document = json.loads(body)
            assert document["processed"] is False and document["reason"] == "too_large"
            assert NOT_PROCESSED in document["message"]
        else:
            page = body.decode()
            assert NOT_PROCESSED in page and "64 KiB" in page
            assert "http-equiv" not in page  # a reload would not resend the form
            assert "safe" not in page  # no comforting claim the router cannot back

    # Chunked: held and buffered while it fits, answered the moment it grows past it.
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n" % (LIMIT - 100, body_of(LIMIT - 100))
        )
        wait_for(lambda: router.held() == 1, "the chunked request to be held")
        sock.sendall(b"%x\r\n%s\r\n" % (200, body_of(200)))
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert NOT_PROCESSED.encode() in answer
    assert router.held() == 0
    assert nodes["n1"].requests() == [] and nodes["n2"].requests() == []


def test_a_client_still_sending_its_too_large_body_gets_the_page_not_a_reset(
    tmp_path: Path, nodes: dict[str, BackendProcess], routers: list[RouterProcess]
) -> None:
    """The router answers before reading the body; the client, like curl, sends all of
    it before reading. Closing with unread bytes would reset the connection and lose the
    answer: the router lingers (up to LINGER_BYTES of the rest)."""
    router = start_router(tmp_path, "cold-standby", nodes)
    routers.append(router)
    router.store.standby("n1", "n2")
    size = 768 * 1024
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % size)
        time.sleep(0.2)  # the answer comes first: the order in which a reset would lose it
        try:
            sock.sendall(b"x" * size)
        except OSError as error:
            pytest.fail(f"the router reset the connection while the body was sent: {error}")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
    assert NOT_PROCESSED.encode() in answer
    assert nodes["n1"].requests() == [] and nodes["n2"].requests() == []


def test_held_out_post_says_it_was_not_processed(
    tmp_path: Path, nodes: dict[str, BackendProcess], routers: list[RouterProcess]
) -> None:
    router = RouterProcess(tmp_path, "cold-standby", list(nodes.values()), hold_timeout="300ms")
    routers.append(router)
    router.store.standby("n1", "n2")
    status, headers, body = request(router, "POST", "/form", b"title=hello")
    assert (status, headers["Retry-After"]) == (503, "7")
    page = body.decode()
    assert NOT_PROCESSED in page and "did not come back in time" in page
    assert "http-equiv" not in page and "safe" not in page
    # A GET is told the same, and its page reloads itself (which sends it again).
    status, _, body = request(router, "GET", "/page")
    assert status == 503 and 'http-equiv="refresh"' in body.decode()
    assert "not processed" in body.decode() and "safe" not in body.decode()


# --- a node killed mid-request: 502, never retried ---------------------------------------


def test_post_to_a_node_killed_mid_request_gets_502_and_is_not_retried(
    tmp_path: Path, nodes: dict[str, BackendProcess], routers: list[RouterProcess], pool
) -> None:
    router = start_router(tmp_path, "active-active", nodes)
    routers.append(router)
    router.store.serving("n1")
    router.store.serving("n2", "STARTING")  # not serving yet: the POST goes to n1
    wait_for(lambda: router.routable() == {"n1"}, "n1 alone to be routable")
    payload = body_of(10 * 1024)
    answer = pool.submit(request, router, "POST", "/hang", payload, Accept="application/json")
    wait_for(lambda: len(posted(nodes["n1"], "/hang")) == 2, "n1 to have the whole POST")

    # n2 serves now: a retry would find it at once.
    router.store.serving("n2")
    wait_for(lambda: router.routable() == {"n1", "n2"}, "n2 to be routable too")
    nodes["n1"].kill()  # SIGKILL mid-request: n1 had the POST and never answered

    status, _, body = answer.result(CLIENT_TIMEOUT)
    document = json.loads(body)
    assert (status, document["error"], document["processed"]) == (502, "bad_gateway", None)
    assert MAY_OR_MAY_NOT in document["message"]
    # The router has given the POST up: the next request goes to n2, the POST never did.
    status, headers, _ = request(router, "GET", "/after")
    assert (status, headers["X-Node"]) == (200, "n2")
    assert posted(nodes["n2"], "/hang") == []
    assert nodes["n2"].requests() == ["GET /after"]


def test_held_post_whose_node_dies_is_not_replayed_from_the_buffer(
    tmp_path: Path, nodes: dict[str, BackendProcess], routers: list[RouterProcess], pool
) -> None:
    router = start_router(tmp_path, "cold-standby", nodes)
    routers.append(router)
    router.store.standby("n1", "n2")
    payload = body_of(10 * 1024)
    answer = pool.submit(request, router, "POST", "/hang", payload)
    until_held(router, answer)  # buffered by the router
    router.store.active("n1")
    wait_for(lambda: len(posted(nodes["n1"], "/hang")) == 2, "n1 to have the whole POST")
    nodes["n1"].kill()
    router.store.active("n2")  # the failover

    status, _, body = answer.result(CLIENT_TIMEOUT)
    assert status == 502 and MAY_OR_MAY_NOT in body.decode()
    status, headers, _ = request(router, "GET", "/after")
    assert (status, headers["X-Node"]) == (200, "n2")
    assert posted(nodes["n2"], "/hang") == []


# --- requests in flight, published for drains --------------------------------------------


def test_report_shows_requests_in_flight_until_they_end(
    tmp_path: Path, nodes: dict[str, BackendProcess], routers: list[RouterProcess], pool
) -> None:
    router = start_router(tmp_path, "cold-standby", nodes)
    routers.append(router)
    store = router.store
    store.active("n1")
    name = f"127.0.0.1:{router.port}"
    fresh = 1.5  # three report periods of 0.5 s

    def sight(node: str) -> tuple[int, bool] | None:
        for report in store.reports():
            if report.router == name and time.time() - report.at <= fresh:
                seen = report.nodes[node]
                return seen.in_flight, seen.draining
        return None

    wait_for(lambda: sight("n1") == (0, False), "the router's first report")
    slow = pool.submit(request, router, "GET", "/slow")
    wait_for(lambda: sight("n1") == (1, False), "the request in flight to be published")
    assert not slow.done()

    # The switchover begins: n1 drains. New requests are held, the slow one goes on.
    store.active("n1", draining=True)
    wait_for(lambda: sight("n1") == (1, True), "the drain to be seen")
    assert in_flight("n1", store.reports(), time.time()) == (1, [name])
    waiting = pool.submit(request, router, "GET", "/new")
    until_held(router, waiting)

    # The slow request ends (released at n1 itself: the router sends n1 nothing new).
    direct = http.client.HTTPConnection("127.0.0.1", nodes["n1"].port, timeout=10)
    direct.request("GET", "/release")
    assert direct.getresponse().status == 200
    direct.close()
    assert slow.result(CLIENT_TIMEOUT)[0] == 200
    wait_for(
        lambda: in_flight("n1", store.reports(), time.time()) == (0, []),
        "the drain to be over",
    )

    store.active("n2")  # the switchover ends: the held request goes to n2
    status, headers, _ = waiting.result(CLIENT_TIMEOUT)
    assert (status, headers["X-Node"]) == (200, "n2")
    assert "GET /new" not in nodes["n1"].requests()
