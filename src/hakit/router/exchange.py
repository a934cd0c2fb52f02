"""One request/response exchange: choose a backend, forward, stream back.

The client connection (http.py) feeds the request in; the backend connection
(upstream.py) feeds the response in through the ``ResponseSink`` methods.
Bodies are never collected: each piece is written on as it arrives, and the
reading side is paused while the writing side's buffer is above its
high-water mark.

While no node can serve, a request not yet sent to a node is held (hold.py)
until the router's view changes or ``hold_timeout`` passes; meanwhile its body
is read into memory up to ``hold_body_limit`` (larger: the 503 page at once),
and sent in full once a node is chosen. That is the only buffering of a whole
body, and it happens only while no node can take the request: a request that
goes straight to a node streams as above. A ``101 Switching
Protocols`` answer to an upgrade request turns both connections into a byte
tunnel (tunnel.py). The backend's response head must begin within
``limits.response_timeout`` (504 otherwise).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from time import monotonic
from typing import Final

from hakit.config import NodeConfig
from hakit.router.forwarding import backend_request_head
from hakit.router.headers import (
    Body,
    Header,
    RequestHead,
    end_to_end,
)
from hakit.router.hold import (
    HOLD,
    MAX_ATTEMPTS,
    RETRY_FRESH,
    RETRY_NEXT,
    TOO_LARGE,
    after_failure,
    drainable,
    has_body,
    hold_plan,
    hold_remaining,
)
from hakit.router.pages import HELD_OUT, NOT_HELD, CannedResponse, error_page
from hakit.router.pages import TOO_LARGE as TOO_LARGE_PAGE
from hakit.router.responses import (
    CRLF,
    LAST_CHUNK,
    STATUS_LINES,
    ResponseHead,
    chunk_prefix,
    client_head,
    client_headers,
    encode_head,
    encode_status_head,
    hooked_client_head,
    response_fields,
)
from hakit.router.seams import ClientSide, ProxyContext
from hakit.router.tunnel import (
    UpgradeRefused,
    open_tunnel,
    requested_upgrade,
    switching_response_headers,
)
from hakit.router.upstream import UpstreamConnection

log = logging.getLogger("hakit.router")

_NOT_TRIED: Final[frozenset[str]] = frozenset()


class Exchange:
    # Slots: one Exchange per request, so creating one is on the hot path.
    __slots__ = (
        "_attempts",
        "_body_received",
        "_cancelled",
        "_client",
        "_ctx",
        "_fresh_only",
        "_gathered",
        "_head_sent",
        "_hold_started",
        "_holding",
        "_out_body",
        "_out_keep",
        "_pending",
        "_pending_size",
        "_request_done",
        "_response_done",
        "_task",
        "_tried",
        "_upgrade",
        "_upgrade_rest",
        "_upstream",
        "_waiting_mark",
        "_waiting_since",
        "finished",
        "head_at",
        "held",
        "node",
        "request",
        "sent",
        "sent_at",
        "started",
        "status",
    )

    def __init__(
        self, client: ClientSide, ctx: ProxyContext, request: RequestHead, upgrade: bool = False
    ) -> None:
        """``upgrade``: the parser saw ``Connection: upgrade`` with an ``Upgrade`` header."""
        self.request = request
        self._client = client
        self._ctx = ctx
        self._upstream: UpstreamConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._tried: Collection[str] = _NOT_TRIED  # nodes whose connect failed for this request
        self._attempts = 0
        self._fresh_only = False  # a pooled connection went stale: open a new one
        self._pending: list[bytes] | None = None  # framed request body waiting for a connection
        self._pending_size = 0
        self._body_received = 0
        self._request_done = False
        self._head_sent = False  # the client got a response head (no more error pages)
        self._response_done = False
        # Response bytes for the client gathered while one read from the backend is
        # parsed, written at once when it is done (``response_flush``): the head and
        # the first body bytes go out in one send. Never held past that read.
        self._gathered: list[bytes] = []
        # How the response body goes to the client, and whether its connection stays.
        self._out_body = Body.NONE
        self._out_keep = request.keep_alive
        self.finished = False
        self._cancelled = False
        self._hold_started: float | None = None  # monotonic time the request began to wait
        self._holding = False  # waiting for a node now (its body is read into _pending)
        # Response timeout, checked by the client connection's sweep (no timer per
        # request): loop time the wait was first seen (0: not yet), and the request
        # body bytes received then (progress restarts the clock).
        self._waiting_since = 0.0
        self._waiting_mark = 0
        # Upgrade: the protocol asked for, and the bytes the client sent after its head
        # (None until the parser stopped at the upgrade request).
        self._upgrade = requested_upgrade(request.version, request.headers) if upgrade else None
        self._upgrade_rest: bytes | None = None
        # Read by the router's observers (metrics.Observed) when the exchange ends.
        self.node: NodeConfig | None = None  # the backend that got the request
        self.status = 0  # the status sent to the client (0: none yet)
        self.sent = 0  # response body bytes sent to the client
        self.started = monotonic()
        self.sent_at = 0.0  # monotonic: request head written to the backend
        self.head_at = 0.0  # monotonic: the backend's response head arrived
        self.held = 0.0  # seconds this request waited for a node to come back

    @property
    def received(self) -> int:
        """Request body bytes read from the client."""
        return self._body_received

    @property
    def attempts(self) -> int:
        """Backend choices made for this request (1 + retries)."""
        return self._attempts

    # --- start: choose a backend, get a connection -------------------------

    def start(self) -> None:
        self._attempts += 1
        ctx = self._ctx
        backend = ctx.choose(self.request, self._tried)
        if backend is None:
            self._no_backend()
            return
        conn = None if self._fresh_only else ctx.pool.take(backend)
        if conn is not None:
            self._attach(conn)
        else:
            self._task = ctx.spawn(self._connect(backend))

    def _no_backend(self) -> None:
        """No node can take the request now: hold it, or answer.

        The request was sent to no node (a body is never replayed: a request whose
        body went to a node is not retried, see upstream_failed), so all of its body
        read so far is in ``_pending``.
        """
        ctx, request = self._ctx, self.request
        now = monotonic()
        remaining = hold_remaining(self._hold_started, now, ctx.hold_limit(request))
        if remaining > 0:
            plan = hold_plan(request, self._body_received, ctx.hold_body_limit)
            if plan == TOO_LARGE:
                self._respond(ctx.maintenance(request, TOO_LARGE_PAGE))
                return
            if self._hold_started is None:
                self._hold_started = now
            self._holding = True
            if plan != HOLD:
                self._client.resume_reading("buffer")  # read the body while it waits
            self._task = ctx.spawn(self._hold(remaining))
            return
        if self._tried and not request.idempotent:
            # No node could be reached: say plainly that it failed, and was not processed.
            self._respond(error_page(502, request.accept, reached=False))
        else:
            reason = NOT_HELD if self._hold_started is None else HELD_OUT
            self._respond(ctx.maintenance(request, reason))

    async def _hold(self, remaining: float) -> None:
        ctx = self._ctx
        # Counted from inside the task: a task cancelled before it ran counts nothing.
        ctx.hold_began()
        try:
            async with asyncio.timeout(remaining):
                await ctx.wait_for_change()
        except TimeoutError:
            pass  # start() finds the hold used up and answers
        finally:
            ctx.hold_ended()  # also when cancelled (the client left, the router closes)
            self._holding = False
        if self._hold_started is not None:
            self.held = monotonic() - self._hold_started
        if self._cancelled or self.finished:
            return
        # A changed view may have brought back the nodes this request already tried
        # (nodes still failing are excluded by their down marks).
        self._tried = _NOT_TRIED
        self._attempts = 0
        self.start()

    def _failed_on(self, node: str) -> None:
        self._tried = {*self._tried, node}

    async def _connect(self, backend: NodeConfig) -> None:
        try:
            conn = await self._ctx.pool.connect(backend)
        except (OSError, TimeoutError) as error:
            if self._cancelled:
                return
            log.debug("connect to %s failed: %r", backend.name, error)
            self._ctx.mark_down(backend, error)
            self._failed_on(backend.name)
            self._fresh_only = False
            if self._attempts >= MAX_ATTEMPTS:
                self._respond(error_page(502, self.request.accept, reached=False))
            else:
                self.start()
            return
        if self._cancelled:
            conn.close()
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self._upstream = conn
        node = conn.node
        self.node, self.sent_at = node, monotonic()
        request = self.request
        upgrade = self._upgrade
        conn.attach(self, request.method, upgrade=upgrade is not None)
        head = backend_request_head(request, conn.host_header, upgrade, self._ctx.hooks, node)
        pending = self._pending
        if pending:
            self._pending, self._pending_size = None, 0
            conn.writelines([head, *pending])
            self._client.resume_reading("buffer")
        else:
            conn.write(head)
        if self._client.write_paused:
            conn.pause_reading()
        self._waiting_since = 0.0

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
        if self.request.body is Body.CHUNKED and not (self._response_done or self.finished):
            self._send_request_parts([LAST_CHUNK])
        self._waiting_since = 0.0  # the backend's time to answer starts now
        if self._response_done and not self.finished:
            self._finish_when_possible()

    def upgrade_requested(self, rest: bytes) -> bool:
        """The client's parser stopped at this upgrade request; ``rest`` followed its head.

        The client connection reads no further HTTP: it becomes a tunnel after a
        101, or is closed after any other answer. False: the request cannot be
        forwarded (the caller answers 400).
        """
        self._upgrade_rest = rest
        # The parser takes the body of an upgrade request for the new protocol's
        # bytes; forwarding it as either would be guessing.
        return not has_body(self.request)

    def request_broken(self, status: int) -> None:
        """The rest of the request is unreadable (bad chunk framing, ...): give up."""
        if self.finished:
            return
        self._drop_upstream()
        self._stop_holding()
        if self._response_done:  # answered in full already: just do not read on
            self._request_done = True
            self._finish(keep_alive=False)
        elif self._head_sent:
            self._abort_client()
        else:
            self._answer_last(error_page(status, self.request.accept))  # nothing more is read
            self._finish(keep_alive=False)

    def refuse(self, status: int) -> None:
        """Answer ``status`` for a request refused before it could be handled (never
        forwarded: malformed, too large, too slow) and report it like any other, so
        refusals show in the access log and the metrics. The connection closes after it.
        """
        self._answer_last(error_page(status))
        self.finished = True
        self._ctx.exchange_ended(self)

    def client_lost(self) -> None:
        if not self.finished:
            self._ctx.exchange_ended(self)
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
        if self._pending is None:
            self._pending = []
        self._pending.extend(parts)
        self._pending_size += sum(len(part) for part in parts)
        if self._holding:
            self._held_body_grew()
        elif self._pending_size > self._ctx.limits.request_buffer:
            self._client.pause_reading("buffer")

    def _held_body_grew(self) -> None:
        """More body arrived while the request waits for a node (hold.hold_plan)."""
        plan = hold_plan(self.request, self._body_received, self._ctx.hold_body_limit)
        if plan == TOO_LARGE:  # a chunked body grew past hold_body_limit: answer now
            self._stop_holding()
            self._respond(self._ctx.maintenance(self.request, TOO_LARGE_PAGE))
        elif plan == HOLD and self._pending_size > self._ctx.limits.request_buffer:
            self._client.pause_reading("buffer")  # sent unasked (Expect): flow control

    def _stop_holding(self) -> None:
        """Answered (or broken) while held: end the wait now."""
        if self._holding:
            self._holding = False
            if self._task is not None:
                self._task.cancel()  # its finally counts the hold as ended

    # --- response side (ResponseSink, from the upstream connection) ----------

    def response_interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        if self.request.version == "1.1" and not self._head_sent:
            self._gathered.append(
                encode_head(b"HTTP/1.1 %d %s" % (status, reason), end_to_end(headers))
            )

    def response_head(self, status: int, reason: bytes, head: ResponseHead, body: Body) -> None:
        self.status, self.head_at = status, monotonic()
        request = self.request
        # How the client receives a body the backend delimited as ``body``
        # (headers.response_framing, inlined: this runs for every response).
        keep = request.keep_alive
        if body is Body.CHUNKED or body is Body.UNTIL_CLOSE:
            if request.version == "1.1":
                body = Body.CHUNKED
            else:
                body, keep = Body.UNTIL_CLOSE, False
        if keep and (
            self._upgrade_rest is not None or not (self._request_done or self._drainable())
        ):
            keep = False
        self._out_body, self._out_keep = body, keep
        line = STATUS_LINES.get((status, reason))
        if line is None:
            line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        hooks = self._ctx.hooks
        upstream = self._upstream
        if hooks.rewrites_responses and upstream is not None:
            out = hooked_client_head(head, line, request, body, keep, hooks, upstream.node, status)
        elif head.strips_more:
            out = encode_status_head(
                line, client_headers(response_fields(head.headers), request, body, keep)
            )
        else:
            out = client_head(head, line, request, body, keep)  # the usual case
        self._gathered.append(out)
        self._head_sent = True

    def response_body(self, data: bytes) -> None:
        if not data:
            return
        self.sent += len(data)
        if self._out_body is Body.CHUNKED:
            self._gathered += (chunk_prefix(len(data)), data, CRLF)
        else:
            self._gathered.append(data)

    def response_flush(self) -> None:
        """Write what this read of the response produced (called after each read)."""
        parts = self._gathered
        if parts:
            self._gathered = []
            if self.finished:
                return  # the client connection was aborted or lost meanwhile
            if len(parts) == 1:
                self._client.write(parts[0])
            elif len(parts) == 2 and len(parts[1]) <= _JOIN_LIMIT:
                # A head and a small body: one buffer is cheaper for uvloop than two.
                self._client.write(parts[0] + parts[1])
            else:
                self._client.writelines(parts)

    def response_complete(self, conn: UpstreamConnection, reusable: bool) -> None:
        if conn is not self._upstream:
            conn.close()
            return
        self._upstream = None
        if self._out_body is Body.CHUNKED:
            self._gathered.append(LAST_CHUNK)
        self.response_flush()
        if not self._request_done:
            self._client.resume_reading("upstream")  # else _finish lifts it, just below
        if reusable and self._request_done:
            self._ctx.pool.put(conn)
        else:
            conn.close()  # the backend may still expect request body bytes
        self._response_done = True
        if self._request_done:
            if not self.finished:
                self._finish(keep_alive=self._out_keep)
        else:
            self._finish_when_possible()

    def response_upgraded(
        self, conn: UpstreamConnection, reason: bytes, headers: list[Header], rest: bytes
    ) -> None:
        """The backend switched protocols (101): relay it, then tunnel both connections."""
        if conn is not self._upstream:
            conn.abort()
            return
        out = switching_response_headers(headers)
        if out is None or self._upgrade_rest is None or self.finished:
            # A 101 we cannot pass on (no Upgrade in it, or the client's parser did not
            # stop at this request): the connection is unusable either way.
            self.upstream_failed(conn, UpgradeRefused("unusable 101 Switching Protocols"))
            conn.abort()
            return
        self._upstream = None
        self._ctx.hooks.response(self.request, conn.node, 101, out)
        self.status, self.head_at = 101, monotonic()
        self._gathered.append(encode_head(b"HTTP/1.1 101 %s" % reason, out))
        self.response_flush()
        self._head_sent = self._response_done = self.finished = True
        self._ctx.exchange_ended(self)  # logged when the tunnel opens
        open_tunnel(
            self._client.take_transport(),
            conn.take_transport(),
            client_rest=self._upgrade_rest,
            backend_rest=rest,
            high_water=self._ctx.limits.write_buffer_high,
            on_closed=self._client.tunnel_closed,
        )

    def upstream_failed(self, conn: UpstreamConnection, error: BaseException | None) -> None:
        if conn is not self._upstream:
            return
        self._upstream = None
        self._client.resume_reading("upstream")
        if self._head_sent:
            # Half a response cannot be repaired: closing tells the client it is cut short.
            log.warning("backend %s failed mid-response: %r", conn.node.name, error)
            self.response_flush()  # what arrived before the failure, as it would have
            self._abort_client()
            return
        answered = conn.response_started or isinstance(error, UpgradeRefused)
        plan = after_failure(
            self.request,
            self._body_received,
            self._attempts,
            pooled=conn.exchanges > 1,
            answered=answered,
        )
        if plan == RETRY_FRESH:
            self._fresh_only = True
            self.start()
        elif plan == RETRY_NEXT:
            log.info("backend %s dropped %r unanswered; retrying", conn.node.name, error)
            self._ctx.mark_down(conn.node, error or ConnectionResetError())
            self._failed_on(conn.node.name)
            self.start()
        else:
            log.warning("backend %s failed before answering: %r", conn.node.name, error)
            self._respond(error_page(502, self.request.accept))

    def upstream_write_paused(self) -> None:
        self._client.pause_reading("upstream")

    def upstream_write_resumed(self) -> None:
        self._client.resume_reading("upstream")

    # --- ending ---------------------------------------------------------------

    def _drainable(self) -> bool:
        return drainable(self.request, self._body_received, self._ctx.limits.drain_limit)

    def _respond(self, page: CannedResponse) -> None:
        """Answer with a page of our own (nothing was sent to the client yet)."""
        keep_alive = self.request.keep_alive and (self._request_done or self._drainable())
        self._out_body, self._out_keep = Body.NONE, keep_alive
        self._write_canned(page, keep_alive)
        self._response_done = True
        self._finish_when_possible()

    def _answer_last(self, page: CannedResponse) -> None:
        """Answer with ``page`` and read no more of the request: the connection closes."""
        self._request_done = self._response_done = True
        self._out_body, self._out_keep = Body.NONE, False
        self._write_canned(page, keep_alive=False)

    def _write_canned(self, page: CannedResponse, keep_alive: bool) -> None:
        self.response_flush()  # a 100 Continue gathered before the backend failed
        self._client.write(page.encode(keep_alive=keep_alive, head_only=self.request.is_head))
        self._head_sent = True
        self.status = page.status
        if not self.request.is_head:
            self.sent += len(page.body)

    def _finish_when_possible(self) -> None:
        if self.finished or not self._response_done:
            return
        if self._request_done:
            self._finish(keep_alive=self._out_keep)
        elif self._out_keep and self._drainable():
            # Read and drop the small rest of the body, then reuse the connection.
            self._client.resume_reading("upstream")
            self._client.resume_reading("buffer")
        else:
            self._finish(keep_alive=False)

    def _finish(self, keep_alive: bool) -> None:
        self.finished = True
        self._ctx.exchange_ended(self)
        self._pending = None
        # The client connection lifts this exchange's read pauses (upstream, buffer).
        self._client.exchange_done(self, keep_alive)

    def _drop_upstream(self) -> None:
        conn, self._upstream = self._upstream, None
        if conn is not None:
            conn.abort()

    def _abort_client(self) -> None:
        if not self.finished:
            self._ctx.exchange_ended(self)
        self.finished = True
        self._client.abort()

    # --- response timeout -------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Enforce ``limits.response_timeout`` (called every ``limits.sweep_interval``).

        The wait starts at the first sweep after the request (or its last body
        byte) was sent; while the request body still moves, the backend is
        reading it and the clock restarts. Fires at most two intervals late.
        """
        if self._upstream is None or self._head_sent or self.finished:
            return
        if self._waiting_since == 0.0 or self._body_received != self._waiting_mark:
            self._waiting_since, self._waiting_mark = now, self._body_received
            return
        limit = self._ctx.limits.response_timeout
        if now - self._waiting_since < limit:
            return
        conn, self._upstream = self._upstream, None
        log.warning("backend %s did not answer within %ss", conn.node.name, limit)
        conn.abort()
        self._client.resume_reading("upstream")
        self._respond(error_page(504, self.request.accept))


# Up to this many body bytes are copied behind the head to write one buffer.
_JOIN_LIMIT: Final = 4096
