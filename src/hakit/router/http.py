"""The client side of the proxy: one asyncio Protocol per client connection.

Requests are parsed with httptools (llhttp) and handed to an ``Exchange``
each. Exchanges run one at a time per connection, in order (HTTP/1.1
pipelining answers in request order); a request pipelined behind a running
one waits with reading paused, so at most one read's worth of it is held.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol, cast

import httptools

from hakit.router.exchange import Exchange, ProxyContext
from hakit.router.headers import BadRequest, Header, request_head
from hakit.router.pages import error_page

log = logging.getLogger("hakit.router")


class HeadTooLarge(Exception):
    """Request line plus headers exceed ``limits.max_head_bytes``: HTTP 431."""


class ConnectionRegistry(Protocol):
    """Where the router keeps its open client connections (to close them on shutdown)."""

    def client_opened(self, conn: ClientConnection) -> None: ...

    def client_closed(self, conn: ClientConnection) -> None: ...


class ClientConnection(asyncio.Protocol):
    def __init__(self, ctx: ProxyContext, registry: ConnectionRegistry) -> None:
        self._ctx = ctx
        self._registry = registry
        self._limits = ctx.limits
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client_ip = ""
        self._pause_reasons: set[str] = set()
        self._write_paused = False
        self._queue: deque[Exchange] = deque()  # [0] runs; the rest wait their turn
        self._incoming: Exchange | None = None  # the request whose body is being read
        self._stopped = False  # read no further requests on this connection
        self._idle_timer: asyncio.TimerHandle | None = None
        # The request head being parsed:
        self._in_head = False
        self._messages = 0
        self._url: list[bytes] = []
        self._headers: list[Header] = []
        self._head_bytes = 0  # exact: URL and completed headers
        self._head_fed = 0  # raw bytes fed while in the head (catches one giant header)

    # --- used by exchanges (ClientSide) -------------------------------------------

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self._transport is not None:
            self._transport.writelines(parts)

    def pause_reading(self, reason: str) -> None:
        transport = self._transport
        if not self._pause_reasons and transport is not None and not transport.is_closing():
            transport.pause_reading()
        self._pause_reasons.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        transport = self._transport
        if not self._pause_reasons and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        if not self._queue or self._queue[0] is not exchange:
            return  # the connection was lost meanwhile
        self._queue.popleft()
        # A stopped connection still answers the requests it already read.
        if not keep_alive or (self._stopped and not self._queue):
            self._stop_reading()
            self.close()
            return
        if len(self._queue) <= 1:
            self.resume_reading("pipeline")
        if self._queue:
            self._queue[0].start()
        else:
            self._arm_idle_timer()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Close once everything written so far is sent."""
        for exchange in list(self._queue):
            exchange.client_lost()
        self._queue.clear()
        if self._transport is not None:
            self._transport.close()

    # --- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(
            high=self._limits.write_buffer_high, low=self._limits.write_buffer_low
        )
        peer = transport.get_extra_info("peername")
        self._client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        self._registry.client_opened(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stopped = True
        self._cancel_idle_timer()
        for exchange in list(self._queue):
            exchange.client_lost()
        self._queue.clear()
        self._incoming = None
        self._registry.client_closed(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._queue:
            self._queue[0].client_write_paused()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._queue:
            self._queue[0].client_write_resumed()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        before = (self._in_head, self._messages)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request asked to switch protocols; we forwarded it without Upgrade
            # (tunnelling comes later), and the parser cannot read on after it.
            self._stop_reading()
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, HeadTooLarge):
                self._reject(431)
            elif isinstance(cause, BadRequest):
                self._reject(400)
            else:
                log.error("router: request handling failed", exc_info=cause or error)
                self._reject(500)
            return
        except httptools.HttpParserError:
            self._reject(400)
            return
        if self._in_head:
            if before == (True, self._messages):
                self._head_fed += len(data)  # all of it belongs to the same unfinished head
            if self._head_fed > self._limits.max_head_bytes:
                self._reject(431)

    # --- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._messages += 1
        self._url = []
        self._headers = []
        self._head_bytes = 0
        self._head_fed = 0

    def on_url(self, part: bytes) -> None:
        self._url.append(part)
        self._count_head(len(part))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # trailers after a chunked body are dropped for now
            self._headers.append((name, value))
            self._count_head(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_idle_timer()
        method = self._parser.get_method()
        if method == b"CONNECT":
            raise BadRequest("CONNECT is not supported by this router")
        request = request_head(
            method=method,
            target=b"".join(self._url),
            version=self._parser.get_http_version(),
            headers=self._headers,
            keep_alive=self._parser.should_keep_alive(),
            client_ip=self._client_ip,
        )
        exchange = Exchange(self, self._ctx, request)
        self._incoming = exchange
        self._queue.append(exchange)
        if len(self._queue) == 1:
            exchange.start()
        else:
            self.pause_reading("pipeline")

    def on_body(self, data: bytes) -> None:
        if self._incoming is not None:
            self._incoming.request_body(data)

    def on_message_complete(self) -> None:
        exchange, self._incoming = self._incoming, None
        if exchange is None:
            return
        if not exchange.request.keep_alive:
            self._stop_reading()  # the client said this is its last request
        exchange.request_complete()

    # --- helpers ----------------------------------------------------------------------

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._limits.max_head_bytes:
            raise HeadTooLarge()

    def _stop_reading(self) -> None:
        self._stopped = True
        self.pause_reading("stopped")

    def _reject(self, status: int) -> None:
        """The bytes just read are not a valid request: answer ``status`` and close."""
        self._stop_reading()
        broken = self._incoming
        self._incoming = None
        if broken is not None and self._queue and self._queue[0] is broken:
            broken.request_broken(status)  # it answers (or cuts) and closes
            return
        if broken is not None and broken in self._queue:
            self._queue.remove(broken)  # never started; the running one finishes, then close
            return
        if not self._queue:
            self.write(error_page(status).encode(keep_alive=False))
            self.close()

    def _arm_idle_timer(self) -> None:
        self._cancel_idle_timer()
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self._limits.client_idle_timeout, self._idle_expired)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if not self._queue:
            self.close()
