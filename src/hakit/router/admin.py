"""The router's admin port: ``/metrics`` (Prometheus) and ``/nodes`` (JSON).

A separate, tiny HTTP/1.1 server on ``router.admin_listen`` (loopback by
default): it never shares the public port, so users cannot read it, and a
scrape costs the data plane nothing but the rendering. One request per
connection (``Connection: close``); heads are bounded in size and time.

``Observability`` bundles what the router creates for this issue: the access
log, the metrics and this server. Without ``access_log`` and ``admin_listen``
it creates nothing and the router observes nothing (zero cost per request).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from hakit.config import Config, NodeConfig, parse_listen
from hakit.coord.view import ClusterView
from hakit.errors import HakitError
from hakit.router.accesslog import AccessLog
from hakit.router.metrics import NO_NODE, Gauges, Observer, RouterMetrics, chain, render

log = logging.getLogger("hakit.router")

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 5.0
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class RunningExchange(Protocol):
    node: NodeConfig | None
    finished: bool


class ClientView(Protocol):
    @property
    def running(self) -> RunningExchange | None: ...


class PoolView(Protocol):
    def idle_count(self, node: NodeConfig) -> int: ...


class RouterView(Protocol):
    """What the admin server reads from the router (server.Router provides it)."""

    cfg: Config
    requests_held: int  # requests waiting for a node now

    @property
    def view(self) -> ClusterView: ...

    @property
    def down_marks(self) -> dict[str, float]: ...

    @property
    def clients(self) -> Collection[ClientView]: ...

    @property
    def pool(self) -> PoolView: ...

    def eligible(self) -> tuple[NodeConfig, ...]: ...


# --- what is served (pure given the router's state) -------------------------------------


def in_flight(router: RouterView) -> Counter[str]:
    """Running exchanges by the node they are at (NO_NODE: not at one yet)."""
    counts: Counter[str] = Counter()
    for client in router.clients:
        exchange = client.running
        if exchange is not None and not exchange.finished:
            counts[exchange.node.name if exchange.node is not None else NO_NODE] += 1
    return counts


def gauges(router: RouterView, now: float) -> Gauges:
    view = router.view
    return Gauges(
        client_connections=len(router.clients),
        in_flight=in_flight(router),
        requests_held=router.requests_held,
        pooled={node.name: router.pool.idle_count(node) for node in router.cfg.nodes},
        routable=frozenset(node.name for node in router.eligible()),
        down_marks=frozenset(router.down_marks),
        view_age=now - view.read_at if view.read_at else math.inf,
        epoch=view.epoch,
    )


def metrics_text(router: RouterView, metrics: RouterMetrics) -> str:
    return render(metrics, gauges(router, time.time()), [n.name for n in router.cfg.nodes])


def _health_snapshot(router: RouterView) -> Any:
    # router.health (a HealthBoard) exists once the router runs its own checks.
    board = getattr(router, "health", None)
    snapshot = getattr(board, "snapshot", None)
    if snapshot is None:
        return None
    try:
        return snapshot()
    except Exception as error:  # observability must not take the admin port down
        return {"error": f"{type(error).__name__}: {error}"}


def nodes_document(router: RouterView, metrics: RouterMetrics, now: float) -> dict[str, Any]:
    """The router's view of each node, as ``/nodes`` serves it."""
    view, cfg = router.view, router.cfg
    state = gauges(router, now)
    health = _health_snapshot(router)
    lease = view.lease
    nodes: dict[str, Any] = {}
    for node in cfg.nodes:
        record = view.nodes.get(node.name)
        stats = metrics.node(node.name)
        requests = stats.requests
        latency_count = sum(stats.buckets)
        nodes[node.name] = {
            "address": f"{node.host}:{node.port}",
            "route": node.route_name,
            "routable": node.name in state.routable,
            "down_mark": node.name in state.down_marks,
            "lease_holder": lease is not None and lease.holder == node.name,
            "role": record.role if record else None,
            "app_state": record.app_state if record else None,
            "epoch": record.epoch if record else None,
            "record_age": round(record.age, 3) if record else None,
            "in_flight": state.in_flight.get(node.name, 0),
            "pooled": state.pooled.get(node.name, 0),
            "requests": requests,
            "responses": stats.by_class(),
            "connect_failures": stats.connect_failures,
            "retries": stats.retries,
            "held": stats.held,
            "upstream_time_avg": (
                round(stats.latency_sum / latency_count, 6) if latency_count else None
            ),
            "health": health.get(node.name) if isinstance(health, Mapping) else None,
        }
    unrouted = metrics.node(NO_NODE)
    return {
        "router": {
            "mode": str(cfg.cluster.mode),
            "listen": cfg.router.listen,
            "leader": view.leader,
            "epoch": view.epoch,
            "lease_expires_in": round(view.lease_left(now), 3) if lease else None,
            "view_age": round(state.view_age, 3) if math.isfinite(state.view_age) else None,
            "client_connections": state.client_connections,
            "in_flight": sum(state.in_flight.values()),
            "unrouted_requests": unrouted.requests,
            "maintenance_pages": metrics.maintenance_pages,
        },
        "nodes": nodes,
        "health": health,
    }


# --- the server ---------------------------------------------------------------------------


def _response(status: bytes, content_type: bytes, body: bytes, head_only: bool) -> bytes:
    head = (
        b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"Cache-Control: no-store\r\nConnection: close\r\n\r\n" % (status, content_type, len(body))
    )
    return head if head_only else head + body


class AdminServer:
    def __init__(self, router: RouterView, metrics: RouterMetrics) -> None:
        self._router = router
        self._metrics = metrics
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        try:
            self._server = await asyncio.start_server(
                self._serve, host or None, port, limit=MAX_HEAD
            )
        except OSError as error:
            raise HakitError(
                f"router: cannot listen on the admin address {host}:{port} "
                f"({error.strerror or error}); change router.admin_listen in the config "
                "or stop the program using that port"
            ) from error
        bound = self._server.sockets[0].getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        log.info("router admin (/metrics, /nodes) on %s:%s", *self.address)
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(self.answer(head.split(b"\r\n", 1)[0]))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a broken or slow admin client: just hang up
        except OSError:
            pass
        finally:
            writer.close()

    def answer(self, request_line: bytes) -> bytes:
        """The whole response to one request line."""
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _response(b"400 Bad Request", b"text/plain", b"bad request\n", False)
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response(b"405 Method Not Allowed", b"text/plain", b"GET only\n", False)
        head_only = method == b"HEAD"
        if target == b"/metrics":
            text = metrics_text(self._router, self._metrics)
            return _response(b"200 OK", METRICS_TYPE, text.encode(), head_only)
        if target == b"/nodes":
            document = nodes_document(self._router, self._metrics, time.time())
            body = json.dumps(document, indent=2, default=str).encode() + b"\n"
            return _response(b"200 OK", b"application/json", body, head_only)
        if target == b"/":
            body = b"hakit router admin: /metrics (Prometheus), /nodes (JSON)\n"
            return _response(b"200 OK", b"text/plain", body, head_only)
        return _response(b"404 Not Found", b"text/plain", b"not found\n", head_only)


class Observability:
    """The router's access log, metrics and admin server, each only when configured."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self.metrics: RouterMetrics | None = None
        self.access_log: AccessLog | None = None
        self.admin: AdminServer | None = None
        # Called with every ended exchange; None when nothing observes (the common fast path).
        self.observe: Observer | None = None

    async def start(self, router: RouterView, admin: tuple[str, int] | None = None) -> None:
        """Open the access log and serve the admin port (``admin`` overrides admin_listen)."""
        settings = self._cfg.router
        if admin is None and settings.admin_listen is not None:
            admin = parse_listen(settings.admin_listen)
        if settings.access_log is not None:
            self.access_log = AccessLog(settings.access_log, settings.access_log_format)
        if admin is not None:
            self.metrics = RouterMetrics(node.name for node in self._cfg.nodes)
            self.admin = AdminServer(router, self.metrics)
            await self.admin.start(*admin)
        self.observe = chain(
            self.metrics.observe if self.metrics is not None else None, self.access_log
        )

    async def close(self) -> None:
        self.observe = None
        if self.admin is not None:
            await self.admin.close()
        if self.access_log is not None:
            await asyncio.to_thread(self.access_log.close)


# --- client side, for `hakit status` -------------------------------------------------------


def admin_url(admin_listen: str, path: str) -> str:
    """The URL to reach ``admin_listen`` from this machine (wildcard hosts -> loopback)."""
    host, port = parse_listen(admin_listen)
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def read_router_view(admin_listen: str, timeout: float = 2.0) -> tuple[dict[str, Any] | None, str]:
    """The router's ``/nodes`` document, or (None, why it could not be read)."""
    import httpx

    try:
        response = httpx.get(admin_url(admin_listen, "/nodes"), timeout=timeout)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if not isinstance(document, dict) or not isinstance(document.get("nodes"), dict):
        return None, "the answer is not a router /nodes document"
    return document, ""


def router_columns(document: Mapping[str, Any], node: str) -> tuple[str, str, str]:
    """(routable?, in-flight, requests) of ``node`` for the status table."""
    entry = document["nodes"].get(node)
    if not isinstance(entry, Mapping):
        return "-", "-", "-"
    if entry.get("down_mark"):
        routable = "no (down mark)"
    elif entry.get("routable"):
        routable = "yes"
    else:
        routable = "no"
    return routable, str(entry.get("in_flight", "-")), str(entry.get("requests", "-"))
