"""Failover without user-visible errors: held requests, retries, response timeout.

Real backends (threaded http.server, tests/support/router_harness.py) and real sockets; the
cluster view is changed by hand and ``router.refresh()`` applies it, which is
what wakes held requests (no polling).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from hakit.config import Config, Mode
from hakit.coord.view import ClusterView
from hakit.router import ProxyLimits
from tests.support.router_harness import (
    ClusterHolder,
    RouterThread,
    SocketServer,
    answered_by,
    make_config,
    read_head,
    record,
    refusing_socket,
)

LONG_HOLD = 30.0  # longer than any client timeout below: a held answer means it waited for us


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def holding(cfg: Config, hold_timeout: float) -> Config:
    router = cfg.router.model_copy(update={"hold_timeout": hold_timeout})
    return cfg.model_copy(update={"router": router})


def config(tmp_path: Any, ports: dict[str, int], mode: Mode = Mode.COLD_STANDBY) -> Config:
    """make_config without the router's own /status checks: these backends do not
    implement the contract's /status, and what is tested here is the view and
    passive failures (the checks are tested in test_checks.py)."""
    cfg = make_config(tmp_path, ports, mode)
    router = cfg.router.model_copy(update={"check_interval": 3600.0})
    return cfg.model_copy(update={"router": router})


Answer = tuple[int, dict[str, str], bytes]


def request(
    router: RouterThread, method: str = "GET", body: bytes | None = None, **headers: str
) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=15)
    try:
        conn.request(method, "/held", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def held_count(router: RouterThread) -> int:
    """Requests waiting in the router for a node now (Router.requests_held, read in its loop)."""

    async def read() -> int:
        return router.router.requests_held

    return router.call(read())


def wait_until_held(router: RouterThread, answer: Future[Any], count: int = 1) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert not answer.done(), f"answered instead of held: {answer.result()!r}"
        if held_count(router) >= count:
            return
        time.sleep(0.01)
    raise AssertionError("the request was not held")


def no_lease(cluster: ClusterHolder) -> None:
    cluster.view = ClusterView(None, {"n1": record("n1", "standby", 0)}, 0)


# --- holding while no node can serve ------------------------------------------------


def test_get_is_held_until_a_node_can_serve(tmp_path, backends, cluster, router_for, pool) -> None:
    n1 = backends("n1")
    no_lease(cluster)
    router = router_for(holding(config(tmp_path, {"n1": n1.port}), LONG_HOLD))
    answer = pool.submit(request, router)
    wait_until_held(router, answer)
    assert n1.seen == []
    cluster.active("n1", 1)  # the failover finished
    router.refresh()
    status, _, body = answer.result(15)
    assert (status, answered_by(body)) == (200, "n1")
    assert held_count(router) == 0


def test_held_request_gets_the_maintenance_page_after_the_hold(
    tmp_path, backends, cluster, router_for
) -> None:
    n1 = backends("n1")
    no_lease(cluster)
    router = router_for(holding(config(tmp_path, {"n1": n1.port}), 0.5))
    started = time.monotonic()
    status, headers, body = request(router, Accept="application/json")
    waited = time.monotonic() - started
    assert status == 503 and json.loads(body)["error"] == "unavailable"
    assert "Retry-After" in headers
    assert waited >= 0.5  # it did wait the hold out (a lower bound, not a speed claim)
    assert n1.seen == []


def test_view_changes_that_do_not_help_keep_the_request_held(
    tmp_path, backends, cluster, router_for, pool
) -> None:
    n1 = backends("n1")
    no_lease(cluster)
    router = router_for(holding(config(tmp_path, {"n1": n1.port}), LONG_HOLD))
    answer = pool.submit(request, router)
    wait_until_held(router, answer)
    cluster.active("n1", 1, state="STARTING")  # a change, but still nobody to serve
    router.refresh()
    wait_until_held(router, answer)  # woke, looked, went back to waiting
    cluster.active("n1", 1, state="RUNNING", at=2.0)
    router.refresh()
    assert answer.result(15)[0] == 200


def test_post_with_a_body_is_held_and_forwarded_whole(
    tmp_path, backends, cluster, router_for, pool
) -> None:
    n1 = backends("n1")
    no_lease(cluster)
    router = router_for(holding(config(tmp_path, {"n1": n1.port}), LONG_HOLD))
    answer = pool.submit(request, router, "POST", b"payload")
    wait_until_held(router, answer)
    cluster.active("n1", 1)
    router.refresh()
    status, _, body = answer.result(15)
    assert (status, json.loads(body)["length"]) == (200, 7)
    assert [seen.method for seen in n1.seen] == ["POST"]


def test_post_over_the_hold_body_limit_is_answered_at_once(
    tmp_path, backends, cluster, router_for
) -> None:
    n1 = backends("n1")
    no_lease(cluster)
    cfg = holding(config(tmp_path, {"n1": n1.port}), LONG_HOLD)
    cfg = cfg.model_copy(update={"router": cfg.router.model_copy(update={"hold_body_limit": 4})})
    router = router_for(cfg)
    status, headers, body = request(router, "POST", b"payload", Accept="application/json")
    assert status == 503 and "Retry-After" in headers  # a held one would time out
    document = json.loads(body)
    assert (document["reason"], document["processed"]) == ("too_large", False)
    assert held_count(router) == 0 and n1.seen == []


def test_held_body_that_stalls_gets_408_and_ends_its_hold(
    tmp_path, backends, cluster, router_for
) -> None:
    n1 = backends("n1")
    no_lease(cluster)
    cfg = holding(config(tmp_path, {"n1": n1.port}), LONG_HOLD)
    router = router_for(cfg, ProxyLimits(body_idle_timeout=0.3))
    with socket.create_connection(("127.0.0.1", router.port), timeout=15) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nhalf")
        deadline = time.monotonic() + 10
        while held_count(router) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held_count(router) == 1
        answer = b""
        while chunk := sock.recv(65536):  # the body idle timeout still applies while held
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ")
    deadline = time.monotonic() + 10
    while held_count(router) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held_count(router) == 0
    cluster.active("n1", 1)
    router.refresh()
    assert request(router)[0] == 200
    assert [seen.method for seen in n1.seen] == ["GET"]  # the broken POST was never sent


def test_post_without_a_body_is_held(tmp_path, backends, cluster, router_for, pool) -> None:
    n1 = backends("n1")
    no_lease(cluster)
    router = router_for(holding(config(tmp_path, {"n1": n1.port}), LONG_HOLD))
    answer = pool.submit(request, router, "POST", b"")  # Content-Length: 0
    wait_until_held(router, answer)
    cluster.active("n1", 1)
    router.refresh()
    status, _, body = answer.result(15)
    assert (status, json.loads(body)["length"]) == (200, 0)
    assert n1.seen[0].method == "POST" and n1.seen[0].header("Content-Length") == ["0"]


def test_expect_continue_post_is_held_before_its_body(
    tmp_path, backends, cluster, router_for
) -> None:
    n1 = backends("n1")
    no_lease(cluster)
    router = router_for(holding(config(tmp_path, {"n1": n1.port}), LONG_HOLD))
    with socket.create_connection(("127.0.0.1", router.port), timeout=15) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        deadline = time.monotonic() + 10
        while held_count(router) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held_count(router) == 1
        cluster.active("n1", 1)
        router.refresh()
        interim = b""
        while b"\r\n\r\n" not in interim and len(interim) < 65536:
            interim += sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")  # from the backend, relayed
        sock.sendall(b"hello")
        answer = interim.partition(b"\r\n\r\n")[2]
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["length"] == 5


def test_expect_continue_post_over_the_hold_body_limit_is_held_too(
    tmp_path, backends, cluster, router_for
) -> None:
    """Its client waits for 100 Continue: nothing to buffer, so its size does not matter."""
    n1 = backends("n1")
    no_lease(cluster)
    cfg = holding(config(tmp_path, {"n1": n1.port}), LONG_HOLD)
    cfg = cfg.model_copy(update={"router": cfg.router.model_copy(update={"hold_body_limit": 4})})
    router = router_for(cfg)
    with socket.create_connection(("127.0.0.1", router.port), timeout=15) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        deadline = time.monotonic() + 10
        while held_count(router) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held_count(router) == 1
        sock.sendall(b"hello")  # sent without waiting, as curl does after a second
        cluster.active("n1", 1)
        router.refresh()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    final = answer.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")  # the backend's, relayed
    assert final.startswith(b"HTTP/1.1 200 ")
    assert json.loads(final.partition(b"\r\n\r\n")[2])["length"] == 5


def test_client_leaving_ends_its_hold(tmp_path, backends, cluster, router_for) -> None:
    n1 = backends("n1")
    no_lease(cluster)
    router = router_for(holding(config(tmp_path, {"n1": n1.port}), LONG_HOLD))
    with socket.create_connection(("127.0.0.1", router.port), timeout=15) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        deadline = time.monotonic() + 10
        while held_count(router) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held_count(router) == 1
    deadline = time.monotonic() + 10
    while held_count(router) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held_count(router) == 0
    cluster.active("n1", 1)
    router.refresh()
    assert request(router)[0] == 200
    assert len(n1.seen) == 1  # the abandoned request was never sent


# --- a node that fails: retry elsewhere, or hold until it is back ------------------------


def test_refused_connect_holds_until_the_node_is_back(
    tmp_path, backends, cluster, router_for, pool
) -> None:
    sock = refusing_socket()  # the app is down: its port refuses connections
    cluster.active("n1", 1)
    cfg = holding(config(tmp_path, {"n1": sock.getsockname()[1]}), LONG_HOLD)
    router = router_for(cfg)
    answer = pool.submit(request, router)
    wait_until_held(router, answer)
    backends("n1", sock)  # restarted on the same port ...
    cluster.active("n1", 1, at=2.0)  # ... and its agent published the new state
    router.refresh()
    status, _, body = answer.result(15)
    assert (status, answered_by(body)) == (200, "n1")


def test_refused_connect_holds_until_another_node_takes_over(
    tmp_path, backends, cluster, router_for, pool
) -> None:
    sock = refusing_socket()
    try:
        n2 = backends("n2")
        cluster.active("n1", 1, others=("n2",))
        ports = {"n1": sock.getsockname()[1], "n2": n2.port}
        router = router_for(holding(config(tmp_path, ports), LONG_HOLD))
        answers = [pool.submit(request, router, method) for method in ("GET", "HEAD")]
        for answer in answers:
            wait_until_held(router, answer, count=2)
        cluster.active("n2", 2, others=("n1",))  # failover: n2 holds the lease now
        router.refresh()
        status, _, body = answers[0].result(15)
        assert (status, answered_by(body)) == (200, "n2")
        status, headers, _ = answers[1].result(15)
        assert (status, headers["X-Node"]) == (200, "n2")
    finally:
        sock.close()


class DroppingServer(SocketServer):
    """Accepts, reads a request head, closes without answering (a node dying mid-request)."""

    def __init__(self) -> None:
        self.dropped = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        read = read_head(conn)
        if read is None or not read[0].startswith(b"GET /status "):  # checks are not counted
            self.dropped += 1


@pytest.fixture
def dropping() -> Iterator[DroppingServer]:
    server = DroppingServer()
    try:
        yield server
    finally:
        server.stop()


def test_unanswered_safe_request_is_retried_on_another_node(
    tmp_path, backends, cluster, router_for, dropping
) -> None:
    n2 = backends("n2")
    cluster.view = ClusterView(
        None, {"n1": record("n1", "active", 0), "n2": record("n2", "active", 0)}, 0
    )
    cfg = config(tmp_path, {"n1": dropping.port, "n2": n2.port}, Mode.ACTIVE_ACTIVE)
    router = router_for(cfg)
    for _ in range(4):
        status, _, body = request(router)
        assert (status, answered_by(body)) == (200, "n2")
    assert dropping.dropped == 1  # tried once, then marked down
    # A POST is not repeated: its effect on the dropping node is unknown.
    cluster.view = ClusterView(None, {"n1": record("n1", "active", 0, at=2.0)}, 0)
    router.refresh()
    status, _, _ = request(router, "POST", b"x")
    assert status == 502 and dropping.dropped == 2


def test_unanswered_request_is_held_through_a_failover(
    tmp_path, backends, cluster, router_for, dropping, pool
) -> None:
    n2 = backends("n2")
    cluster.active("n1", 1, others=("n2",))
    ports = {"n1": dropping.port, "n2": n2.port}
    router = router_for(holding(config(tmp_path, ports), LONG_HOLD))
    answer = pool.submit(request, router)
    wait_until_held(router, answer)
    assert dropping.dropped == 1
    cluster.active("n2", 2, others=("n1",))
    router.refresh()
    status, _, body = answer.result(15)
    assert (status, answered_by(body)) == (200, "n2")


# --- response timeout ----------------------------------------------------------------------


def test_backend_not_answering_in_time_gives_504(
    tmp_path, cluster, router_for, dropping, backends
) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    try:
        cluster.active("n1", 1)
        cfg = config(tmp_path, {"n1": silent.getsockname()[1]})
        router = router_for(cfg, ProxyLimits(response_timeout=0.3))
        started = time.monotonic()
        status, _, body = request(router, Accept="application/json")
        assert status == 504
        assert time.monotonic() - started >= 0.3
        assert json.loads(body)["error"] == "gateway_timeout"
    finally:
        silent.close()


def test_slow_upload_is_not_cut_by_the_response_timeout(
    tmp_path, backends, cluster, router_for
) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(config(tmp_path, {"n1": n1.port}), ProxyLimits(response_timeout=1.5))

    def trickle() -> Iterator[bytes]:
        for _ in range(30):  # ~3 s in all: twice the response timeout
            time.sleep(0.1)
            yield b"x" * 100

    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=15)
    try:
        conn.request("POST", "/slow", body=trickle(), headers={"Content-Length": "3000"})
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["length"] == 3000
    finally:
        conn.close()
