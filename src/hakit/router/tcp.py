"""A plain TCP failover proxy (``[[tcp_proxy]]``), e.g. in front of several LDAP mirrors.

Each NEW connection goes to the first healthy upstream in the configured
order; connections already open stay where they are. Upstream health uses
the router's check machine (health.py): active checks (a connect, or
send/expect) every ``interval`` with ``fall``/``rise``, plus a passive mark:
a failed connect marks the upstream DOWN at once and the next one is tried.

``failback = false`` (default): once new connections moved to another
upstream they stay there even when an earlier one is healthy again, until
that one fails; then the first healthy upstream in order takes over (the
order is the admin's preference). ``failback = true``: always the first
healthy upstream.

The data path is two asyncio Protocols per connection, forwarding bytes as
they come: when one side's write buffer fills, the other side stops reading
(backpressure both ways); an EOF is passed on as a half-close.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any, cast

from hakit.config import TcpCheck, TcpProxyConfig
from hakit.errors import HakitError
from hakit.router.checks import encode_send, tcp_check
from hakit.router.health import HealthBoard, HealthState, Result, Transition, dead

log = logging.getLogger("hakit.tcp_proxy")


def choose_upstream(
    order: Sequence[str],
    routable: Callable[[str], bool],
    current: str | None,
    failback: bool,
    exclude: Collection[str] = (),
) -> str | None:
    """The upstream for a new connection, or None: close it at once.

    ``current`` is where new connections went last; without failback it
    keeps them while it is routable.
    """
    if not failback and current is not None and current not in exclude and routable(current):
        return current
    for name in order:
        if name not in exclude and routable(name):
            return name
    return None


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; forwards what it reads to ``peer``."""

    def __init__(self, proxy: TcpProxy, peer: _Side | None = None, name: str = "") -> None:
        self.proxy = proxy
        self.peer = peer
        self.name = name  # the upstream's name on an upstream side, "" on a client side
        self.transport: asyncio.Transport | None = None
        self.eof = False  # this side sent us EOF
        self.closed = False
        self.early: list[bytes] = []  # a client's bytes read before its upstream connected

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        if self.peer is None:  # a client: hold its bytes until an upstream is connected
            transport.pause_reading()
            self.proxy._accepted(self)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        elif self.transport is not None:
            # uvloop starts reading after connection_made even when it paused: keep
            # this one read and pause again (now effective) until the upstream is there.
            self.early.append(data)
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None:
            return True  # a client before its upstream connected: passed on then
        if peer.transport is None or peer.eof:
            self._close_both()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()  # sent after what is still buffered
            return True  # keep our own write direction open for the answer
        self._close_both()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.close()  # flushes what is buffered first
        if peer is None or peer.closed:
            self.proxy._finished(self)

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()

    # --- helpers ------------------------------------------------------------------------

    def itself(self) -> _Side:
        """A protocol factory answering this very protocol (for create_connection)."""
        return self

    def _close_both(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                side.transport.close()

    def abort(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                side.transport.abort()


class TcpProxy:
    """One ``[[tcp_proxy]]`` entry: listener, upstream checks, connections."""

    def __init__(self, cfg: TcpProxyConfig) -> None:
        self.cfg = cfg
        self.order = tuple(cfg.upstreams)
        self._addresses = dict(zip(cfg.upstreams, cfg.upstream_addresses, strict=True))
        self.health = HealthBoard(cfg.fall, cfg.rise, self.order)
        self.current: str | None = None  # where new connections went last
        self._send = encode_send(cfg.send) if cfg.check is TcpCheck.SEND_EXPECT else b""
        self._expect = (
            re.compile(cfg.expect) if cfg.check is TcpCheck.SEND_EXPECT and cfg.expect else None
        )
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._clients: set[_Side] = set()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, host: str | None = None, port: int | None = None) -> tuple[str, int]:
        """Listen (on ``listen`` unless given), then check the upstreams; the bound address."""
        cfg_host, cfg_port = self.cfg.listen_address
        host = cfg_host if host is None else host
        port = cfg_port if port is None else port
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Side(self), host or None, port, backlog=1024
            )
        except OSError as error:
            await self.close()
            raise HakitError(
                f"tcp proxy {self.cfg.name}: cannot listen on {host}:{port} "
                f"({error.strerror or error}); is another program using that port? "
                "Change its listen address in the config or stop the other program."
            ) from error
        for name in self.order:
            self._spawn(self._check_forever(name), f"tcp-proxy-{self.cfg.name}-check-{name}")
        bound = self._server.sockets[0].getsockname()
        log.info(
            "tcp proxy %s listening on %s:%s, upstreams %s (failback %s)",
            self.cfg.name,
            bound[0],
            bound[1],
            ", ".join(self.order),
            "on" if self.cfg.failback else "off",
        )
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop listening and checking, close every connection."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in list(self._clients):
            client.abort()
        self._clients.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def connections(self) -> int:
        """Connections open now (accepted, not yet fully closed)."""
        return len(self._clients)

    def flows(self) -> list[dict[str, object]]:
        """Each connected pair: its upstream and flow control state (observability, tests)."""
        shown: list[dict[str, object]] = []
        for client in list(self._clients):
            upstream = client.peer
            if upstream is None or client.transport is None or upstream.transport is None:
                continue
            shown.append(
                {
                    "upstream": upstream.name,
                    "client_reading": client.transport.is_reading(),
                    "upstream_reading": upstream.transport.is_reading(),
                    "to_client_buffered": client.transport.get_write_buffer_size(),
                    "to_upstream_buffered": upstream.transport.get_write_buffer_size(),
                }
            )
        return shown

    # --- choice --------------------------------------------------------------------------

    def choose(self, exclude: Collection[str] = ()) -> str | None:
        return choose_upstream(
            self.order, self.health.routable, self.current, self.cfg.failback, exclude
        )

    def _connected_to(self, name: str) -> None:
        if name != self.current:
            if self.current is not None:
                log.warning(
                    "tcp proxy %s: new connections now go to %s (%s is %s)",
                    self.cfg.name,
                    name,
                    self.current,
                    self.health.state(self.current),
                )
            self.current = name

    # --- connections ---------------------------------------------------------------------

    def _accepted(self, client: _Side) -> None:
        self._clients.add(client)
        self._spawn(self._connect(client), f"tcp-proxy-{self.cfg.name}-connect")

    def _finished(self, side: _Side) -> None:
        self._clients.discard(side)
        if side.peer is not None:
            self._clients.discard(side.peer)

    async def _connect(self, client: _Side) -> None:
        loop = asyncio.get_running_loop()
        tried: list[str] = []
        while not client.closed:
            name = self.choose(tried)
            if name is None:
                if client.transport is not None:
                    client.transport.close()  # nobody can serve: say so at once
                if tried:
                    log.warning(
                        "tcp proxy %s: no upstream accepted a connection (tried %s)",
                        self.cfg.name,
                        ", ".join(tried),
                    )
                self._clients.discard(client)
                return
            host, port = self._addresses[name]
            upstream = _Side(self, peer=client, name=name)
            try:
                async with asyncio.timeout(self.cfg.connect_timeout):
                    await loop.create_connection(upstream.itself, host, port)
            except (OSError, TimeoutError) as error:
                tried.append(name)
                reason = (
                    f"no connection within {self.cfg.connect_timeout:g}s"
                    if isinstance(error, TimeoutError)
                    else f"connect failed: {error.strerror or error}"
                )
                self._feed(name, dead(reason))
                continue
            if client.closed:  # the client left while we connected
                upstream.abort()
                return
            client.peer = upstream
            self._connected_to(name)
            assert client.transport is not None and upstream.transport is not None
            if client.early:
                upstream.transport.writelines(client.early)
                client.early.clear()
            if not client.eof:
                client.transport.resume_reading()
            elif upstream.transport.can_write_eof():
                upstream.transport.write_eof()
            else:
                client.transport.close()
            return

    # --- checks ------------------------------------------------------------------------

    async def _check_forever(self, name: str) -> None:
        host, port = self._addresses[name]
        while True:  # until cancelled by close()
            result = await tcp_check(host, port, self.cfg.timeout, self._send, self._expect)
            self._feed(name, result)
            await asyncio.sleep(self.cfg.interval)

    def _feed(self, name: str, result: Result) -> Transition | None:
        transition = self.health.feed(name, result, time.monotonic())
        if transition is not None:
            level = logging.WARNING if transition.new is HealthState.DOWN else logging.INFO
            log.log(
                level,
                "tcp proxy %s: upstream %s %s -> %s: %s",
                self.cfg.name,
                name,
                transition.old,
                transition.new,
                transition.reason,
            )
        return transition

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def run_tcp_proxy(
    cfg: TcpProxyConfig, ready: Callable[[str, int], object] | None = None
) -> None:
    """Serve one ``[[tcp_proxy]]`` until cancelled; ``ready(host, port)`` once listening."""
    proxy = TcpProxy(cfg)
    try:
        bound = await proxy.start()
        if ready is not None:
            ready(*bound)
        await asyncio.Future()  # until cancelled
    finally:
        await proxy.close()
