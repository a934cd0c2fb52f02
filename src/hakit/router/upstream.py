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
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from hakit.config import NodeConfig
from hakit.router.headers import Body, Header, upstream_body
from hakit.router.limits import ProxyLimits


class ResponseSink(Protocol):
    """What an upstream connection reports to the exchange it carries."""

    def response_interim(self, status: int, reason: bytes, headers: list[Header]) -> None: ...

    def response_head(
        self, status: int, reason: bytes, headers: list[Header], body: Body
    ) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_complete(self, conn: UpstreamConnection, reusable: bool) -> None: ...

    def response_upgraded(
        self, conn: UpstreamConnection, reason: bytes, headers: list[Header], rest: bytes
    ) -> None: ...

    def upstream_failed(self, conn: UpstreamConnection, error: BaseException | None) -> None: ...

    def upstream_write_paused(self) -> None: ...

    def upstream_write_resumed(self) -> None: ...


class UpstreamProtocolError(Exception):
    """The backend sent something that is not a valid HTTP/1.1 response."""


class _ResponseReader:
    """httptools callbacks for one response (plus any 1xx before it).

    One per exchange, so a late callback from a finished response can never
    reach the next exchange on the same connection.
    """

    def __init__(self, sink: ResponseSink, request_method: bytes, upgrade: bool) -> None:
        self.sink = sink
        self.request_method = request_method
        self.upgrade = upgrade  # the request asked to switch protocols
        self.switched = False  # a 101 arrived for it: the rest is the new protocol
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[Header] = []
        self.body = Body.NONE
        self.in_head = False
        self.head_seen = False  # the final (non-1xx) head arrived
        self.done = False
        self.keep_alive = False

    def on_message_begin(self) -> None:
        if self.done:
            raise UpstreamProtocolError("the backend sent more than one response")
        self.reason = b""
        self.headers = []
        self.in_head = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:  # headers after the body are trailers: dropped for now
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.status < 200:
            if self.status == 101:
                if not self.upgrade:
                    raise UpstreamProtocolError(
                        "the backend switched protocols for a request that did not ask to"
                    )
                # Reported once the parser stopped after this head (data_received),
                # with the bytes that followed it.
                self.switched = True
                return
            self.sink.response_interim(self.status, self.reason, self.headers)
            return
        self.head_seen = True
        self.body = upstream_body(self.status, self.request_method, self.headers)
        self.sink.response_head(self.status, self.reason, self.headers, self.body)
        if self.request_method == b"HEAD":
            # httptools cannot be told to skip the body: it would wait for
            # Content-Length bytes that never come. The head is the whole response.
            self.done = True

    def on_body(self, data: bytes) -> None:
        if self.done:
            raise UpstreamProtocolError("the backend sent a body with a response to HEAD")
        self.sink.response_body(data)

    def on_message_complete(self) -> None:
        if self.head_seen and not self.done:
            self.keep_alive = self.parser.should_keep_alive()
            self.done = True


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, node: NodeConfig, limits: ProxyLimits) -> None:
        self.node = node
        self.exchanges = 0  # exchanges started on this connection
        self.on_lost: Callable[[UpstreamConnection], None] | None = None
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._reader: _ResponseReader | None = None
        self._response_started = False
        self._read_paused = False
        self._write_paused = False
        self._lost = False

    @property
    def usable(self) -> bool:
        """Open and idle: may carry a new exchange."""
        transport = self._transport
        return (
            not self._lost
            and self._reader is None
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
        assert self.usable, "attach() on a busy or closed upstream connection"
        self._reader = _ResponseReader(sink, request_method, upgrade)
        self._response_started = False
        self.exchanges += 1

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self._transport is not None:
            self._transport.writelines(parts)

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
        self._reader = None
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Close after writing what is buffered (nothing reported to the sink)."""
        self._reader = None
        if self._transport is not None:
            self._transport.close()

    def take_transport(self) -> asyncio.Transport | None:
        """Hand the transport over (after a 101); this connection leaves the pool."""
        transport, self._transport = self._transport, None
        self._reader = None
        self._lost = True
        if self.on_lost is not None:
            self.on_lost(self)
            self.on_lost = None
        if transport is not None and transport.is_closing():
            return None
        return transport

    # --- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(
            high=self._limits.write_buffer_high, low=self._limits.write_buffer_low
        )

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            # Nobody asked: a backend talking out of turn cannot be trusted for reuse.
            self.abort()
            return
        self._response_started = True
        error: Exception | None = None
        try:
            reader.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if reader.switched and self._reader is reader:
                self._reader = None
                rest = data[upgrade.args[0] :]
                reader.sink.response_upgraded(self, reader.reason, reader.headers, rest)
                return
            error = UpstreamProtocolError("the backend switched protocols unasked")
        except httptools.HttpParserError as parse_error:
            cause = parse_error.__context__
            error = cause if isinstance(cause, UpstreamProtocolError) else parse_error
        if self._reader is not reader:
            return  # aborted by the exchange from inside a callback
        if reader.done:
            # Reported after feed_data returned, so the sink may reuse this
            # connection at once without a callback of this response still running.
            self._reader = None
            reusable = reader.keep_alive and error is None
            if not reusable:
                self.abort()
            self._release_read_pause()
            reader.sink.response_complete(self, reusable)
        elif error is not None:
            self._reader = None
            self.abort()
            reader.sink.upstream_failed(self, error)

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost says what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        reader, self._reader = self._reader, None
        if self.on_lost is not None:
            self.on_lost(self)
        if reader is None:
            return
        if exc is None and reader.head_seen and reader.body is Body.UNTIL_CLOSE:
            reader.sink.response_complete(self, False)  # the close ends this body
        else:
            reader.sink.upstream_failed(self, exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._reader is not None:
            self._reader.sink.upstream_write_paused()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._reader is not None:
            self._reader.sink.upstream_write_resumed()

    def _release_read_pause(self) -> None:
        # A pause belongs to the exchange that asked for it; the next one starts clean.
        self.resume_reading()


class UpstreamPool:
    """Idle keep-alive connections per backend, and opening new ones.

    Idle connections are closed after ``limits.upstream_idle_timeout``; at most
    ``limits.upstream_idle_per_backend`` are kept per backend.
    """

    def __init__(self, limits: ProxyLimits) -> None:
        self._limits = limits
        self._idle: defaultdict[tuple[str, int], deque[UpstreamConnection]] = defaultdict(deque)
        self._timers: dict[UpstreamConnection, asyncio.TimerHandle] = {}
        self._open: set[UpstreamConnection] = set()
        self.opened = 0  # connections opened so far (stats and tests)

    @staticmethod
    def _key(node: NodeConfig) -> tuple[str, int]:
        return (node.host, node.port)

    def idle_count(self, node: NodeConfig) -> int:
        return len(self._idle.get(self._key(node), ()))

    def take(self, node: NodeConfig) -> UpstreamConnection | None:
        """An idle open connection to ``node`` (most recently used first), or None."""
        idle = self._idle.get(self._key(node))
        while idle:
            conn = idle.pop()
            self._cancel_timer(conn)
            if conn.usable:
                return conn
            conn.abort()
        return None

    def put(self, conn: UpstreamConnection) -> None:
        """Keep ``conn`` for reuse, or close it when it is unusable or the pool is full."""
        idle = self._idle[self._key(conn.node)]
        if not conn.usable or len(idle) >= self._limits.upstream_idle_per_backend:
            conn.close()
            return
        idle.append(conn)
        self._timers[conn] = asyncio.get_running_loop().call_later(
            self._limits.upstream_idle_timeout, conn.close
        )

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
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._idle.clear()
        self._open.clear()

    def _forget(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)
        self._cancel_timer(conn)
        idle = self._idle.get(self._key(conn.node))
        if idle is not None and conn in idle:
            idle.remove(conn)

    def _cancel_timer(self, conn: UpstreamConnection) -> None:
        timer = self._timers.pop(conn, None)
        if timer is not None:
            timer.cancel()
