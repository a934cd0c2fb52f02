"""The router: listening socket, cluster-state refresh, backend choice, shutdown.

The data plane lives in http.py / exchange.py / upstream.py; this module owns
the state they decide on: the last ``ClusterView`` (read every
``router.state_poll_interval`` in a dedicated thread, since reading the store
blocks) and the passive down marks. With a ``store``, it also publishes what its
checks see of each node's data path (pathreport.py, hakit.health.datapath), through
the same thread, with the requests it has in flight to each node and whether it
sees the node draining: a draining node's agent waits for those to end
(hakit.health.datapath.in_flight) before it stops the app, so the count is published
at once when it falls to 0 for a draining node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, cast

from hakit.config import Config, NodeConfig, Sticky, parse_listen
from hakit.coord.view import ClusterView
from hakit.errors import HakitError
from hakit.router import native
from hakit.router.admin import Observability
from hakit.router.balance import track_up
from hakit.router.checks import RouterChecks
from hakit.router.descriptors import raise_open_files_limit
from hakit.router.exchange import Exchange
from hakit.router.headers import RequestHead
from hakit.router.health import HealthBoard
from hakit.router.hold import HOLD, SAFE_METHODS, hold_plan
from hakit.router.hooks import ExchangeHooks
from hakit.router.http import ClientConnection
from hakit.router.limits import ProxyLimits
from hakit.router.pages import (
    AS_JSON,
    FORMS,
    REASONS_503,
    RELOADING,
    RESEND,
    CannedResponse,
    maintenance_page,
    prefers_json,
)
from hakit.router.pathreport import PathReporter, StateStore, executor_runner, router_name
from hakit.router.pool import (
    Standing,
    Verdict,
    down_mark_for,
    draining_nodes,
    eligible_backends,
    prune_down,
    routable_nodes,
    route,
    standing,
    track_drains,
)
from hakit.router.secret import cluster_secret
from hakit.router.sticky import strategy_for
from hakit.router.sweeper import ConnectionSweeper
from hakit.router.tls import RedirectProtocol, server_context
from hakit.router.upstream import UpstreamPool

log = logging.getLogger("hakit.router")

# A sticky hold is granted this much beyond sticky_hold, so that when the held request
# wakes up its hold has surely run out (the exchange's timer and ours use other clocks).
HOLD_MARGIN: Final = 0.05

ViewSource = Callable[[], ClusterView]

EMPTY_VIEW: Final = ClusterView(lease=None, nodes={}, read_at=0.0)


class Router:
    """An HTTP/1.1 reverse proxy in front of the cluster's active node(s).

    ``view_source`` is called from one dedicated thread (never concurrently),
    every ``cfg.router.state_poll_interval``; if it raises, the last view is
    kept (its lease still expires on time, see pool.choose_backend).
    ``store``: where the router publishes its data-path report (the
    coordination store; None: it publishes nothing).
    """

    def __init__(
        self,
        cfg: Config,
        view_source: ViewSource,
        *,
        limits: ProxyLimits | None = None,
        hooks: ExchangeHooks | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.limits = limits or ProxyLimits.from_config(cfg.router)
        # Stickiness (sticky.py): which node a request is pinned to, and its cookie rewriting.
        key = cluster_secret(cfg) if cfg.router.sticky is Sticky.LB_COOKIE else None
        self.sticky = strategy_for(cfg, key)
        self.hooks = hooks or self.sticky or ExchangeHooks()
        # The router's own /status checks of each node (checks.py) feed this board;
        # None: the records alone decide.
        self.checks = RouterChecks(cfg, lambda: self._view, on_change=self.notify_change)
        self.health: HealthBoard | None = self.checks.board
        self._store = store
        self.paths: PathReporter | None = None  # the data-path report, once started
        # Requests in flight per node (least-outstanding); which node each request is
        # counted for is kept on the request (RequestHead.counted_for).
        self.in_flight: dict[str, int] = {node.name: 0 for node in cfg.nodes}
        # id(request) -> (request, sticky hold deadline, monotonic); the request is kept so
        # that its id cannot be reused by another one while the entry exists.
        self._holds: dict[int, tuple[RequestHead, float]] = {}
        self._drain_began: dict[str, float] = {}  # node -> monotonic time its drain was seen
        self._up_since: dict[str, float | None] | None = None  # slow start, from the records
        self._standing: tuple[ClusterView, Standing] | None = None  # pool.standing, per view
        self.pool = UpstreamPool(self.limits)
        self._view_source = view_source
        self._view = EMPTY_VIEW
        # Until when (monotonic) the view's lease is valid: worked out once per view, so the
        # per-request check is one comparison (ClusterView.lease_left runs interpreted).
        self._lease_until = float("-inf")
        self._down: dict[str, float] = {}
        self._down_since: dict[str, float] = {}  # monotonic time each mark was taken
        self._turn = 0
        self._server: asyncio.Server | None = None
        self._redirect: asyncio.Server | None = None  # router.redirect_http (tls.py)
        self._sweeper: ConnectionSweeper | None = None  # client read timeouts (http.py)
        self._refresher: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._clients: set[ClientConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._view_error: str | None = None
        # Set (and replaced) whenever the view or the down marks change: held requests wait on it.
        self._changed = asyncio.Event()
        self.requests_held = 0  # requests waiting for a node now (/metrics, tests)
        self.hold_body_limit: int = cfg.router.hold_body_limit  # ProxyContext
        self.obs = Observability(cfg)  # access log, metrics, admin port (admin.py)
        retry_after = cfg.router.retry_after
        # The 503 pages by (reason, form): pages.maintenance_page.
        self._pages = {
            (reason, form): maintenance_page(
                retry_after, reason=reason, form=form, body_limit=self.hold_body_limit
            )
            for reason in REASONS_503
            for form in FORMS
        }

    # --- lifecycle -------------------------------------------------------------------

    async def start(
        self, host: str, port: int, *, admin: tuple[str, int] | None = None
    ) -> tuple[str, int]:
        """Read the cluster once, then listen; returns the bound (host, port).

        ``admin``: where to serve /metrics and /nodes instead of router.admin_listen.
        """
        tls = self.cfg.router
        listen_host = host
        context = (
            server_context(tls.tls_cert, tls.tls_key) if tls.tls_cert and tls.tls_key else None
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hakit-router-view")
        await self.refresh()
        # Kept: asyncio.get_running_loop() costs a getpid() system call per call.
        loop = self._loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: ClientConnection(self, self), host or None, port, backlog=1024, ssl=context
            )
            if tls.redirect_http is not None:
                https_port = bound_address(self._server)[1]
                host, port = parse_listen(tls.redirect_http)  # named in the error below
                self._redirect = await loop.create_server(
                    lambda: RedirectProtocol(https_port, self.limits), host, port
                )
        except OSError as error:
            await self.close()
            raise HakitError(
                f"router: cannot listen on {host}:{port} ({error.strerror or error}); "
                "is another router or program using that port? Change router.listen "
                "(or router.redirect_http) in the config or stop the other program."
            ) from error
        try:
            await self.obs.start(self, admin)
        except HakitError:
            await self.close()
            raise
        self._refresher = asyncio.create_task(self._refresh_forever(), name="router-refresh")
        bound = bound_address(self._server)
        if self._store is not None:
            self.paths = PathReporter(
                self.cfg,
                self.checks.paths,
                self._store,
                executor_runner(self._executor),
                load=self._load,
                lease=self.checks.lease_seen,
            )
            self.checks.on_path_change = self.paths.changed
            self.paths.start(router_name(listen_host, int(bound[1])))
        self.checks.start()
        self._sweeper = ConnectionSweeper(
            self._clients, self.limits.sweep_interval, also=self.pool.sweep
        )
        self._sweeper.start()
        log.info(
            "router listening on %s:%s (cluster mode %s; router code %s)",
            bound[0],
            bound[1],
            self.cfg.cluster.mode,
            native.mode,
        )
        return bound

    async def close(self) -> None:
        """Stop listening, close every connection, stop the refresh."""
        if self._server is not None:
            self._server.close()
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        if self._refresher is not None:
            self._refresher.cancel()
        tasks = [*self._tasks, *([self._refresher] if self._refresher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.checks.close()
        if self.paths is not None:
            await self.paths.close()  # before the executor it writes through goes
            self.paths = None
        for client in list(self._clients):
            client.abort()
        self.pool.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        await self.obs.close()  # last: the exchanges ended above are logged too
        self._server = self._refresher = self._executor = None

    # --- cluster state ------------------------------------------------------------------

    @property
    def view(self) -> ClusterView:
        return self._view

    @property
    def clients(self) -> Collection[ClientConnection]:
        """Open client connections (read by the admin server)."""
        return self._clients

    def eligible(self) -> tuple[NodeConfig, ...]:
        """Nodes a new request may go to now (for /nodes; keep in step with choose())."""
        return eligible_backends(self._view, self.cfg, self._down, time.time(), health=self.health)

    @property
    def down_marks(self) -> dict[str, float]:
        """Passive down marks: node name -> the record's updated_at when it failed."""
        return dict(self._down)

    async def refresh(self) -> None:
        """Read the cluster view now (tests call this instead of waiting a poll)."""
        if self._executor is None:
            return
        loop = asyncio.get_running_loop()
        quick = getattr(self._view_source, "quick", None)  # viewreader.py: the store unchanged?
        try:
            unchanged: ClusterView | None = quick() if quick is not None else None
            if unchanged is not None:
                view = unchanged
            else:
                view = await loop.run_in_executor(self._executor, self._view_source)
        except Exception as error:  # the store is unreadable: keep the last view
            message = f"{type(error).__name__}: {error}"
            if message != self._view_error:
                log.warning(
                    "router: cannot read the cluster state (%s); keeping the last view", message
                )
            self._view_error = message
            return
        if self._view_error is not None:
            log.info("router: cluster state readable again")
            self._view_error = None
        previous, marks = self._view, len(self._down)
        self._view = view
        self._lease_until = time.monotonic() + view.lease_left(time.time())
        self.checks.observe(view)  # a new app instance resets the health verdict
        self._expire_marks(view)
        self._track(view)
        if view.lease != previous.lease or view.nodes != previous.nodes or len(self._down) < marks:
            self.notify_change()

    def notify_change(self) -> None:
        """Wake the requests waiting for a node (view changed, a node may serve again)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_for_change(self) -> None:
        """Return at the next ``notify_change`` (ProxyContext; used by held requests)."""
        await self._changed.wait()

    def hold_began(self) -> None:
        """A request began to wait for a node (ProxyContext)."""
        self.requests_held += 1

    def hold_ended(self) -> None:
        """A held request stopped waiting (ProxyContext)."""
        self.requests_held -= 1

    @property
    def hold_timeout(self) -> float:
        return self.cfg.router.hold_timeout

    def hold_limit(self, request: RequestHead) -> float:
        """How long ``request`` may wait for a node (ProxyContext).

        hold_timeout; while the request is held for its sticky node
        (sticky_down = "hold"), at least sticky_hold.
        """
        held = self._holds.get(id(request)) if self._holds else None
        if held is not None and held[0] is request:
            return max(self.cfg.router.hold_timeout, self.cfg.router.sticky_hold + HOLD_MARGIN)
        return self.cfg.router.hold_timeout

    def _track(self, view: ClusterView) -> None:
        """Note when drains begin (their deadline) and when nodes come back (slow start)."""
        clock = time.monotonic()
        began = track_drains(self._drain_began, draining_nodes(view, self.health), clock)
        for node in began.keys() - self._drain_began.keys():
            log.info(
                "router: %s is draining: its sticky users stay up to %ss, new users go elsewhere",
                node,
                self.cfg.router.drain_timeout,
            )
        for node in self._drain_began.keys() - began.keys():
            log.info("router: %s is no longer draining", node)
        if began.keys() != self._drain_began.keys() and self.paths is not None:
            self.paths.changed()  # the node's agent waits for us to see its drain
        self._drain_began = began
        if self.cfg.router.slowstart > 0:
            self._up_since = track_up(self._up_since, routable_nodes(view), clock)

    async def _refresh_forever(self) -> None:
        """Refresh every poll interval, or at once when the store says it changed
        (viewreader.ViewReader.follow: a store that pushes changes wakes this loop; a
        wake during a refresh makes the next one start at once)."""
        interval = max(self.cfg.router.state_poll_interval, 0.01)
        loop = asyncio.get_running_loop()
        sleeping: list[asyncio.Future[None]] = []  # the current sleep, if any
        pending = [False]  # woken while refreshing

        def wake_now() -> None:  # on the event loop
            if sleeping and not sleeping[0].done():
                sleeping[0].set_result(None)
            else:
                pending[0] = True

        def on_change() -> None:  # the follower's thread
            loop.call_soon_threadsafe(wake_now)

        follow = getattr(self._view_source, "follow", None)
        stop = follow(on_change) if follow is not None else None
        try:
            while True:  # ends when cancelled by close()
                if not pending[0]:
                    sleep: asyncio.Future[None] = loop.create_future()
                    sleeping[:] = [sleep]
                    timer = loop.call_later(interval, wake_now)
                    try:
                        await sleep
                    finally:
                        timer.cancel()
                        sleeping.clear()
                pending[0] = False
                await self.refresh()
        finally:
            if stop is not None:
                stop()

    def _expire_marks(self, view: ClusterView) -> None:
        kept = prune_down(view, self._down)
        oldest = time.monotonic() - self.limits.down_mark_max_age
        kept = {node: mark for node, mark in kept.items() if self._down_since[node] >= oldest}
        for node in self._down.keys() - kept.keys():
            log.info("router: trying %s again (its state changed or the mark aged out)", node)
            self._down_since.pop(node, None)
        self._down = kept

    # --- ProxyContext (used by exchanges) -------------------------------------------------

    def choose(self, request: RequestHead, exclude: Collection[str]) -> NodeConfig | None:
        """The node for ``request`` (pool.route), counted in flight until the exchange ends.

        None: nobody may serve it now, or it waits for its sticky node (hold_limit).
        """
        self._turn += 1
        sticky = self.sticky.node_for(request) if self.sticky is not None else None
        chosen: NodeConfig | Verdict | None = None
        if not self._holds:
            chosen = self._usual_route(sticky, exclude)
        if chosen is None:
            key = id(request)
            clock = time.monotonic()
            held = self._holds.get(key) if sticky is not None and self._holds else None
            if held is not None and held[0] is not request:
                held = None
            chosen = self._route(sticky, exclude, clock, held is not None and clock >= held[1])
            if chosen is Verdict.HOLD:
                if hold_plan(request, 0, self.hold_body_limit) == HOLD:
                    if held is None:
                        self._holds[key] = (request, clock + self.cfg.router.sticky_hold)
                else:
                    # Its body is on the way and another node can take it now: moved at
                    # once rather than buffered while it waits for its own node.
                    chosen = self._route(sticky, exclude, clock, True)
        # In flight per node (least-outstanding, drains): the count is kept on the request.
        previous = request.counted_for
        if previous is not None:
            self._left(previous)
        if isinstance(chosen, Verdict):
            request.counted_for = None
            return None
        request.counted_for = chosen.name
        self.in_flight[chosen.name] += 1
        return chosen

    def _standing_now(self) -> Standing:
        """``pool.standing`` of the current view, computed once per view."""
        view, known = self._standing or (None, None)
        if view is not self._view or known is None:  # a new view: what its records say, once
            known = standing(self._view, self.cfg)
            self._standing = (self._view, known)
        return known

    def _load(self) -> tuple[dict[str, int], Collection[str]]:
        """Requests in flight per node, and the nodes seen draining (the data-path report)."""
        return dict(self.in_flight), set(self._drain_began)

    def _left(self, node: str) -> None:
        """A request in flight to ``node`` ended (or moved on)."""
        left = self.in_flight[node] - 1
        self.in_flight[node] = left
        if left == 0 and self._drain_began:
            self._left_draining(node)

    def _usual_route(self, sticky: str | None, exclude: Collection[str]) -> NodeConfig | None:
        """The usual case, decided without pool.route's general machinery (same answer).

        One node serves, nothing is marked down, draining or excluded, and the
        request is new, pinned to that node, or pinned to a node the mode no
        longer lets serve (then moved: pool.sticky_target). None: ask ``route``.
        """
        known = self._standing_now()
        base = known.base
        if len(base.serving) != 1 or base.draining or exclude or self._down:
            return None
        node = base.serving[0]
        if sticky is not None and sticky != node.name and sticky in base.members:
            return None
        if known.lease is not None and not time.monotonic() < self._lease_until:
            return None
        health = self.health
        if health is not None and not health.routable(node.name):
            return None
        return node

    def _route(
        self, sticky: str | None, exclude: Collection[str], clock: float, hold_over: bool
    ) -> NodeConfig | Verdict:
        return route(
            self._view,
            self.cfg,
            self._down,
            time.time(),
            clock=clock,
            sticky=sticky,
            exclude=exclude,
            health=self.health,
            in_flight=self.in_flight,
            turn=self._turn,
            drain_began=self._drain_began,
            up_since=self._up_since,
            hold_over=hold_over,
            known=self._standing_now(),
        )

    def mark_down(self, node: NodeConfig, error: BaseException) -> None:
        if node.name not in self._down:
            log.warning(
                "router: cannot connect to %s (%s:%s): %s; not routing to it "
                "until its state changes",
                node.name,
                node.host,
                node.port,
                error or error.__class__.__name__,
            )
        self._down[node.name] = down_mark_for(self._view, node.name)
        self._down_since[node.name] = time.monotonic()
        if self.obs.metrics is not None:
            self.obs.metrics.connect_failed(node.name)

    def maintenance(self, request: RequestHead, reason: int) -> CannedResponse:
        if self.obs.metrics is not None:
            self.obs.metrics.maintenance_page()
        if prefers_json(request.accept):
            form = AS_JSON
        else:
            form = RELOADING if request.method in SAFE_METHODS else RESEND
        return self._pages[(reason, form)]

    def exchange_ended(self, exchange: Exchange) -> None:
        request = exchange.request
        counted = request.counted_for
        if counted is not None:
            request.counted_for = None
            left = self.in_flight[counted] - 1
            self.in_flight[counted] = left
            if left == 0 and self._drain_began:  # _left, inlined: every request ends here
                self._left_draining(counted)
        if self._holds:
            self._holds.pop(id(request), None)
        observe = self.obs.observe
        if observe is not None:
            try:
                observe(exchange)
            except Exception:  # a logging bug must never break the data plane
                log.exception("router: observing a request failed")

    def _left_draining(self, node: str) -> None:
        """No request left in flight to ``node``: if it drains, publish that at once (its
        agent waits for it before stopping the app: hakit.health.datapath.in_flight)."""
        if node in self._drain_began and self.paths is not None:
            self.paths.changed()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- ConnectionRegistry -----------------------------------------------------------------

    def client_opened(self, conn: ClientConnection) -> None:
        self._clients.add(conn)

    def client_closed(self, conn: ClientConnection) -> None:
        self._clients.discard(conn)


def bound_address(server: asyncio.AbstractServer) -> tuple[str, int]:
    """The host and port ``server`` listens on (its first socket).

    Read untyped: uvloop's ``Server.sockets`` is a list where typeshed says a
    tuple, and this module runs compiled (hakit/router/native.py), where a value that
    does not match its declared type raises TypeError.
    """
    sockets: Any = cast(Any, server).sockets
    name = sockets[0].getsockname()
    return str(name[0]), int(name[1])


async def run_router(
    cfg: Config,
    view_source: ViewSource,
    ready: Callable[[str, int], object] | None = None,
    store: StateStore | None = None,
) -> None:
    """Serve on ``cfg.router.listen`` until cancelled; ``ready(host, port)`` once listening.

    ``store``: the coordination store the data-path report is published to.
    """
    raise_open_files_limit()
    host, port = cfg.router.listen_address
    router = Router(cfg, view_source, store=store)
    try:
        bound = await router.start(host, port)
        if ready is not None:
            ready(*bound)
        await asyncio.Future()  # until cancelled
    finally:
        await router.close()
