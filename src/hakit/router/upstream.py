"""Connections to backends and the per-backend keep-alive pool.

Contract of an ``UpstreamConnection``: it carries one exchange at a time. The
exchange calls ``attach(sink, method)``, writes the request, and receives the
response through the ``ResponseSink`` callbacks. ``response_complete`` is
called once the whole response was read, after the connection detached the
sink, so the sink may hand it back to the pool (``UpstreamPool.put``) or
close it. A backend that misbehaves (bytes when nobody asked, a body after a
HEAD response) gets its connection closed, never reused.

An exchange attached with ``upgrade=True`` may get ``101 Switching
Protocols``: the sink's ``response_upgraded`` receives the 101 and the bytes
that followed it, and takes the transport over (``take_transport``); the
connection is then no longer an HTTP connection and leaves the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from hakit.config import NodeConfig
from hakit.router.batch import BatchedWrites, batch_for_running_loop
from hakit.router.headers import (
    Body,
    Header,
)
from hakit.router.limits import ProxyLimits
from hakit.router.responses import (
    ResponseHead,
    response_has_body,
)


class ResponseSink(Protocol):
    """What an upstream connection reports to the exchange it carries."""

    def response_interim(self, status: int, reason: bytes, headers: list[Header]) -> None: ...

    def response_head(self, status: int, reason: bytes, head: ResponseHead, body: Body) -> None:
        """The final head (``head`` is reused for the next response: read it now)."""
        ...

    def response_body(self, data: bytes) -> None: ...

    def response_flush(self) -> None:
        """One read from the backend was parsed: write what it produced to the client."""
        ...

    def response_complete(self, conn: UpstreamConnection, reusable: bool) -> None: ...

    def response_upgraded(
        self, conn: UpstreamConnection, reason: bytes, headers: list[Header], rest: bytes
    ) -> None: ...

    def upstream_failed(self, conn: UpstreamConnection, error: BaseException | None) -> None: ...

    def upstream_write_paused(self) -> None: ...

    def upstream_write_resumed(self) -> None: ...


class UpstreamProtocolError(Exception):
    """The backend sent something that is not a valid HTTP/1.1 response."""


class UpstreamConnection(BatchedWrites, asyncio.Protocol):
    """One keep-alive connection to a backend; also its response parser's callbacks.

    The parser (llhttp) is kept for the connection's life: a response leaves it
    ready for the next one. The per-response state below is reset by
    ``attach``; callbacks reach only the exchange attached then (``_sink``), and
    a response that ends while no exchange is attached is an error. After a
    response to HEAD the parser still expects the body the head announced, so
    the next exchange gets a new parser.
    """

    __slots__ = (
        "_batch",
        "_body",
        "_done",
        "_head",
        "_head_seen",
        "_keep_alive",
        "_limits",
        "_lost",
        "_method",
        "_parser",
        "_read_paused",
        "_reason",
        "_response_started",
        "_sink",
        "_status",
        "_switched",
        "_transport",
        "_upgrade",
        "_write_paused",
        "exchanges",
        "host_header",
        "idle_since",
        "node",
        "on_header",
        "on_lost",
    )

    def __init__(self, node: NodeConfig, limits: ProxyLimits) -> None:
        self.node = node
        # The Host sent for a request that had none (HTTP/1.0): the backend's address.
        self.host_header = f"{node.host}:{node.port}".encode()
        self.idle_since = 0.0  # monotonic: when it was put in the pool
        self.exchanges = 0  # exchanges started on this connection
        self.on_lost: Callable[[UpstreamConnection], None] | None = None
        self._limits = limits
        # Declared by BatchedWrites, so not annotated again: compiled, a subclass that
        # redeclares them makes the garbage collector count them twice (mypyc's
        # tp_traverse visits the field once per declaration), and it then frees the
        # write batch and the transport while they are in use (a segfault).
        self._transport = None
        self._batch = None  # writes go out once per loop iteration
        self._parser: httptools.HttpResponseParser | None = None  # None: make one at attach
        self._sink: ResponseSink | None = None  # the exchange answered now; None: idle
        self._response_started = False
        self._read_paused = False
        self._write_paused = False
        self._lost = False
        # The response being read (reset by attach):
        self._method = b""  # the request's method
        self._upgrade = False  # the request asked to switch protocols
        self._switched = False  # a 101 arrived for it: the rest is the new protocol
        self._status = 0
        self._reason = b""
        self._head = ResponseHead()  # the headers, sorted as they arrive
        # The parser's header callback is the head's own method: it sorts each header.
        self.on_header = self._head.add
        self._body = Body.NONE
        self._head_seen = False  # the final (non-1xx) head arrived
        self._done = False
        self._keep_alive = False

    @property
    def usable(self) -> bool:
        """Open and idle: may carry a new exchange."""
        transport = self._transport
        return (
            not self._lost
            and self._sink is None
            and transport is not None
            and not transport.is_closing()
        )

    @property
    def response_started(self) -> bool:
        """Some byte of the current exchange's response arrived."""
        return self._response_started

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    # --- used by the exchange -------------------------------------------------

    def attach(self, sink: ResponseSink, request_method: bytes, upgrade: bool = False) -> None:
        assert self._sink is None and not self._lost, "attach() on a busy or closed connection"
        self._sink = sink
        self._method = request_method
        self._upgrade = upgrade
        self._switched = self._head_seen = self._done = self._response_started = False
        self.exchanges += 1
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(self)

    # batch.py: sent at the end of this loop iteration. Two small methods, not the class-body
    # alias ``write = writelines = BatchedWrites._send``, which mypyc refuses to compile.

    def write(self, data: bytes) -> None:
        self._send(data)

    def writelines(self, parts: list[bytes]) -> None:
        self._send(parts)

    def pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self._transport is not None:
            self._read_paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection now (nothing reported to the sink)."""
        self._sink = None
        if self._transport is not None:
            self._flush()
            self._transport.abort()

    def close(self) -> None:
        """Close after writing what is buffered (nothing reported to the sink)."""
        self._sink = None
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def take_transport(self) -> asyncio.Transport | None:
        """Hand the transport over (after a 101); this connection leaves the pool."""
        self._flush()
        transport, self._transport = self._transport, None
        self._sink = self._parser = None
        self._lost = True
        if self.on_lost is not None:
            self.on_lost(self)
            self.on_lost = None
        if transport is not None and transport.is_closing():
            return None
        return transport

    # --- httptools callbacks (one response, plus any 1xx before it) ---------------

    def on_message_begin(self) -> None:
        if self._done:
            raise UpstreamProtocolError("the backend sent more than one response")
        self._reason = b""
        self._head.reset()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    # on_header: ResponseHead.add (set in __init__); trailers after a body are dropped.

    def on_headers_complete(self) -> None:
        head = self._head
        head.in_head = False
        parser = self._parser
        sink = self._sink
        assert parser is not None and sink is not None
        status = self._status = parser.get_status_code()
        self._keep_alive = parser.should_keep_alive()
        if status < 200:
            if status == 101:
                if not self._upgrade:
                    raise UpstreamProtocolError(
                        "the backend switched protocols for a request that did not ask to"
                    )
                # Reported once the parser stopped after this head (data_received),
                # with the bytes that followed it.
                self._switched = True
                return
            sink.response_interim(status, self._reason, head.headers)
            return
        self._head_seen = True
        method = self._method
        if not response_has_body(status, method):
            body = Body.NONE
        elif head.coding is not None:
            body = Body.CHUNKED
        elif head.length is not None:
            body = Body.LENGTH
        else:
            body = Body.UNTIL_CLOSE
        self._body = body
        sink.response_head(status, self._reason, head, body)
        if method == b"HEAD":
            # httptools cannot be told to skip the body: it would wait for
            # Content-Length bytes that never come. The head is the whole response.
            self._done = True

    def on_body(self, data: bytes) -> None:
        if self._done:
            raise UpstreamProtocolError("the backend sent a body with a response to HEAD")
        sink = self._sink
        assert sink is not None
        sink.response_body(data)

    def on_message_complete(self) -> None:
        if self._head_seen and not self._done:
            assert self._parser is not None
            self._keep_alive = self._parser.should_keep_alive()
            self._done = True

    # --- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._batch = batch_for_running_loop()
        transport.set_write_buffer_limits(
            high=self._limits.write_buffer_high, low=self._limits.write_buffer_low
        )

    def data_received(self, data: bytes) -> None:
        sink, parser = self._sink, self._parser
        if sink is None or parser is None:
            # Nobody asked: a backend talking out of turn cannot be trusted for reuse.
            self.abort()
            return
        self._response_started = True
        error: Exception | None = None
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._switched and self._sink is sink:
                self._sink = self._parser = None
                rest = data[upgrade.args[0] :]
                sink.response_upgraded(self, self._reason, self._head.headers, rest)
                return
            error = UpstreamProtocolError("the backend switched protocols unasked")
        except httptools.HttpParserError as parse_error:
            cause = parse_error.__context__
            error = cause if isinstance(cause, UpstreamProtocolError) else parse_error
        if self._sink is not sink:
            sink.response_flush()
            return  # aborted by the exchange from inside a callback
        if self._done:
            # Reported after feed_data returned, so the sink may reuse this
            # connection at once without a callback of this response still running.
            self._sink = None
            reusable = self._keep_alive and error is None
            if not reusable:
                self.abort()
            elif self._method == b"HEAD":
                self._parser = None  # it waits for the body a HEAD response never has
            if self._read_paused:  # a pause belongs to the exchange that asked for it
                self.resume_reading()
            sink.response_complete(self, reusable)
        elif error is not None:
            self._sink = None
            self.abort()
            sink.upstream_failed(self, error)
        else:
            sink.response_flush()

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost says what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        sink, self._sink = self._sink, None
        self._parser = None  # it holds our bound callbacks: a reference cycle
        if self.on_lost is not None:
            self.on_lost(self)
        if sink is None:
            return
        if exc is None and self._head_seen and self._body is Body.UNTIL_CLOSE:
            sink.response_complete(self, False)  # the close ends this body
        else:
            sink.upstream_failed(self, exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._sink is not None:
            self._sink.upstream_write_paused()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._sink is not None:
            self._sink.upstream_write_resumed()


class UpstreamPool:
    """Idle keep-alive connections per backend, and opening new ones.

    Idle connections are closed after ``limits.upstream_idle_timeout`` (by
    ``sweep``, which the router calls every ``limits.sweep_interval``: no timer
    per request); at most ``limits.upstream_idle_per_backend`` are kept per
    backend. Each backend's idle connections are a stack (the most recently
    used is reused first), so the oldest are at its bottom and expire first.
    """

    def __init__(self, limits: ProxyLimits) -> None:
        self._limits = limits
        # Per node name (each configured node is one backend address).
        self._idle: defaultdict[str, deque[UpstreamConnection]] = defaultdict(deque)
        self._open: set[UpstreamConnection] = set()
        self.opened = 0  # connections opened so far (stats and tests)

    def idle_count(self, node: NodeConfig) -> int:
        return len(self._idle.get(node.name, ()))

    def take(self, node: NodeConfig) -> UpstreamConnection | None:
        """An idle open connection to ``node`` (most recently used first), or None."""
        idle = self._idle.get(node.name)
        while idle:
            conn = idle.pop()
            transport = conn._transport  # conn.usable, inlined (every request)
            if (
                not conn._lost
                and conn._sink is None
                and transport is not None
                and not transport.is_closing()
            ):
                return conn
            conn.abort()
        return None

    def put(self, conn: UpstreamConnection) -> None:
        """Keep ``conn`` for reuse, or close it when it is unusable or the pool is full."""
        idle = self._idle[conn.node.name]
        transport = conn._transport  # conn.usable, inlined (every request)
        if (
            conn._lost
            or conn._sink is not None
            or transport is None
            or transport.is_closing()
            or len(idle) >= self._limits.upstream_idle_per_backend
        ):
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def sweep(self, now: float | None = None) -> None:
        """Close the connections idle for ``limits.upstream_idle_timeout`` or longer."""
        if not self._open:
            return
        oldest = (time.monotonic() if now is None else now) - self._limits.upstream_idle_timeout
        for idle in self._idle.values():
            while idle and idle[0].idle_since <= oldest:
                idle.popleft().close()

    async def connect(self, node: NodeConfig) -> UpstreamConnection:
        """A new connection to ``node``.

        Raises OSError (refused, reset, unreachable) or TimeoutError after
        ``limits.connect_timeout``.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._limits.connect_timeout):
            _, conn = await loop.create_connection(
                lambda: UpstreamConnection(node, self._limits), node.host, node.port
            )
        conn.on_lost = self._forget
        self._open.add(conn)
        self.opened += 1
        return conn

    def close(self) -> None:
        """Close every connection, idle or busy."""
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()
        self._open.clear()

    def _forget(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.node.name)
        if idle is not None and conn in idle:
            idle.remove(conn)
