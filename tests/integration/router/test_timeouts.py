"""Backend connect and response timeouts at runtime, through a live router.

A backend whose connect never completes is a real listening socket whose
accept queue is full and never drained: Linux drops the SYNs of further
connects (it does not refuse them), so the router's connect hangs until
``router.connect_timeout`` (read from the config, not set as a ProxyLimits
override). A backend that accepts and reads the request but never answers
is a socket server that reads the head and then waits.

Policy checked here (exchange.py): a connect timeout is a failure on real
traffic, so the node is marked down for new requests at once (passive
detection) and an idempotent request goes to another node, waits for one
(hold_timeout) or gets the maintenance page. A response timeout is a slow
node, not a dead one: 504, and the node keeps getting requests.

Backends, the cluster view and the router come from tests/support/router_harness.py;
the admin-port router from test_metrics.py, the hold helpers from
test_hold.py.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from hakit.config import Config, Mode
from hakit.coord.view import ClusterView
from tests.integration.router import test_hold, test_metrics
from tests.integration.router.test_hold import (
    LONG_HOLD,
    config,
    held_count,
    request,
    wait_until_held,
)
from tests.integration.router.test_metrics import AdminRouter, with_router
from tests.support.router_harness import (
    ClusterHolder,
    SocketServer,
    answered_by,
    read_head,
    record,
)

# Fixtures reused from those modules: a router serving its admin port, a thread pool.
admin_router = test_metrics.admin_router
pool = test_hold.pool

CONNECT_TIMEOUT = 0.5
RESPONSE_TIMEOUT = 0.5
# Generous: the bound is "the configured timeout, not the kernel's SYN retries (~2 min)
# or the default timeouts (5 s, 300 s)", on a loaded 2-core machine.
SLACK = 3.0


# --- a backend whose connects never complete ----------------------------------------------


class Blackhole:
    """A listening socket whose accept queue is full and never drained.

    Linux keeps at most backlog + 1 completed connections queued; once full, it
    drops the SYN of every further connect, so those connects neither succeed
    nor fail (until the client's own timeout). The queue is filled here until
    a connect is seen to hang, so the test does not rely on the exact formula.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=0)
        self.port = int(self.sock.getsockname()[1])
        self.fillers: list[socket.socket] = []
        for _ in range(16):  # bounded: the queue is full after one or two
            if self._connect_hangs():
                return
        self.close()
        raise AssertionError("could not fill the accept queue: connects keep completing")

    def _connect_hangs(self) -> bool:
        """Connect once more: True if it hangs (the queue is full), else keep it queued."""
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        conn.setblocking(False)
        conn.connect_ex(("127.0.0.1", self.port))
        _, writable, _ = select.select([], [conn], [], 0.3)
        if writable and conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            self.fillers.append(conn)
            return False
        conn.close()
        # With no connection queued yet the queue cannot be full: the machine stalled.
        return bool(self.fillers)

    def close(self) -> None:
        for conn in self.fillers:
            conn.close()
        self.sock.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.close()


def timeouts(cfg: Config, hold: float = 0.0) -> Config:
    """``cfg`` with short backend timeouts in its [router] section, and ``hold``."""
    return with_router(
        cfg,
        connect_timeout=CONNECT_TIMEOUT,
        response_timeout=RESPONSE_TIMEOUT,
        hold_timeout=hold,
    )


def n1_seen_by_router(router: AdminRouter) -> dict[str, object]:
    entry: dict[str, object] = router.nodes()["nodes"]["n1"]
    return entry


def timed_get(router: AdminRouter, **headers: str) -> tuple[int, bytes, float]:
    started = time.monotonic()
    status, _, body = request(router, **headers)
    return status, body, time.monotonic() - started


def both_active(cluster: ClusterHolder) -> None:
    cluster.view = ClusterView(
        None, {"n1": record("n1", "active", 0), "n2": record("n2", "active", 0)}, 0
    )


# --- connect timeout ----------------------------------------------------------------------


def test_connect_timeout_retries_on_the_other_node_and_marks_the_node_down(
    tmp_path,
    backends,
    cluster,
    admin_router,
    blackhole,
) -> None:
    n2 = backends("n2")
    both_active(cluster)
    ports = {"n1": blackhole.port, "n2": n2.port}
    router = admin_router(timeouts(config(tmp_path, ports, Mode.ACTIVE_ACTIVE)))
    answers = [timed_get(router) for _ in range(4)]  # the balance sends one of them to n1
    assert [(status, answered_by(body)) for status, body, _ in answers] == [(200, "n2")] * 4
    waited = sorted(took for _, _, took in answers)
    # One request tried n1, waited out the configured connect timeout, and was retried
    # on n2 (a lower bound: it did wait; the upper one: the config's value, not the
    # kernel's SYN retries).
    assert CONNECT_TIMEOUT <= waited[-1] < CONNECT_TIMEOUT + SLACK
    seen = n1_seen_by_router(router)
    # Passive detection: n1 is out for new requests at once, so the others went
    # straight to n2 and n1 was tried exactly once.
    assert seen["down_mark"] is True and seen["routable"] is False
    assert seen["connect_failures"] == 1
    assert len(n2.seen) == 4


def test_connect_timeout_holds_the_request_until_another_node_takes_over(
    tmp_path,
    backends,
    cluster,
    admin_router,
    blackhole,
    pool,
) -> None:
    n2 = backends("n2")
    cluster.active("n1", 1, others=("n2",))
    ports = {"n1": blackhole.port, "n2": n2.port}
    router = admin_router(timeouts(config(tmp_path, ports), hold=LONG_HOLD))
    started = time.monotonic()
    answer = pool.submit(request, router)
    wait_until_held(router, answer)  # after the connect to n1 timed out
    assert CONNECT_TIMEOUT <= time.monotonic() - started < CONNECT_TIMEOUT + SLACK
    assert n1_seen_by_router(router)["down_mark"] is True
    cluster.active("n2", 2, others=("n1",))  # failover: n2 holds the lease now
    router.refresh()
    status, _, body = answer.result(15)
    assert (status, answered_by(body)) == (200, "n2")
    assert held_count(router) == 0


def test_connect_timeout_without_hold_answers_the_maintenance_page(
    tmp_path,
    cluster,
    admin_router,
    blackhole,
) -> None:
    cluster.active("n1", 1)
    router = admin_router(timeouts(config(tmp_path, {"n1": blackhole.port})))
    status, body, took = timed_get(router, Accept="application/json")
    assert status == 503 and json.loads(body)["error"] == "unavailable"
    assert CONNECT_TIMEOUT <= took < CONNECT_TIMEOUT + SLACK
    # Marked down: the next request is answered without another connect attempt.
    status, _, _ = timed_get(router, Accept="application/json")
    assert status == 503
    seen = n1_seen_by_router(router)
    assert seen["down_mark"] is True and seen["connect_failures"] == 1


# --- response timeout --------------------------------------------------------------------


class SilentServer(SocketServer):
    """Accepts, reads each request head in full, and never answers (a stuck app)."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # set on stop: the handlers return
        super().__init__(threaded=True)

    def handle(self, conn: socket.socket) -> None:
        read = read_head(conn, timeout=30)
        if read is None:
            return
        with self.lock:
            self.heads.append(read[0])
        self.release.wait(30)

    def stop(self) -> None:
        self.release.set()
        super().stop()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.stop()


def test_response_timeout_gives_504_and_does_not_mark_the_node_down(
    tmp_path,
    cluster,
    admin_router,
    silent,
) -> None:
    cluster.active("n1", 1)
    router = admin_router(timeouts(config(tmp_path, {"n1": silent.port}), hold=LONG_HOLD))
    sweep = router.router.limits.sweep_interval  # the timeout fires up to two sweeps late
    for attempt in (1, 2):
        status, body, took = timed_get(router, Accept="application/json")
        assert status == 504 and json.loads(body)["error"] == "gateway_timeout"
        assert RESPONSE_TIMEOUT <= took < RESPONSE_TIMEOUT + 2 * sweep + SLACK
        # The backend did get (and read) each request: a slow node, not a dead one.
        assert len(silent.heads) == attempt
        seen = n1_seen_by_router(router)
        assert seen["down_mark"] is False and seen["routable"] is True
        assert seen["connect_failures"] == 0 and seen["held"] == 0
    assert all(head.startswith(b"GET /held HTTP/1.1") for head in silent.heads)
