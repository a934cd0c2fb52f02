"""One request/response exchange: choose a backend, forward, stream back.

The client connection (http.py) feeds the request in; the backend connection
(upstream.py) feeds the response in through the ``ResponseSink`` methods.
Bodies are never collected: each piece is written on as it arrives, and the
reading side is paused while the writing side's buffer is above its
high-water mark.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Coroutine
from typing import Any, Protocol

from hakit.config import NodeConfig
from hakit.router.headers import (
    CRLF,
    LAST_CHUNK,
    Body,
    Header,
    RequestHead,
    ResponseFraming,
    chunk_prefix,
    client_response_headers,
    encode_head,
    end_to_end,
    response_framing,
    upstream_request_headers,
)
from hakit.router.limits import ProxyLimits
from hakit.router.pages import CannedResponse, error_page
from hakit.router.upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger("hakit.router")

# Bounded retries of one request: stale pooled connections, then other nodes.
MAX_ATTEMPTS = 4


class ExchangeHooks:
    """Per-request seams for rewriting headers (stickiness adds its cookies here).

    Both methods may change ``headers`` in place; the defaults do nothing.
    """

    def request(self, request: RequestHead, backend: NodeConfig, headers: list[Header]) -> None:
        """Called with the headers about to go to ``backend``."""

    def response(
        self, request: RequestHead, backend: NodeConfig, status: int, headers: list[Header]
    ) -> None:
        """Called with the response headers about to go to the client."""


class ProxyContext(Protocol):
    """What an exchange needs from the router that owns it."""

    limits: ProxyLimits
    pool: UpstreamPool
    hooks: ExchangeHooks

    def choose(self, request: RequestHead, exclude: Collection[str]) -> NodeConfig | None: ...

    def mark_down(self, node: NodeConfig, error: BaseException) -> None: ...

    def maintenance(self, request: RequestHead) -> CannedResponse: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...


class ClientSide(Protocol):
    """What an exchange needs from the client connection that carries it."""

    @property
    def write_paused(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def writelines(self, parts: list[bytes]) -> None: ...

    def pause_reading(self, reason: str) -> None: ...

    def resume_reading(self, reason: str) -> None: ...

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None: ...

    def abort(self) -> None: ...


class Exchange:
    def __init__(self, client: ClientSide, ctx: ProxyContext, request: RequestHead) -> None:
        self.request = request
        self._client = client
        self._ctx = ctx
        self._upstream: UpstreamConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._tried: set[str] = set()  # nodes whose connect failed for this request
        self._attempts = 0
        self._fresh_only = False  # a pooled connection went stale: open a new one
        self._pending: list[bytes] = []  # framed request body waiting for a connection
        self._pending_size = 0
        self._body_received = 0
        self._request_done = False
        self._head_sent = False  # the client got a response head (no more error pages)
        self._response_done = False
        self._out = ResponseFraming(Body.NONE, request.keep_alive)
        self.finished = False
        self._cancelled = False

    # --- start: choose a backend, get a connection -------------------------

    def start(self) -> None:
        self._attempts += 1
        backend = self._ctx.choose(self.request, self._tried)
        if backend is None:
            if self._tried and not self.request.idempotent:
                # Say plainly that it failed rather than showing a page that reloads itself.
                self._respond(error_page(502, self.request.accept))
            else:
                self._respond(self._ctx.maintenance(self.request))
            return
        conn = None if self._fresh_only else self._ctx.pool.take(backend)
        if conn is not None:
            self._attach(conn)
        else:
            self._task = self._ctx.spawn(self._connect(backend))

    async def _connect(self, backend: NodeConfig) -> None:
        try:
            conn = await self._ctx.pool.connect(backend)
        except (OSError, TimeoutError) as error:
            if self._cancelled:
                return
            log.debug("connect to %s failed: %r", backend.name, error)
            self._ctx.mark_down(backend, error)
            self._tried.add(backend.name)
            self._fresh_only = False
            if self._attempts >= MAX_ATTEMPTS:
                self._respond(error_page(502, self.request.accept))
            else:
                self.start()
            return
        if self._cancelled:
            conn.close()
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self._upstream = conn
        conn.attach(self, self.request.method)
        request = self.request
        default_host = f"{conn.node.host}:{conn.node.port}".encode()
        headers = upstream_request_headers(request, default_host)
        self._ctx.hooks.request(request, conn.node, headers)
        head = encode_head(b"%s %s HTTP/1.1" % (request.method, request.target), headers)
        conn.writelines([head, *self._pending])
        self._pending, self._pending_size = [], 0
        self._client.resume_reading("buffer")
        if self._client.write_paused:
            conn.pause_reading()

    # --- request side (from the client connection) --------------------------

    def request_body(self, data: bytes) -> None:
        self._body_received += len(data)
        if self._response_done or self.finished or not data:
            return  # answered already: the rest is drained (see _finish_when_possible)
        if self.request.body is Body.CHUNKED:
            self._send_request_parts([chunk_prefix(len(data)), data, CRLF])
        else:
            self._send_request_parts([data])

    def request_complete(self) -> None:
        self._request_done = True
        if not (self._response_done or self.finished) and self.request.body is Body.CHUNKED:
            self._send_request_parts([LAST_CHUNK])
        self._finish_when_possible()

    def request_broken(self, status: int) -> None:
        """The rest of the request is unreadable (bad chunk framing, ...): give up."""
        if self.finished:
            return
        self._drop_upstream()
        if self._response_done:  # answered in full already: just do not read on
            self._request_done = True
            self._finish(keep_alive=False)
        elif self._head_sent:
            self._abort_client()
        else:
            self._request_done = True  # nothing more will be read
            self._out = ResponseFraming(Body.NONE, False)
            self._write_canned(error_page(status, self.request.accept), keep_alive=False)
            self._response_done = True
            self._finish(keep_alive=False)

    def client_lost(self) -> None:
        self._cancelled = True
        self.finished = True
        self._drop_upstream()
        if self._task is not None:
            self._task.cancel()

    def client_write_paused(self) -> None:
        if self._upstream is not None:
            self._upstream.pause_reading()

    def client_write_resumed(self) -> None:
        if self._upstream is not None:
            self._upstream.resume_reading()

    def _send_request_parts(self, parts: list[bytes]) -> None:
        if self._upstream is not None:
            self._upstream.writelines(parts)
            return
        self._pending.extend(parts)
        self._pending_size += sum(len(part) for part in parts)
        if self._pending_size > self._ctx.limits.request_buffer:
            self._client.pause_reading("buffer")

    # --- response side (ResponseSink, from the upstream connection) ----------

    def response_interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        if self.request.version == "1.1" and not self._head_sent:
            self._client.write(
                encode_head(b"HTTP/1.1 %d %s" % (status, reason), end_to_end(headers))
            )

    def response_head(self, status: int, reason: bytes, headers: list[Header], body: Body) -> None:
        framing = response_framing(body, self.request)
        if framing.keep_alive and not (self._request_done or self._drainable()):
            framing = ResponseFraming(framing.body, False)
        self._out = framing
        out = client_response_headers(status, headers, self.request, framing)
        if self._upstream is not None:
            self._ctx.hooks.response(self.request, self._upstream.node, status, out)
        self._client.write(encode_head(b"HTTP/1.1 %d %s" % (status, reason), out))
        self._head_sent = True

    def response_body(self, data: bytes) -> None:
        if not data:
            return
        if self._out.body is Body.CHUNKED:
            self._client.writelines([chunk_prefix(len(data)), data, CRLF])
        else:
            self._client.write(data)

    def response_complete(self, conn: UpstreamConnection, reusable: bool) -> None:
        if conn is not self._upstream:
            conn.close()
            return
        self._upstream = None
        if self._out.body is Body.CHUNKED:
            self._client.write(LAST_CHUNK)
        self._client.resume_reading("upstream")
        if reusable and self._request_done:
            self._ctx.pool.put(conn)
        else:
            conn.close()  # the backend may still expect request body bytes
        self._response_done = True
        self._finish_when_possible()

    def upstream_failed(self, conn: UpstreamConnection, error: BaseException | None) -> None:
        if conn is not self._upstream:
            return
        self._upstream = None
        self._client.resume_reading("upstream")
        if self._head_sent:
            # Half a response cannot be repaired: closing tells the client it is cut short.
            log.warning("backend %s failed mid-response: %r", conn.node.name, error)
            self._abort_client()
            return
        stale = conn.exchanges > 1 and not conn.response_started
        nothing_sent = self.request.body is Body.NONE
        if stale and nothing_sent and self.request.idempotent and self._attempts < MAX_ATTEMPTS:
            # A pooled connection the backend had closed meanwhile: safe to repeat on a new one.
            self._fresh_only = True
            self.start()
            return
        log.warning("backend %s failed before answering: %r", conn.node.name, error)
        self._respond(error_page(502, self.request.accept))

    def upstream_write_paused(self) -> None:
        self._client.pause_reading("upstream")

    def upstream_write_resumed(self) -> None:
        self._client.resume_reading("upstream")

    # --- ending ---------------------------------------------------------------

    def _drainable(self) -> bool:
        """The unread rest of the request body is small enough to read and drop."""
        if self.request.body is Body.NONE:
            return True
        if self.request.body is Body.LENGTH:
            remaining = self.request.content_length - self._body_received
            return remaining <= self._ctx.limits.drain_limit
        return False

    def _respond(self, page: CannedResponse) -> None:
        """Answer with a page of our own (nothing was sent to the client yet)."""
        keep_alive = self.request.keep_alive and (self._request_done or self._drainable())
        self._out = ResponseFraming(Body.NONE, keep_alive)
        self._write_canned(page, keep_alive)
        self._response_done = True
        self._finish_when_possible()

    def _write_canned(self, page: CannedResponse, keep_alive: bool) -> None:
        self._client.write(page.encode(keep_alive=keep_alive, head_only=self.request.is_head))
        self._head_sent = True

    def _finish_when_possible(self) -> None:
        if self.finished or not self._response_done:
            return
        if self._request_done:
            self._finish(keep_alive=self._out.keep_alive)
        elif self._out.keep_alive and self._drainable():
            # Read and drop the small rest of the body, then reuse the connection.
            self._client.resume_reading("upstream")
            self._client.resume_reading("buffer")
        else:
            self._finish(keep_alive=False)

    def _finish(self, keep_alive: bool) -> None:
        self.finished = True
        self._pending = []
        self._client.resume_reading("upstream")
        self._client.resume_reading("buffer")
        self._client.exchange_done(self, keep_alive)

    def _drop_upstream(self) -> None:
        conn, self._upstream = self._upstream, None
        if conn is not None:
            conn.abort()

    def _abort_client(self) -> None:
        self.finished = True
        self._client.abort()
