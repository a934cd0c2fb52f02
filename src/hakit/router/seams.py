"""What an exchange (exchange.py) needs from the router that owns it and from the client
connection that carries it: the two seams, as protocols, apart from the exchange itself.

Types only: nothing here runs per request. ``Exchange`` is named for the type checker
alone (a type-only import, so no import cycle at run time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from hakit.config import NodeConfig
from hakit.router.headers import RequestHead
from hakit.router.hooks import ExchangeHooks
from hakit.router.limits import ProxyLimits
from hakit.router.pages import CannedResponse
from hakit.router.upstream import UpstreamPool

if TYPE_CHECKING:
    from hakit.router.exchange import Exchange


class ProxyContext(Protocol):
    """What an exchange needs from the router that owns it."""

    limits: ProxyLimits
    pool: UpstreamPool
    hooks: ExchangeHooks
    hold_body_limit: int  # router.hold_body_limit: a held request's body is read up to this

    def choose(self, request: RequestHead, exclude: Collection[str]) -> NodeConfig | None: ...

    def mark_down(self, node: NodeConfig, error: BaseException) -> None: ...

    def maintenance(self, request: RequestHead, reason: int) -> CannedResponse:
        """The 503 page for ``request``, which no node got; ``reason``: pages.NOT_HELD,
        HELD_OUT or TOO_LARGE."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...

    def hold_limit(self, request: RequestHead) -> float:
        """How long ``request`` may wait for a node (0: not at all): hold_timeout, or
        longer while it waits for its sticky node (sticky_down = "hold")."""
        ...

    async def wait_for_change(self) -> None:
        """Return once the cluster view (or a passive down mark) changed."""
        ...

    def hold_began(self) -> None:
        """A request began to wait for a node (counted as held until ``hold_ended``)."""
        ...

    def hold_ended(self) -> None:
        """A held request stopped waiting: the view changed, its hold ran out, or it ended."""
        ...

    def exchange_ended(self, exchange: Exchange) -> None:
        """Called once per exchange when it ends, however it ends (access log, metrics)."""
        ...


class ClientSide(Protocol):
    """What an exchange needs from the client connection that carries it."""

    write_paused: bool  # its send buffer is full

    def write(self, data: bytes) -> None: ...

    def writelines(self, parts: list[bytes]) -> None: ...

    def pause_reading(self, reason: str) -> None: ...

    def resume_reading(self, reason: str) -> None: ...

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None: ...

    def abort(self) -> None: ...

    def take_transport(self) -> asyncio.Transport | None:
        """Stop handling the connection and hand its transport over (to a tunnel)."""
        ...

    def tunnel_closed(self) -> None:
        """The tunnel that took the transport over has ended."""
        ...
