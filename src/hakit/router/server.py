"""The router: listening socket, cluster-state refresh, backend choice, shutdown.

The data plane lives in http.py / exchange.py / upstream.py; this module owns
the state they decide on: the last ``ClusterView`` (read every
``router.state_poll_interval`` in a dedicated thread, since reading the store
blocks) and the passive down marks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hakit.config import Config, NodeConfig
from hakit.coord.view import ClusterView
from hakit.errors import HakitError
from hakit.router.exchange import ExchangeHooks
from hakit.router.headers import RequestHead
from hakit.router.http import ClientConnection
from hakit.router.limits import ProxyLimits
from hakit.router.pages import CannedResponse, maintenance_page, prefers_json
from hakit.router.pool import choose_backend, down_mark_for, prune_down
from hakit.router.upstream import UpstreamPool

log = logging.getLogger("hakit.router")

ViewSource = Callable[[], ClusterView]

EMPTY_VIEW = ClusterView(lease=None, nodes={}, read_at=0.0)


class Router:
    """An HTTP/1.1 reverse proxy in front of the cluster's active node(s).

    ``view_source`` is called from one dedicated thread (never concurrently),
    every ``cfg.router.state_poll_interval``; if it raises, the last view is
    kept (its lease still expires on time, see pool.choose_backend).
    """

    def __init__(
        self,
        cfg: Config,
        view_source: ViewSource,
        *,
        limits: ProxyLimits | None = None,
        hooks: ExchangeHooks | None = None,
    ) -> None:
        self.cfg = cfg
        self.limits = limits or ProxyLimits()
        self.hooks = hooks or ExchangeHooks()
        self.pool = UpstreamPool(self.limits)
        self._view_source = view_source
        self._view = EMPTY_VIEW
        self._down: dict[str, float] = {}
        self._down_since: dict[str, float] = {}  # monotonic time each mark was taken
        self._turn = 0
        self._server: asyncio.Server | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._clients: set[ClientConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._view_error: str | None = None
        retry_after = cfg.router.retry_after
        self._pages = {
            False: maintenance_page(retry_after, None),
            True: maintenance_page(retry_after, "application/json"),
        }

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Read the cluster once, then listen; returns the bound (host, port)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hakit-router-view")
        await self.refresh()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: ClientConnection(self, self), host or None, port, backlog=1024
            )
        except OSError as error:
            await self.close()
            raise HakitError(
                f"router: cannot listen on {host}:{port} ({error.strerror or error}); "
                "is another router or program using that port? Change router.listen "
                "in the config or stop the other program."
            ) from error
        self._refresher = asyncio.create_task(self._refresh_forever(), name="router-refresh")
        bound = self._server.sockets[0].getsockname()
        log.info("router listening on %s:%s (mode %s)", bound[0], bound[1], self.cfg.cluster.mode)
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop listening, close every connection, stop the refresh."""
        if self._server is not None:
            self._server.close()
        if self._refresher is not None:
            self._refresher.cancel()
        tasks = [*self._tasks, *([self._refresher] if self._refresher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in list(self._clients):
            client.abort()
        self.pool.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._server = self._refresher = self._executor = None

    # --- cluster state ------------------------------------------------------------------

    @property
    def view(self) -> ClusterView:
        return self._view

    @property
    def down_marks(self) -> dict[str, float]:
        """Passive down marks: node name -> the record's updated_at when it failed."""
        return dict(self._down)

    async def refresh(self) -> None:
        """Read the cluster view now (tests call this instead of waiting a poll)."""
        if self._executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
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
        self._view = view
        self._expire_marks(view)

    async def _refresh_forever(self) -> None:
        interval = max(self.cfg.router.state_poll_interval, 0.01)
        while True:  # ends when cancelled by close()
            await asyncio.sleep(interval)
            await self.refresh()

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
        self._turn += 1
        return choose_backend(
            self._view, self.cfg, self._down, time.time(), turn=self._turn, exclude=exclude
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

    def maintenance(self, request: RequestHead) -> CannedResponse:
        return self._pages[prefers_json(request.accept)]

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- ConnectionRegistry -----------------------------------------------------------------

    def client_opened(self, conn: ClientConnection) -> None:
        self._clients.add(conn)

    def client_closed(self, conn: ClientConnection) -> None:
        self._clients.discard(conn)


async def run_router(
    cfg: Config,
    view_source: ViewSource,
    ready: Callable[[str, int], object] | None = None,
) -> None:
    """Serve on ``cfg.router.listen`` until cancelled; ``ready(host, port)`` once listening."""
    host, port = cfg.router.listen_address
    router = Router(cfg, view_source)
    try:
        bound = await router.start(host, port)
        if ready is not None:
            ready(*bound)
        await asyncio.Future()  # until cancelled
    finally:
        await router.close()
