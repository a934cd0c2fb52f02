"""The router's own /status checks (checks.py) against real backends over real sockets.

Each backend is a threaded ``http.server`` whose /status answers whatever the
test sets (every contract state, a 404, a page without JSON, a hang) while
the cluster view (built by hand) keeps saying RUNNING: only the router's own
checks can see the difference, which is the point of them.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from hakit.config import (
    AppConfig,
    Balance,
    ClusterConfig,
    Config,
    HealthConfig,
    Mode,
    NodeConfig,
    RouterConfig,
    Sticky,
)
from hakit.contract import AppState, http_status_for
from hakit.coord.base import Lease, NodeRecord
from hakit.coord.sqlite import SqliteCoordinator
from hakit.coord.view import ClusterView
from hakit.health.datapath import REFUSED, reports_in
from hakit.router import Router
from hakit.router.health import HealthState
from hakit.router.pathreport import StateStore
from tests.support import router_harness as harness

FALL, RISE = 2, 2


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes: no delayed-ACK stall
    server: Backend

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server = self.server
        if self.path != "/status":
            with server.lock:
                server.served += 1
            self._send(200, server.name.encode(), "text/plain")
            return
        with server.lock:
            server.checks += 1
        answer = server.answer
        if answer == "hang":
            server.release.wait(10)
            answer = "RUNNING"
        if answer == "404":
            self._send(404, b"<h1>Not Found</h1>", "text/html")
        elif answer == "no-json":
            self._send(200, b"<html>Tomcat is up</html>", "text/html")
        else:
            body = json.dumps({"state": answer}).encode()
            self._send(http_status_for(AppState(answer)), body, "application/json")


class Backend(harness.Backend):
    """A node's app: /status answers ``answer``; every other path answers the name."""

    handler = _Handler

    def __init__(self, name: str, port: int = 0) -> None:
        super().__init__(name, port=port)
        self.answer = "RUNNING"  # a contract state, "404", "no-json" or "hang"
        self.checks = 0
        self.served = 0  # self.release ends a "hang"

    def stop(self) -> None:
        self.release.set()
        super().stop()


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    yield from harness.started_by(Backend, Backend.stop)


def config(
    tmp_path: Path, backends: list[Backend], mode: Mode, hold: float = 0, **health: Any
) -> Config:
    return Config(
        cluster=ClusterConfig(mode=mode, state_dir=tmp_path),
        app=AppConfig(start="true", home=tmp_path / "home", database_url="sqlite:///app.db"),
        health=HealthConfig(**({"fall": FALL, "rise": RISE, "probe_timeout": 0.5} | health)),
        router=RouterConfig(
            state_poll_interval=60,  # the test refreshes the view itself
            check_interval=0.05,
            sticky=Sticky.NONE,
            balance=Balance.ROUND_ROBIN,
            hold_timeout=hold,
        ),
        nodes=tuple(NodeConfig(name=b.name, port=b.port) for b in backends),
    )


def record(node: str, role: str, epoch: int, state: str = "RUNNING", pid: int = 100) -> NodeRecord:
    return NodeRecord(node, role, state, epoch, 1.0, {"pid": pid})


class Cluster:
    """The view the router reads; tests replace it."""

    def __init__(self, records: list[NodeRecord], lease: Lease | None = None) -> None:
        self.view = ClusterView(lease, {r.node: r for r in records}, time.time())

    def source(self) -> ClusterView:
        return replace(self.view, read_at=time.time())


def standby_cluster(active: str, pid: int = 100, state: str = "RUNNING") -> Cluster:
    return Cluster(
        [record(active, "active", 4, state, pid)],
        Lease.as_read(active, 4, time.time() + 600, time.time()),
    )


class RouterThread(harness.RouterThread):
    """The harness's router thread, reading the health checks' state."""

    def __init__(self, cfg: Config, cluster: Cluster, store: StateStore | None = None) -> None:
        super().__init__(cfg, cluster, store=store)

    def state(self, node: str) -> HealthState:
        async def read() -> HealthState:
            assert self.router.health is not None
            return self.router.health.state(node)

        return self.call(read())

    def reason(self, node: str) -> str:
        async def read() -> str:
            assert self.router.health is not None
            return str(self.router.health.snapshot()[node]["reason"])

        return self.call(read())

    def wait_state(self, node: str, state: HealthState, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while (seen := self.state(node)) is not state:
            assert time.monotonic() < deadline, f"{node} stayed {seen}, expected {state}"
            time.sleep(0.01)

    def get(self) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/", headers={"Accept": "text/plain"})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()


@pytest.fixture
def router_for() -> Iterator[Callable[..., RouterThread]]:
    yield from harness.started_by(RouterThread, RouterThread.close)


# --- the active node fails its checks while its agent says RUNNING ------------------------

FAILURES = ["ERROR", "404", "no-json", "hang"]


@pytest.mark.parametrize("failure", FAILURES)
def test_failed_checks_stop_routing_until_rise_answers(
    tmp_path, backends, router_for, failure
) -> None:
    n1 = backends("n1")
    router = router_for(config(tmp_path, [n1], Mode.RESTART_ONLY), standby_cluster("n1"))
    router.wait_state("n1", HealthState.UP)
    assert router.get() == (200, "n1")
    n1.answer = failure
    router.wait_state("n1", HealthState.DOWN)
    assert router.reason("n1").startswith(f"{FALL} failed checks in a row (fall {FALL})")
    served = n1.served
    status, _ = router.get()
    assert status == 503 and n1.served == served  # the maintenance page; n1 never asked
    n1.release.set()  # a hanging /status answers again
    n1.answer = "RUNNING"
    router.wait_state("n1", HealthState.UP)
    assert router.reason("n1").startswith(f"{RISE} answers in a row (rise {RISE})")
    assert router.get() == (200, "n1")


def test_a_held_request_goes_through_when_the_checks_see_the_node_back(
    tmp_path, backends, router_for
) -> None:
    n1 = backends("n1")
    cfg = config(tmp_path, [n1], Mode.RESTART_ONLY, hold=30)
    router = router_for(cfg, standby_cluster("n1"))
    n1.answer = "ERROR"
    router.wait_state("n1", HealthState.DOWN)
    answers: list[tuple[int, str]] = []
    held = threading.Thread(target=lambda: answers.append(router.get()), daemon=True)
    held.start()
    deadline = time.monotonic() + 10
    while router.call(_holding(router.router)) == 0:  # the request waits in the router
        assert time.monotonic() < deadline and not answers, f"not held: {answers}"
        time.sleep(0.01)
    n1.answer = "RUNNING"  # no view change: only the board's transition wakes it
    held.join(20)
    assert answers == [(200, "n1")]


async def _holding(router: Router) -> int:
    """Requests in the router not answered yet (with n1 down: held)."""
    return sum(1 for client in router.clients if client.running is not None)


def test_closed_port_stops_routing_until_it_listens_again(tmp_path, backends, router_for) -> None:
    n1 = backends("n1")
    router = router_for(config(tmp_path, [n1], Mode.RESTART_ONLY), standby_cluster("n1"))
    router.wait_state("n1", HealthState.UP)
    port = n1.port
    n1.stop()  # the app's port closes; its agent still says RUNNING
    router.wait_state("n1", HealthState.DOWN)
    assert "refused" in router.reason("n1")
    status, _ = router.get()
    assert status == 503
    backends("n1", port)  # listening again on the same port
    router.wait_state("n1", HealthState.UP)
    status, body = router.get()
    assert (status, body) == (200, "n1")


# --- drain and active-active ---------------------------------------------------------------


def active_active(*names: str) -> Cluster:
    return Cluster([record(name, "active", 0) for name in names])


@pytest.mark.parametrize("answer", ["STARTING", "STOPPING", "MAINTENANCE"])
def test_draining_node_gets_no_new_users(tmp_path, backends, router_for, answer) -> None:
    n1, n2 = backends("n1"), backends("n2")
    router = router_for(config(tmp_path, [n1, n2], Mode.ACTIVE_ACTIVE), active_active("n1", "n2"))
    n1.answer = answer  # its own /status says so; its record still says RUNNING
    router.wait_state("n1", HealthState.DRAIN)
    assert router.call(_draining(router.router, "n1"))
    served = n1.served
    assert {router.get() for _ in range(6)} == {(200, "n2")}
    assert n1.served == served
    n1.answer = "RUNNING"
    router.wait_state("n1", HealthState.UP)  # an answer that serves: back at once
    assert {router.get() for _ in range(6)} == {(200, "n1"), (200, "n2")}


async def _draining(router: Router, node: str) -> bool:
    assert router.health is not None
    return router.health.draining(node) and not router.health.routable(node)


def test_active_active_skips_a_node_in_error(tmp_path, backends, router_for) -> None:
    n1, n2 = backends("n1"), backends("n2")
    router = router_for(config(tmp_path, [n1, n2], Mode.ACTIVE_ACTIVE), active_active("n1", "n2"))
    router.wait_state("n2", HealthState.UP)
    n2.answer = "ERROR"
    router.wait_state("n2", HealthState.DOWN)
    assert {router.get() for _ in range(6)} == {(200, "n1")}
    n2.answer = "FIRST_RUN"
    router.wait_state("n2", HealthState.UP)
    assert {router.get() for _ in range(6)} == {(200, "n1"), (200, "n2")}


# --- what the records say ----------------------------------------------------------------


def test_a_new_app_instance_is_routable_at_once(tmp_path, backends, router_for) -> None:
    n1 = backends("n1")
    cluster = standby_cluster("n1", pid=100)
    # rise 1000: only the reset, not the checks, can bring it back within the test.
    router = router_for(config(tmp_path, [n1], Mode.RESTART_ONLY, rise=1000), cluster)
    n1.answer = "ERROR"
    router.wait_state("n1", HealthState.DOWN)
    assert router.get()[0] == 503
    n1.answer = "RUNNING"
    router.refresh()
    assert router.state("n1") is HealthState.DOWN  # same instance: the verdict holds
    cluster.view = standby_cluster("n1", pid=200).view  # its agent restarted the app
    router.refresh()
    assert router.state("n1") in (HealthState.UNKNOWN, HealthState.UP)
    assert "app pid 100 -> 200" in router.reason("n1")
    assert router.get() == (200, "n1")


def test_a_node_whose_agent_runs_no_app_is_not_checked(tmp_path, backends, router_for) -> None:
    n1, n2 = backends("n1"), backends("n2")
    cluster = Cluster(
        [record("n1", "active", 4), record("n2", "standby", 0, "STOPPED")],
        Lease.as_read("n1", 4, time.time() + 600, time.time()),
    )
    router_for(config(tmp_path, [n1, n2], Mode.COLD_STANDBY), cluster)
    deadline = time.monotonic() + 10
    while n1.checks < 10:
        assert time.monotonic() < deadline, "n1 is not being checked"
        time.sleep(0.01)
    assert n2.checks == 0


def test_the_router_publishes_what_its_checks_see_of_each_node(
    tmp_path, backends, router_for
) -> None:
    """The data path (hakit.health.datapath): n1 answers /status; n2 runs no app and its port is
    closed, so it gets a TCP connect only, refused: its host is reachable."""
    n1, n2 = backends("n1"), backends("n2")
    n2.stop()  # nothing listens on n2's port any more
    cluster = Cluster(
        [record("n1", "active", 4), record("n2", "standby", 0, "STOPPED")],
        Lease.as_read("n1", 4, time.time() + 600, time.time()),
    )
    store = SqliteCoordinator(tmp_path / "coord.db")
    try:
        router = router_for(config(tmp_path, [n1, n2], Mode.COLD_STANDBY), cluster, store)
        deadline = time.monotonic() + 10
        while True:
            reports = reports_in(store.cluster_state())
            sights = reports[0].nodes if reports else {}
            if (
                sights.get("n1")
                and sights["n1"].answered_at
                and sights.get("n2")
                and sights["n2"].checked_at
            ):
                break
            assert time.monotonic() < deadline, f"no complete report: {reports}"
            time.sleep(0.02)
        [report] = reports
        assert report.router == f"127.0.0.1:{router.port}"
        assert report.fresh(time.time())
        assert sights["n1"].failure is None and n1.checks > 0
        assert sights["n2"].failure == REFUSED and sights["n2"].reachable
        router.close()  # a router that stops withdraws its report
        assert reports_in(store.cluster_state()) == []
    finally:
        store.close()
