"""Sticky sessions, sticky_down policies, drains and balancing through a real router.

Clients are real ``httpx`` clients with their own cookie jars (a browser each);
backends are real HTTP servers: the sample app (``python -m hakit.demo
--route R``, real JSESSIONID cookies with a jvmRoute suffix) and a small
threaded ``http.server`` that hands out sessions and reports the Cookie header
it received. "A node goes down" means its server stops and every connection it
had is closed, so the router sees refused and reset connections, as in real
life. The cluster view is changed by hand; ``router.refresh()`` applies it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from hakit.config import AppConfig, ClusterConfig, Config, Mode, NodeConfig, RouterConfig, Sticky
from hakit.coord.view import ClusterView
from hakit.router.sticky import route_token
from tests.integration.demo.test_app import StartApp, start_app
from tests.support.router_harness import Backend, ClusterHolder, RouterThread, record, started_by
from tests.support.waiting import wait_until

__all__ = ["start_app"]  # a fixture used below


# --- a backend that hands out sessions ---------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: SessionBackend

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.do_GET()

    def do_GET(self) -> None:
        server = self.server
        cookie = self.headers.get("Cookie", "")
        with server.lock:
            server.cookies.append(cookie)
        headers = [("Content-Type", "application/json")]
        if self.path == "/login":  # a new session, as an app would issue it
            headers.append(("Set-Cookie", f"JSESSIONID={secrets.token_hex(8)}; Path=/; HttpOnly"))
        elif self.path == "/slow":
            server.slow_arrived.set()
            server.release.wait(20)
        body = json.dumps({"node": server.name, "cookie": cookie}).encode()
        self.send_response(200)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class SessionBackend(Backend):
    handler = _Handler

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.cookies: list[str] = []  # the Cookie header of every request received
        self.slow_arrived = threading.Event()
        self._open: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def stop(self) -> None:
        """The node goes down: no more connects, and open connections are cut."""
        self.release.set()
        super().stop()
        with self.lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def backends() -> Iterator[Callable[[str], SessionBackend]]:
    yield from started_by(SessionBackend, SessionBackend.stop)


@pytest.fixture
def browsers() -> Iterator[Callable[[RouterThread], httpx.Client]]:
    opened: list[httpx.Client] = []

    def open_browser(router: RouterThread) -> httpx.Client:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{router.port}", trust_env=False, timeout=10
        )
        opened.append(client)
        return client

    try:
        yield open_browser
    finally:
        for client in opened:
            client.close()


def sticky_config(
    tmp_path: Path, ports: dict[str, int], routes: dict[str, str] | None = None, **router: Any
) -> Config:
    """Active-active over ``ports``; lb-cookie unless ``router`` says otherwise."""
    return Config(
        cluster=ClusterConfig(mode=Mode.ACTIVE_ACTIVE, state_dir=tmp_path),
        app=AppConfig(start="true", home=tmp_path / "home", database_url="sqlite:///app.db"),
        # hold_timeout 0 unless a test asks: the maintenance page at once.
        router=RouterConfig(
            **{"retry_after": 7, "state_poll_interval": 60, "hold_timeout": 0, **router}
        ),
        nodes=tuple(
            NodeConfig(name=name, port=port, route=(routes or {}).get(name, ""))
            for name, port in ports.items()
        ),
    )


def all_running(cluster: ClusterHolder, names: list[str], **states: str) -> None:
    """Active-active: every node's record RUNNING unless ``states`` says otherwise."""
    at = time.time()  # a new updated_at: clears passive down marks, like a republish
    nodes = {n: record(n, "active", 0, states.get(n, "RUNNING"), at=at) for n in names}
    cluster.view = ClusterView(None, nodes, time.time())


def node_of(response: httpx.Response) -> str:
    return str(response.json()["node"])


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def in_flight(router: RouterThread) -> dict[str, int]:
    async def read() -> dict[str, int]:
        return dict(router.router.in_flight)

    return router.call(read())


# --- lb-cookie --------------------------------------------------------------------------------


def test_lb_cookie_keeps_a_user_on_its_node_then_moves_it_when_the_node_goes_down(
    tmp_path, backends, cluster, router_for, browsers
) -> None:
    nodes = {name: backends(name) for name in ("n1", "n2", "n3")}
    all_running(cluster, list(nodes))
    router = router_for(sticky_config(tmp_path, {n: b.port for n, b in nodes.items()}))
    secret = (tmp_path / "router.secret").read_bytes().strip()  # generated on first start

    alice = browsers(router)
    first = alice.get("/")
    home = node_of(first)
    (cookie,) = set_cookies(first)
    token = route_token(secret, "hakit", home).decode()
    assert cookie == f"ROUTEID={token}; Path=/; HttpOnly"  # opaque, signed, a session cookie
    for _ in range(20):
        again = alice.get("/")
        assert node_of(again) == home
        assert set_cookies(again) == []  # set only when the route changes
    for backend in nodes.values():  # the app never sees the router's cookie
        assert not any("ROUTEID" in cookie for cookie in backend.cookies)

    newcomers = {node_of(browsers(router).get("/")) for _ in range(6)}
    assert newcomers == set(nodes)  # new users are spread over every node

    nodes[home].stop()
    moved = alice.get("/")
    new_home = node_of(moved)
    assert new_home != home
    new_token = route_token(secret, "hakit", new_home).decode()
    assert set_cookies(moved) == [f"ROUTEID={new_token}; Path=/; HttpOnly"]  # rewritten
    for _ in range(10):
        again = alice.get("/")
        assert (node_of(again), set_cookies(again)) == (new_home, [])
    assert in_flight(router) == dict.fromkeys(nodes, 0)  # every exchange was counted out


def test_lb_cookie_forged_or_stale_is_ignored_and_rewritten(
    tmp_path, backends, cluster, router_for, browsers
) -> None:
    nodes = {name: backends(name) for name in ("n1", "n2")}
    all_running(cluster, list(nodes))
    cfg = sticky_config(tmp_path, {n: b.port for n, b in nodes.items()}, secret="s" * 32)
    router = router_for(cfg)
    stale = route_token(b"s" * 32, "hakit", "gone").decode()  # a node no longer configured
    forged = route_token(b"x" * 32, "hakit", "n2").decode()  # signed with another secret
    for value in (stale, forged, ".n2", "garbage!"):
        mallory = browsers(router)
        mallory.cookies.set("ROUTEID", value)
        response = mallory.get("/")
        node = node_of(response)
        good = route_token(b"s" * 32, "hakit", node).decode()
        assert set_cookies(response) == [f"ROUTEID={good}; Path=/; HttpOnly"], value
    assert not (tmp_path / "router.secret").exists()  # the configured secret is used


# --- app-cookie-suffix with the sample app ---------------------------------------------------


def test_app_cookie_suffix_with_the_sample_app(
    tmp_path, cluster, router_for, browsers, start_app: StartApp
) -> None:
    apps = {route: start_app("--route", route) for route in ("n1", "n2")}
    for app in apps.values():
        app.wait_state("FIRST_RUN")
    cluster.view = ClusterView(
        None, {f"node{i}": record(f"node{i}", "active", 0, "FIRST_RUN") for i in (1, 2)}, 0
    )
    cfg = sticky_config(
        tmp_path,
        {"node1": apps["n1"].port, "node2": apps["n2"].port},
        routes={"node1": "n1", "node2": "n2"},
        sticky=Sticky.APP_COOKIE_SUFFIX,
    )
    router = router_for(cfg)

    alice = browsers(router)
    login = alice.post("/login", json={"user": "alice"})
    home = login.headers["X-Hakit-Node"]
    session = alice.cookies["JSESSIONID"]
    assert session.endswith("." + home)  # the app wrote its jvmRoute
    for _ in range(20):
        whoami = alice.get("/whoami")
        assert (whoami.status_code, whoami.json()) == (200, {"user": "alice", "node": home})

    # URL rewriting (no cookies): the ;jsessionid= path parameter routes too.
    other = "n2" if home == "n1" else "n1"
    for target in (home, other):
        bare = browsers(router).get(f"/whoami;jsessionid={session.split('.')[0]}.{target}")
        assert bare.headers["X-Hakit-Node"] == target

    apps[home].process.kill()  # kill -9: the node's app and its in-memory sessions are gone
    apps[home].process.wait(10)
    moved = alice.get("/whoami")
    assert (moved.status_code, moved.headers["X-Hakit-Node"]) == (401, other)  # log in again
    assert set_cookies(moved) == []  # the router never invents or rewrites app sessions
    assert alice.cookies["JSESSIONID"] == session
    relogin = alice.post("/login", json={"user": "alice"})
    assert relogin.headers["X-Hakit-Node"] == other
    assert alice.cookies["JSESSIONID"].endswith("." + other)
    for _ in range(5):
        assert alice.get("/whoami").json() == {"user": "alice", "node": other}


# --- app-cookie-prefix --------------------------------------------------------------------------


def test_app_cookie_prefix_is_seen_by_the_client_only(
    tmp_path, backends, cluster, router_for, browsers
) -> None:
    nodes = {name: backends(name) for name in ("n1", "n2")}
    all_running(cluster, list(nodes))
    cfg = sticky_config(
        tmp_path, {n: b.port for n, b in nodes.items()}, sticky=Sticky.APP_COOKIE_PREFIX
    )
    router = router_for(cfg)
    bob = browsers(router)
    bob.cookies.set("theme", "dark")
    login = bob.get("/login")
    home = node_of(login)
    (cookie,) = set_cookies(login)
    route, _, rest = cookie.partition("~")
    assert route == f"JSESSIONID={home}" and rest.endswith("; Path=/; HttpOnly")  # attributes kept
    session = rest.split(";")[0]
    for _ in range(10):
        again = bob.get("/")
        assert node_of(again) == home and set_cookies(again) == []
    received = nodes[home].cookies[-1]
    assert sorted(received.split("; ")) == sorted(["theme=dark", f"JSESSIONID={session}"])
    for backend in nodes.values():  # the app never sees a prefix
        assert not any("~" in cookie for cookie in backend.cookies)

    nodes[home].stop()
    other = "n2" if home == "n1" else "n1"
    moved = bob.get("/")
    assert node_of(moved) == other
    assert f"JSESSIONID={session}" in nodes[other].cookies[-1]  # unknown there: the app decides
    relogin = bob.get("/login")
    assert set_cookies(relogin)[0].startswith(f"JSESSIONID={other}~")


# --- sticky_down policies ------------------------------------------------------------------------


def pinned(
    router: RouterThread, browsers: Callable[[RouterThread], httpx.Client], node: str
) -> httpx.Client:
    """A browser whose ROUTEID pins it to ``node`` (new users are tried until one lands there)."""
    for _ in range(10):
        browser = browsers(router)
        if node_of(browser.get("/")) == node:
            return browser
    raise AssertionError(f"no new user landed on {node}")


def test_sticky_down_hold_waits_for_the_node_then_moves(
    tmp_path, backends, cluster, router_for, browsers
) -> None:
    nodes = {name: backends(name) for name in ("n1", "n2")}
    ports = {n: b.port for n, b in nodes.items()}
    all_running(cluster, list(nodes))
    router = router_for(sticky_config(tmp_path, ports, sticky_down="hold", sticky_hold=30))
    carol = pinned(router, browsers, "n1")
    all_running(cluster, list(nodes), n1="STARTING")  # n1 restarts its app
    router.refresh()
    with ThreadPoolExecutor(1) as pool:
        waiting: Future[httpx.Response] = pool.submit(carol.get, "/")
        wait_until(lambda: held(router), 5, "the request to be held")
        assert not waiting.done()
        all_running(cluster, list(nodes))  # n1 is back
        router.refresh()
        answer = waiting.result(10)
    assert node_of(answer) == "n1" and set_cookies(answer) == []  # it waited: same node

    # A request that cannot wait (its body is on the way) is moved at once: held, it
    # would outlast the client's 10 s timeout (sticky_hold is 30 s).
    eve = pinned(router, browsers, "n1")
    all_running(cluster, list(nodes), n1="STARTING")
    router.refresh()
    assert node_of(eve.post("/", content=b"x" * 10)) == "n2"

    # A node that does not come back within sticky_hold: the user is moved.
    short = router_for(sticky_config(tmp_path, ports, sticky_down="hold", sticky_hold=0.3))
    all_running(cluster, list(nodes))
    short.refresh()
    dave = pinned(short, browsers, "n1")
    all_running(cluster, list(nodes), n1="STARTING")
    short.refresh()
    started = time.monotonic()
    moved = dave.get("/")
    assert node_of(moved) == "n2" and time.monotonic() - started >= 0.3
    assert len(set_cookies(moved)) == 1  # rewritten to n2


def held(router: RouterThread) -> bool:
    """Some request waits for its sticky node (the router's own bookkeeping)."""

    async def read() -> bool:
        return bool(router.router._holds)

    return router.call(read())


def test_sticky_down_fail_shows_the_maintenance_page(
    tmp_path, backends, cluster, router_for, browsers
) -> None:
    nodes = {name: backends(name) for name in ("n1", "n2")}
    all_running(cluster, list(nodes))
    router = router_for(
        sticky_config(tmp_path, {n: b.port for n, b in nodes.items()}, sticky_down="fail")
    )
    frank = pinned(router, browsers, "n1")
    seen_by_n2 = len(nodes["n2"].cookies)
    all_running(cluster, list(nodes), n1="ERROR")
    router.refresh()
    failed = frank.get("/", headers={"Accept": "application/json"})
    assert (failed.status_code, failed.headers["Retry-After"]) == (503, "7")
    assert len(nodes["n2"].cookies) == seen_by_n2  # not moved
    assert node_of(browsers(router).get("/")) == "n2"  # new users are served


# --- drains -------------------------------------------------------------------------------------


def test_draining_node_keeps_its_users_until_the_deadline(
    tmp_path, backends, cluster, router_for, browsers
) -> None:
    nodes = {name: backends(name) for name in ("n1", "n2")}
    all_running(cluster, list(nodes))
    router = router_for(
        sticky_config(tmp_path, {n: b.port for n, b in nodes.items()}, drain_timeout=1.0)
    )
    grace = pinned(router, browsers, "n1")
    all_running(cluster, list(nodes), n1="STOPPING")
    began = time.monotonic()  # before the refresh that starts the drain: never later than it
    router.refresh()
    assert node_of(grace.get("/")) == "n1"  # the session finishes where it lives
    assert {node_of(browsers(router).get("/")) for _ in range(4)} == {"n2"}  # new users elsewhere
    moved = wait_until(
        lambda: (r := grace.get("/")) and node_of(r) == "n2" and r, 10, "the drain deadline"
    )
    assert time.monotonic() - began >= 1.0
    assert len(set_cookies(moved)) == 1
    assert node_of(grace.get("/")) == "n2"


# --- balancing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("balance", ["least-outstanding", "round-robin"])
def test_new_users_by_balance_rule(
    tmp_path, backends, cluster, router_for, browsers, balance: str
) -> None:
    nodes = {name: backends(name) for name in ("n1", "n2")}
    all_running(cluster, list(nodes))
    router = router_for(
        sticky_config(
            tmp_path, {n: b.port for n, b in nodes.items()}, sticky="none", balance=balance
        )
    )
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(browsers(router).get, "/slow")
        busy = wait_until(
            lambda: next((n for n, b in nodes.items() if b.slow_arrived.is_set()), None),
            5,
            "the slow request to arrive",
        )
        assert in_flight(router)[busy] == 1
        chosen = [node_of(browsers(router).get("/")) for _ in range(6)]
        nodes[busy].release.set()
        assert slow.result(10).status_code == 200
    idle = "n2" if busy == "n1" else "n1"
    if balance == "least-outstanding":
        assert chosen == [idle] * 6  # the busy node gets no new users
    else:
        assert sorted(chosen) == sorted([busy, idle] * 3)  # turns, whatever the load
    wait_until(lambda: in_flight(router) == {"n1": 0, "n2": 0}, 5, "in-flight counts to drop")
