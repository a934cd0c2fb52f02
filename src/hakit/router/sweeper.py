"""The client connections' read timeouts, checked by one timer for all of them.

Not per request (a tick every ``interval`` seconds), so not compiled
(hakit/router/native.py): it calls each connection's ``sweep``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

from hakit.router.http import ClientConnection

log = logging.getLogger("hakit.router")


class ConnectionSweeper:
    """Checks every client connection's read timeout every ``interval`` seconds.

    One timer for all connections rather than one per connection and request:
    the per-request cost is an attribute store, and a timeout fires at most two
    intervals late, never early.
    """

    def __init__(
        self,
        connections: Collection[ClientConnection],
        interval: float,
        also: Callable[[], None] | None = None,
    ) -> None:
        """``also``: called on every tick too (the upstream pool's idle expiry)."""
        self._connections = connections
        self._interval = interval
        self._also = also
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(self._interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for conn in list(self._connections):
            try:
                conn.sweep(now)
            except Exception:  # one broken connection must not stop the timeouts of all
                log.exception("router: checking a connection's timeout failed")
                conn.abort()
        if self._also is not None:
            try:
                self._also()
            except Exception:
                log.exception("router: periodic check failed")
        self._handle = self._loop.call_later(self._interval, self._tick)
