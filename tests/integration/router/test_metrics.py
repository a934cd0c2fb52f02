"""Observability through a real router: the access log, /metrics and /nodes on the admin port.

Backends, the cluster view holder and the router thread come from
tests/support/router_harness.py (real threaded HTTP servers, a real Router on
uvloop). The admin port is scraped over real HTTP, as Prometheus would.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hakit.config import AccessLogFormat, Config, Mode
from hakit.coord.view import ClusterView
from hakit.demo.cluster import free_port
from hakit.router import ProxyLimits
from tests.support.router_harness import (
    ClusterHolder,
    RouterThread,
    answered_by,
    get,
    make_config,
    raw,
    started_by,
    wait_for,
)
from tests.unit.router.test_accesslog import COMBINED, COMMON

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


class AdminRouter(RouterThread):
    """A RouterThread that also serves its admin port (on a port of its own choosing)."""

    def admin(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def scrape(self) -> Samples:
        status, headers, body = self.admin("/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse_exposition(body.decode())

    def nodes(self) -> dict[str, Any]:
        status, headers, body = self.admin("/nodes")
        assert status == 200 and headers["Content-Type"] == "application/json"
        document: dict[str, Any] = json.loads(body)
        return document


def parse_exposition(text: str) -> Samples:
    """Parse the Prometheus text format strictly enough to catch malformed output."""
    samples: Samples = {}
    typed: dict[str, str] = {}
    helped: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ")[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            typed[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, label_text, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        assert family in typed and family in helped, f"{name} has no # TYPE / # HELP"
        labels = tuple(LABEL.findall(label_text or ""))
        samples[(name, labels)] = float(value)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    wanted = tuple(labels.items())
    for (sample, found), number in samples.items():
        if sample == name and sorted(found) == sorted(wanted):
            return number
    raise KeyError(f"{name}{labels} not in the scrape")


def histogram(samples: Samples, name: str, node: str) -> list[tuple[float, float]]:
    """(le, cumulative count) of ``node``'s buckets, in order."""
    buckets = [
        (float(dict(labels)["le"]), number)
        for (sample, labels), number in samples.items()
        if sample == f"{name}_bucket" and dict(labels)["node"] == node
    ]
    return sorted(buckets)


@pytest.fixture
def admin_router(cluster: ClusterHolder) -> Iterator[Callable[..., AdminRouter]]:
    def start(cfg: Config, limits: ProxyLimits | None = None) -> AdminRouter:
        return AdminRouter(cfg, cluster, limits, admin=True)

    yield from started_by(start, AdminRouter.close)


def with_router(cfg: Config, **changes: Any) -> Config:
    return cfg.model_copy(update={"router": cfg.router.model_copy(update=changes)})


def post(router: RouterThread, path: str, body: bytes) -> tuple[int, bytes]:
    conn = router.client()
    try:
        conn.request("POST", path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- /metrics -----------------------------------------------------------------------------


def test_metrics_follow_the_requests(tmp_path, backends, cluster, admin_router) -> None:
    n1 = backends("n1")
    cluster.active("n1", 2)
    router = admin_router(make_config(tmp_path, {"n1": n1.port}))
    before = router.scrape()
    assert value(before, "hakit_router_requests_total", node="n1", code_class="2xx") == 0
    assert value(before, "hakit_router_upstream_response_seconds_count", node="n1") == 0

    body_bytes = 0
    for path in ["/"] * 5 + ["/nocontent"] * 2:
        status, _, body = get(router, path)
        assert status in (200, 204)
        body_bytes += len(body)
    status, body = post(router, "/upload", b"u" * 1000)
    assert status == 200 and json.loads(body)["length"] == 1000
    body_bytes += len(body)

    after = router.scrape()
    assert value(after, "hakit_router_requests_total", node="n1", code_class="2xx") == 8
    assert value(after, "hakit_router_requests_total", node="n1", code_class="5xx") == 0
    assert value(after, "hakit_router_sent_bytes_total", node="n1") == body_bytes
    assert value(after, "hakit_router_received_bytes_total", node="n1") == 1000
    # The histogram counted every request once, buckets cumulative up to +Inf = count.
    count = value(after, "hakit_router_upstream_response_seconds_count", node="n1")
    buckets = histogram(after, "hakit_router_upstream_response_seconds", "n1")
    assert count == 8
    assert buckets[-1] == (math.inf, 8)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
    assert 0 < value(after, "hakit_router_upstream_response_seconds_sum", node="n1") < 8 * 10
    # Gauges read at scrape time.
    assert value(after, "hakit_router_node_routable", node="n1") == 1
    assert value(after, "hakit_router_node_down_mark", node="n1") == 0
    assert value(after, "hakit_router_requests_in_flight", node="n1") == 0
    assert value(after, "hakit_router_requests_held") == 0
    assert value(after, "hakit_router_pooled_connections", node="n1") >= 1  # keep-alive reuse
    assert value(after, "hakit_router_epoch") == 2
    assert 0 <= value(after, "hakit_router_view_age_seconds") < 60


def test_maintenance_pages_are_counted_when_no_node_is_routable(
    tmp_path, backends, cluster, admin_router
) -> None:
    n1 = backends("n1")
    cluster.view = ClusterView(None, {}, 0.0)  # no lease: nobody may serve
    router = admin_router(make_config(tmp_path, {"n1": n1.port}))
    for accept in ("text/html", "application/json", "*/*"):
        status, _, _ = get(router, "/", Accept=accept)
        assert status == 503
    samples = router.scrape()
    assert value(samples, "hakit_router_maintenance_pages_total") == 3
    assert value(samples, "hakit_router_requests_total", node="-", code_class="5xx") == 3
    assert value(samples, "hakit_router_requests_total", node="n1", code_class="5xx") == 0
    assert value(samples, "hakit_router_node_routable", node="n1") == 0
    # (the router's own checks of the node's /status come when they are due: not requests)
    assert [seen for seen in n1.seen if seen.path != "/status"] == []

    cluster.active("n1", 1)  # a node comes back: requests reach it, the page count stays
    router.refresh()
    assert get(router)[0] == 200
    samples = router.scrape()
    assert value(samples, "hakit_router_maintenance_pages_total") == 3
    assert value(samples, "hakit_router_requests_total", node="n1", code_class="2xx") == 1


def test_connect_failures_and_retries_are_counted(
    tmp_path, backends, cluster, admin_router
) -> None:
    n2 = backends("n2")
    dead = free_port()  # nothing listens: connections are refused
    cluster.active("n1", 1, others=("n2",))  # active-active: every RUNNING record serves
    cfg = make_config(tmp_path, {"n1": dead, "n2": n2.port}, Mode.ACTIVE_ACTIVE)
    router = admin_router(cfg)
    for _ in range(4):  # whichever request tries n1 first is retried on n2
        status, _, body = get(router)
        assert (status, answered_by(body)) == (200, "n2")
    samples = router.scrape()
    assert value(samples, "hakit_router_connect_failures_total", node="n1") == 1
    assert value(samples, "hakit_router_retries_total", node="n2") == 1
    assert value(samples, "hakit_router_requests_total", node="n2", code_class="2xx") == 4
    assert value(samples, "hakit_router_node_down_mark", node="n1") == 1
    assert value(samples, "hakit_router_node_routable", node="n1") == 0
    assert value(samples, "hakit_router_node_routable", node="n2") == 1


def test_held_requests_are_counted(tmp_path, backends, cluster, admin_router) -> None:
    n1 = backends("n1")
    cluster.view = ClusterView(None, {}, 0.0)  # a failover: nobody may serve for a moment
    cfg = with_router(make_config(tmp_path, {"n1": n1.port}), hold_timeout=20.0)
    router = admin_router(cfg)
    result: list[int] = []
    waiting = threading.Thread(target=lambda: result.append(get(router)[0]), daemon=True)
    waiting.start()
    try:
        wait_for(
            lambda: value(router.scrape(), "hakit_router_requests_held") == 1,
            "the request to wait for a node",
        )
        assert value(router.scrape(), "hakit_router_requests_in_flight", node="-") == 1
        cluster.active("n1", 2)
        router.refresh()
        waiting.join(10)
    finally:
        cluster.active("n1", 2)
        router.refresh()
        waiting.join(10)
    assert result == [200]
    samples = router.scrape()
    assert value(samples, "hakit_router_held_requests_total", node="n1") == 1
    assert 0 < value(samples, "hakit_router_held_seconds_total", node="n1") < 20
    assert value(samples, "hakit_router_maintenance_pages_total") == 0
    assert value(samples, "hakit_router_requests_held") == 0


# --- /nodes -------------------------------------------------------------------------------


def test_nodes_shows_the_routers_view_and_requests_in_flight(
    tmp_path, backends, cluster, admin_router
) -> None:
    n1, n2 = backends("n1"), backends("n2")
    cluster.active("n1", 4, others=("n2",))
    router = admin_router(make_config(tmp_path, {"n1": n1.port, "n2": n2.port}))
    result: list[int] = []
    held = threading.Thread(
        target=lambda: result.append(post(router, "/upload-held", b"x" * 100)[0]), daemon=True
    )
    held.start()
    try:
        wait_for(lambda: router.nodes()["nodes"]["n1"]["in_flight"] == 1, "n1 in flight")
        samples = router.scrape()
        assert value(samples, "hakit_router_requests_in_flight", node="n1") == 1
        assert value(samples, "hakit_router_client_connections") >= 1
        document = router.nodes()
    finally:
        n1.release.set()
        held.join(10)
    assert result == [200]

    assert document["router"]["epoch"] == 4 and document["router"]["leader"] == "n1"
    assert document["router"]["in_flight"] == 1
    assert document["router"]["mode"] == "cold-standby"
    first, second = document["nodes"]["n1"], document["nodes"]["n2"]
    assert first["address"] == f"127.0.0.1:{n1.port}"
    assert (first["routable"], first["down_mark"], first["lease_holder"]) == (True, False, True)
    assert (first["role"], first["app_state"], first["epoch"]) == ("active", "RUNNING", 4)
    assert (second["routable"], second["lease_holder"], second["role"]) == (False, False, "standby")
    assert second["in_flight"] == 0 and "health" in first and "health" in document

    wait_for(lambda: router.nodes()["nodes"]["n1"]["requests"] == 1, "the request counted")
    after = router.nodes()["nodes"]["n1"]
    assert after["in_flight"] == 0 and after["responses"]["2xx"] == 1
    assert after["upstream_time_avg"] is not None and after["upstream_time_avg"] > 0


def test_admin_port_is_separate_from_the_public_one(
    tmp_path, backends, cluster, admin_router
) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = admin_router(make_config(tmp_path, {"n1": n1.port}))
    assert router.admin_port != router.port
    status, _, body = get(router, "/metrics")  # on the public port: the app's own URL
    assert status == 200 and answered_by(body) == "n1"
    assert router.admin("/elsewhere")[0] == 404
    assert router.admin("/metrics", method="POST")[0] == 405
    status, headers, body = router.admin("/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    # A client that never finishes its head does not hold the admin server up.
    with socket.create_connection(("127.0.0.1", router.admin_port)) as slow:
        slow.sendall(b"GET /metr")
        assert router.admin("/nodes")[0] == 200


def test_nothing_is_observed_when_off(tmp_path, backends, cluster) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = RouterThread(make_config(tmp_path, {"n1": n1.port}), cluster, None)
    try:
        assert get(router)[0] == 200
        obs = router.router.obs
        assert (obs.observe, obs.metrics, obs.access_log, obs.admin) == (None, None, None, None)
    finally:
        router.close()


# --- access log ---------------------------------------------------------------------------


def read_lines(path: Path, count: int) -> list[str]:
    lines: list[str] = []

    def enough() -> bool:
        nonlocal lines
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        return len(lines) >= count

    wait_for(enough, f"{count} access log lines in {path}")
    return lines


@pytest.mark.parametrize("fmt", list(AccessLogFormat))
def test_access_log_through_the_router(tmp_path, backends, cluster, fmt) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    path = tmp_path / "access.log"
    cfg = with_router(
        make_config(tmp_path, {"n1": n1.port}), access_log=str(path), access_log_format=fmt
    )
    router = RouterThread(cfg, cluster, None)
    try:
        status, _, got = get(router, "/page?x=1", Referer="http://from/", User_Agent="probe/1.0")
        assert status == 200
        assert post(router, "/upload", b"b" * 100)[0] == 200
        cluster.view = ClusterView(None, {}, 0.0)
        router.refresh()
        assert get(router, "/later")[0] == 503
        assert b"400" in raw(router.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")[:12]
        lines = read_lines(path, 3)
    finally:
        router.close()
    lines = path.read_text().splitlines(keepends=True)  # closing flushed everything
    assert len(lines) >= 3

    if fmt is AccessLogFormat.JSON:
        records = [json.loads(line) for line in lines]
        first, upload, page = records[:3]
        assert first["method"] == "GET" and first["target"] == "/page?x=1"
        assert (first["status"], first["node"], first["bytes_sent"]) == (200, "n1", len(got))
        assert (first["referer"], first["user_agent"]) == ("http://from/", "probe/1.0")
        assert first["client"] == "127.0.0.1" and first["protocol"] == "HTTP/1.1"
        assert 0 < first["upstream_time"] <= first["total_time"] < 10
        assert (upload["method"], upload["bytes_received"], upload["status"]) == ("POST", 100, 200)
        assert (page["status"], page["node"], page["upstream_time"]) == (503, None, None)
        return
    pattern = COMBINED if fmt is AccessLogFormat.COMBINED else COMMON
    matches = [pattern.match(line) for line in lines[:3]]
    assert all(matches), lines
    first, upload, page = (m for m in matches if m is not None)
    assert first["line"] == "GET /page?x=1 HTTP/1.1"
    assert (first["status"], first["node"], first["size"]) == ("200", "n1", str(len(got)))
    assert 0 < float(first["upstream"]) <= float(first["total"])
    assert first["ip"] == "127.0.0.1"
    if fmt is AccessLogFormat.COMBINED:
        assert (first["referer"], first["agent"]) == ("http://from/", "probe/1.0")
    assert (upload["line"], upload["status"]) == ("POST /upload HTTP/1.1", "200")
    assert (page["status"], page["node"], page["upstream"]) == ("503", "-", "-")


# --- refused requests ----------------------------------------------------------------------


def test_refused_requests_are_logged_and_counted(tmp_path, backends, cluster, admin_router) -> None:
    """Every request refused while its head is read (the conformance cases, a slow head)
    gets an access log line and is counted under node "-"; none reaches the node."""
    from tests.integration.router.test_conformance import CASES, expand

    n1 = backends("n1")
    cluster.active("n1", 1)
    path = tmp_path / "access.log"
    cfg = with_router(
        make_config(tmp_path, {"n1": n1.port}),
        access_log=str(path),
        access_log_format=AccessLogFormat.JSON,
    )
    router = admin_router(cfg, ProxyLimits(header_timeout=0.5))
    cases = [c for c in CASES if c["status"] != 200 and c.get("reaches_backend") != "incomplete"]
    expected: list[int] = []
    for case in cases:
        answer = raw(router.port, expand(case["raw"]))
        assert answer.startswith(b"HTTP/1.1 %d " % case["status"]), case["name"]
        expected.append(case["status"])
    # A head that never completes: 408 once header_timeout passed.
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as slow:
        slow.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
        assert slow.recv(65536).startswith(b"HTTP/1.1 408 ")
    expected.append(408)

    samples = router.scrape()
    for code_class in ("4xx", "5xx"):
        wanted = sum(1 for status in expected if f"{status // 100}xx" == code_class)
        assert value(samples, "hakit_router_requests_total", node="-", code_class=code_class) == (
            wanted
        )
    assert value(samples, "hakit_router_requests_total", node="n1", code_class="4xx") == 0
    # (the router's own checks of the node's /status come when they are due: not requests)
    assert [seen for seen in n1.seen if seen.path != "/status"] == []

    records = [json.loads(line) for line in read_lines(path, len(expected))]
    assert [r["status"] for r in records] == expected
    assert all(r["node"] is None and r["client"] == "127.0.0.1" for r in records)
    slow_record = records[-1]
    assert (slow_record["method"], slow_record["target"]) == ("GET", "/slow")
    assert slow_record["protocol"] == "HTTP/1.1"
    first = next(r for r, c in zip(records, cases, strict=False) if c["raw"].startswith("POST "))
    assert first["method"] == "POST"
