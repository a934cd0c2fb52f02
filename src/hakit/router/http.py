"""The client side of the proxy: one asyncio Protocol per client connection.

Requests are parsed with httptools (llhttp) and handed to an ``Exchange``
each. Exchanges run one at a time per connection, in order (HTTP/1.1
pipelining answers in request order); a request pipelined behind a running
one waits with reading paused, so at most one read's worth of it is held.

Strictness: llhttp rejects most malformed requests; the rest is refused by
headers.py before anything is forwarded (``check_raw_head`` on the head's raw
bytes, ``request_head`` on the parsed fields). To run the raw check, the
connection follows where each head starts in the byte stream: known at the
start and after bodiless or Content-Length messages; after a chunked body it is
known again at the next read (a head pipelined behind a chunked body in the
same read is checked by llhttp only: the request line and framing headers are
rebuilt when forwarded, so what the raw check adds there is strictness, not
safety).

Timeouts: one ``ConnectionSweeper`` per router checks every connection's
read phase every ``limits.sweep_interval`` (a connection only stores its phase:
no timer per request). A new connection must send a complete head within
``header_timeout`` (else it is closed; with some of a head received, 408
first), a head must complete within ``header_timeout`` of its first byte
(slowloris), a request body must not stall for ``body_idle_timeout`` while we
read (408, or close once a response started), and a keep-alive connection may
idle ``client_idle_timeout`` between requests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Final, Protocol, cast

import httptools

from hakit.router.batch import BatchedWrites, batch_for_running_loop
from hakit.router.exchange import Exchange
from hakit.router.headers import (
    BadRequest,
    Body,
    Header,
    RequestHead,
    header_value,
    raw_head,
    request_head,
)
from hakit.router.limits import Network
from hakit.router.seams import ProxyContext

log = logging.getLogger("hakit.router")


class HeadTooLarge(Exception):
    """A head (or trailer section) over a limit: HTTP 431, or 414 for the request line."""

    def __init__(self, status: int = 431) -> None:
        super().__init__(status)
        self.status = status


# A refused request's connection is half-closed after the answer, and what still
# arrives is read and dropped for this long / this many bytes, then it is closed.
LINGER_SECONDS: Final = 2.0
LINGER_BYTES: Final = 1 << 20

# llhttp errors that mean "a version we do not speak" rather than garbage.
_VERSION_ERRORS: Final = ("Invalid HTTP version", "Pause on PRI")  # PRI: the HTTP/2 preface

# What a connection waits for from its client (the timeouts of ``sweep``).
_FRESH: Final = 0  # nothing yet on a new connection: header_timeout, then closed silently
_IDLE: Final = 1  # keep-alive between requests: client_idle_timeout, then closed silently
_HEAD: Final = 2  # a head is arriving: header_timeout from its first byte, then 408
_BODY: Final = 3  # a request body is arriving: body_idle_timeout without a byte, then 408
_NONE: Final = 4  # nothing (request read, answering; or not reading any more)
# Expect: 100-continue sent, no answer yet: the client rightly waits before its body.
# Its body clock starts with the first byte we write to it or it sends.
_EXPECT: Final = 5


# Why a connection stopped reading (several at once: it reads again when none is left):
# an exchange's request body is buffered ("buffer") or its backend cannot take more
# ("upstream"); a request waits behind another ("pipeline"); no more requests ("stopped").
_PAUSE: Final = {"buffer": 1, "upstream": 2, "pipeline": 4, "stopped": 8}
_PAUSE_EXCHANGE: Final = _PAUSE["buffer"] | _PAUSE["upstream"]
_PAUSE_PIPELINE: Final = _PAUSE["pipeline"]


def parser_error_status(error: Exception) -> int:
    """The status for a request llhttp refused: 505 for versions, 400 for the rest."""
    text = str(error)
    return 505 if any(marker in text for marker in _VERSION_ERRORS) else 400


def is_trusted(client_ip: str, networks: tuple[Network, ...]) -> bool:
    """``client_ip`` is in one of ``networks`` (an IPv4-mapped IPv6 address as IPv4)."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class ConnectionRegistry(Protocol):
    """Where the router keeps its open client connections (to close them on shutdown)."""

    def client_opened(self, conn: ClientConnection) -> None: ...

    def client_closed(self, conn: ClientConnection) -> None: ...


class ClientConnection(BatchedWrites, asyncio.Protocol):
    # Slots: thousands of idle keep-alive connections each cost ~1.3 KB less without a
    # dict (measured: 3.8 -> 2.5 KB). A new attribute must be named here.
    __slots__ = (
        "_batch",
        "_chunk_empty",
        "_client_ip",
        "_ctx",
        "_data",
        "_head_at",
        "_head_bytes",
        "_head_fed",
        "_head_raw",
        "_headers",
        "_in_head",
        "_in_message",
        "_incoming",
        "_limits",
        "_linger",
        "_lingered",
        "_lingering",
        "_lost",
        "_messages",
        "_next_head_at",
        "_parser",
        "_pause_reasons",
        "_phase",
        "_phase_at",
        "_progress",
        "_queue",
        "_registry",
        "_scheme",
        "_stopped",
        "_stream_pos",
        "_trailer_fed",
        "_transport",
        "_trusted",
        "_url",
        "write_paused",
    )

    def __init__(self, ctx: ProxyContext, registry: ConnectionRegistry) -> None:
        self._ctx = ctx
        self._registry = registry
        self._limits = ctx.limits
        self._parser = httptools.HttpRequestParser(self)
        # Declared by BatchedWrites, so not annotated again: compiled, a subclass that
        # redeclares them makes the garbage collector count them twice (mypyc's
        # tp_traverse visits the field once per declaration), and it then frees the
        # write batch and the transport while they are in use (a segfault).
        self._transport = None
        self._batch = None  # writes go out once per loop iteration
        self._client_ip = ""
        self._pause_reasons = 0  # why we stopped reading: a sum of _PAUSE bits (0: reading)
        self.write_paused = False  # our send buffer is full (read by exchanges)
        self._queue: list[Exchange] = []  # [0] runs; the rest wait their turn
        self._incoming: Exchange | None = None  # the request whose body is being read
        self._stopped = False  # read no further requests on this connection
        self._lost = False
        self._linger = False  # close() lingers: a refused request's rest may be coming
        self._lingering = False
        self._lingered = 0
        self._trusted = False  # the peer is in limits.trusted_networks
        self._scheme = b"http"
        # Read timeouts (see sweep): the phase, when it began (0.0: the next sweep
        # stamps it), and whether body bytes came since the last sweep.
        self._phase = _FRESH
        self._phase_at = 0.0
        self._progress = False
        # Where heads start in the byte stream (see the module docstring):
        self._stream_pos = 0  # bytes received before the current read
        self._data = b""  # the current read
        self._head_at: int | None = None  # stream offset of the current head; None: unknown
        self._next_head_at: int | None = 0
        self._head_raw = bytearray()  # the current head's bytes from earlier reads
        self._in_message = False  # between on_message_begin and on_message_complete
        self._chunk_empty = False  # a chunk header and no data since: the trailers, or a wait
        self._trailer_fed = 0  # raw bytes fed while in a chunked body's trailers
        # The request head being parsed:
        self._in_head = False
        self._messages = 0
        self._url: list[bytes] = []
        self._headers: list[Header] = []
        self._head_bytes = 0  # exact: URL and completed headers
        self._head_fed = 0  # raw bytes fed while in the head (catches one giant header)

    # --- used by exchanges (ClientSide) -------------------------------------------

    @property
    def running(self) -> Exchange | None:
        """The exchange being answered now (read by the admin server's in-flight count)."""
        return self._queue[0] if self._queue else None

    def write(self, data: bytes) -> None:
        if self._phase == _EXPECT:  # answered (100 Continue or final): the body is due now
            self._phase, self._phase_at = _BODY, 0.0
        self._send(data)  # batch.py: sent at the end of this loop iteration

    def writelines(self, parts: list[bytes]) -> None:
        if self._phase == _EXPECT:
            self._phase, self._phase_at = _BODY, 0.0
        self._send(parts)

    def pause_reading(self, reason: str) -> None:
        transport = self._transport
        if not self._pause_reasons and transport is not None and not transport.is_closing():
            transport.pause_reading()
        self._pause_reasons |= _PAUSE[reason]

    def resume_reading(self, reason: str) -> None:
        if self._pause_reasons:
            self._resume(_PAUSE[reason])

    def _resume(self, bits: int) -> None:
        """Lift the pauses in ``bits``; read again once no other is left."""
        if not self._pause_reasons & bits:
            return
        self._pause_reasons &= ~bits
        transport = self._transport
        if not self._pause_reasons and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        if self._pause_reasons:  # the pauses an exchange takes end with it
            self._resume(_PAUSE_EXCHANGE)
        queue = self._queue
        if not queue or queue[0] is not exchange:
            return  # the connection was lost meanwhile
        del queue[0]
        # A stopped connection still answers the requests it already read.
        if not keep_alive or (self._stopped and not queue):
            if self._in_message:
                # Answered before the request's body was read (a body too large to hold,
                # say): the client may still be sending it. Linger, or the kernel resets
                # the connection on the unread bytes and the client loses our answer.
                self._linger = True
            self._stop_reading()
            self.close()
            return
        if self._pause_reasons and len(queue) <= 1:
            self._resume(_PAUSE_PIPELINE)
        if queue:
            queue[0].start()
        elif not self._in_message:
            self._phase, self._phase_at = _IDLE, 0.0

    def abort(self) -> None:
        if self._transport is not None:
            self._flush()  # what was written goes first, as it did without batching
            self._transport.abort()

    def take_transport(self) -> asyncio.Transport | None:
        """Hand the connection to a tunnel (after a 101); no more HTTP is read here.

        The connection stays registered until ``tunnel_closed``, so the router's
        shutdown (``abort``) still reaches it.
        """
        self._stopped = True
        self._phase = _NONE
        self._queue.clear()
        self._incoming = None
        self._flush()  # the 101 goes before the tunnel's first bytes
        return self._transport

    def tunnel_closed(self) -> None:
        self._registry.client_closed(self)

    def close(self) -> None:
        """Close once everything written so far is sent."""
        for exchange in list(self._queue):
            exchange.client_lost()
        self._queue.clear()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._flush()
        if self._linger and not self._lingering and transport.can_write_eof():
            # We refused a request the client may still be sending: closing with unread
            # bytes makes the kernel reset the connection, and the client loses our
            # answer. Send FIN after the answer and drop what still comes for a while.
            self._lingering = True
            transport.write_eof()
            self._pause_reasons = 0
            transport.resume_reading()
            asyncio.get_running_loop().call_later(LINGER_SECONDS, self._linger_over)
        else:
            transport.close()

    def _linger_over(self) -> None:
        if self._transport is not None and not self._lost:
            self._transport.abort()

    # --- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._batch = batch_for_running_loop()
        transport.set_write_buffer_limits(
            high=self._limits.write_buffer_high, low=self._limits.write_buffer_low
        )
        peer = transport.get_extra_info("peername")
        self._client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        networks = self._limits.trusted_networks
        self._trusted = bool(networks) and is_trusted(self._client_ip, networks)
        if transport.get_extra_info("ssl_object") is not None:
            self._scheme = b"https"
        self._registry.client_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stopped = self._lost = True
        self._phase = _NONE
        for exchange in list(self._queue):
            exchange.client_lost()
        self._queue.clear()
        self._incoming = None
        self._registry.client_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._queue:
            self._queue[0].client_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False  # our send buffer is full (read by exchanges)
        if self._queue:
            self._queue[0].client_write_resumed()

    def data_received(self, data: bytes) -> None:  # noqa: C901 (the per-read hot path, kept whole)
        if self._stopped:
            if self._lingering:
                self._lingered += len(data)
                if self._lingered > LINGER_BYTES:
                    self.abort()
            return
        in_head_before, messages_before = self._in_head, self._messages
        trailing = self._chunk_empty and self._in_message and not in_head_before
        self._data = data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The request asked to switch protocols and the parser cannot read on
            # after it: what followed its head belongs to the new protocol (tunnel.py).
            self._stop_reading()
            if self._queue:
                exchange = self._queue[-1]
                if not exchange.upgrade_requested(data[upgrade.args[0] :]):
                    self._incoming = exchange  # unusable: answered 400 in its turn
                    self._reject(400)
            else:  # already answered (e.g. the maintenance page): nothing more to do
                self.close()
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, (HeadTooLarge, BadRequest)):
                self._reject(cause.status)
            else:
                log.error("router: request handling failed", exc_info=cause or error)
                self._reject(500)
            return
        except httptools.HttpParserError as error:
            self._reject(parser_error_status(error))
            return
        finally:
            self._stream_pos += len(data)
            self._data = b""  # an idle connection must not keep its last read alive
        if self._in_head:
            if in_head_before and messages_before == self._messages:
                self._head_fed += len(data)  # all of it belongs to the same unfinished head
            if self._head_fed > self._limits.max_head_bytes:
                self._reject(431)
            elif self._head_at is not None:  # kept for check_raw_head when the head is complete
                start = self._head_at - (self._stream_pos - len(data))
                self._head_raw += data[start:] if start > 0 else data
        elif not self._in_message:
            self._next_head_at = self._stream_pos  # the next head starts with the next read
        elif trailing and self._chunk_empty:
            # Trailers are dropped, but the parser holds each one whole until it ends.
            self._trailer_fed += len(data)
            if self._trailer_fed > self._limits.max_head_bytes:
                self._reject(431)
        else:
            self._trailer_fed = 0

    # --- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = self._in_message = True
        self._head_at, self._next_head_at = self._next_head_at, None
        if self._head_raw:
            self._head_raw.clear()
        self._phase, self._phase_at = _HEAD, 0.0
        self._messages += 1
        if self._url or self._headers:  # left by a head that was refused
            self._url.clear()
            self._headers.clear()
        self._head_bytes = 0
        self._head_fed = 0

    def on_url(self, part: bytes) -> None:
        self._url.append(part)
        size = self._head_bytes = self._head_bytes + len(part)
        if size > self._limits.max_head_bytes:
            raise HeadTooLarge()
        if size > self._limits.max_header_bytes:
            raise HeadTooLarge(414)  # so far only the URL is counted

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # trailers after a chunked body are dropped for now
            headers, limits = self._headers, self._limits
            field = len(name) + len(value)
            if len(headers) >= limits.max_header_fields or field + 2 > limits.max_header_bytes:
                raise HeadTooLarge()
            headers.append((name, value))
            size = self._head_bytes = self._head_bytes + field + 4
            if size > limits.max_head_bytes:
                raise HeadTooLarge()

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        head_end: int | None
        if self._head_at is not None:
            head_end, version = self._raw_head()
        else:
            head_end, version = None, parser.get_http_version()
        method = parser.get_method()
        if method == b"CONNECT":
            raise BadRequest("CONNECT is not supported by this router")
        url, headers = self._url, self._headers
        request = request_head(
            method,
            b"".join(url),
            version,
            headers,
            parser.should_keep_alive(),
            self._client_ip,
            client_trusted=self._trusted,
            scheme=self._scheme,
        )
        # The request keeps its own copy: an idle connection holds no old head.
        url.clear()
        headers.clear()
        body = request.body
        if body is Body.NONE or (body is Body.LENGTH and not request.content_length):
            self._phase = _NONE
            self._next_head_at = head_end
        else:
            waits = header_value(request.headers, b"expect") is not None
            self._phase, self._phase_at, self._progress = _EXPECT if waits else _BODY, 0.0, False
            if body is Body.LENGTH and head_end is not None:
                self._next_head_at = head_end + request.content_length
        exchange = Exchange(self, self._ctx, request, parser.should_upgrade())
        self._incoming = exchange
        self._queue.append(exchange)
        if len(self._queue) == 1:
            exchange.start()
        else:
            self.pause_reading("pipeline")

    def on_body(self, data: bytes) -> None:
        self._progress = True
        self._chunk_empty = False
        if self._phase == _EXPECT:
            self._phase, self._phase_at = _BODY, 0.0
        if self._incoming is not None:
            self._incoming.request_body(data)

    def on_chunk_header(self) -> None:
        self._chunk_empty = True

    def on_message_complete(self) -> None:
        self._in_message = self._chunk_empty = False
        if self._phase == _BODY or self._phase == _EXPECT:
            self._phase = _NONE
        exchange, self._incoming = self._incoming, None
        if exchange is None:
            return
        if not exchange.request.keep_alive:
            self._stop_reading()  # the client said this is its last request
        exchange.request_complete()

    # --- helpers ----------------------------------------------------------------------

    def _raw_head(self) -> tuple[int, str]:
        """Check the raw head just parsed (headers.raw_head): its end as a stream offset,
        and its HTTP version."""
        assert self._head_at is not None
        data, raw = self._data, self._head_raw
        if raw:  # the head began in an earlier read
            end, version = raw_head(bytes(raw) + data, 0)
            return self._head_at + end, version
        read_at = self._stream_pos  # this read's first byte (updated after feed_data)
        end, version = raw_head(data, self._head_at - read_at)
        return read_at + end, version

    def _stop_reading(self) -> None:
        self._stopped = True
        self._phase = _NONE
        self.pause_reading("stopped")

    def _reject(self, status: int) -> None:
        """The bytes just read are not a valid request: answer ``status`` and close."""
        self._stop_reading()
        self._linger = True
        broken = self._incoming
        self._incoming = None
        if broken is not None and self._queue and self._queue[0] is broken:
            broken.request_broken(status)  # it answers (or cuts) and closes
            return
        if broken is not None and broken in self._queue:
            self._queue.remove(broken)  # never started; the running one finishes, then close
            return
        if not self._queue:
            # Refused before an exchange existed: answered and reported like one.
            Exchange(self, self._ctx, self._refused_request()).refuse(status)
            self.close()

    def _refused_request(self) -> RequestHead:
        """What is known of a request refused while its head was read, for the access log."""
        url, headers = self._url, self._headers
        method, target, version = b"-", b"-", "-"
        if url:  # the method was parsed (before that the parser reports its default)
            method, target = self._parser.get_method(), b"".join(url)
            parsed = self._parser.get_http_version()  # "0.0" until the version was read
            if parsed != "0.0":
                version = parsed
        request = RequestHead(
            method=method,
            target=target,
            version=version,
            headers=tuple(headers),
            keep_alive=False,
            body=Body.NONE,
            content_length=0,
            transfer_encoding=b"",
            client_ip=self._client_ip,
            client_trusted=self._trusted,
            scheme=self._scheme,
        )
        url.clear()
        headers.clear()
        return request

    # --- timeouts -------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Enforce this connection's read timeout (called by ``ConnectionSweeper``).

        A phase's clock starts at the first sweep that sees it, and stops while
        we paused reading ourselves (backpressure, pipelining): then the client
        is not the slow one.
        """
        if self._queue:  # the running exchange's backend must answer in time
            self._queue[0].sweep(now)
        phase = self._phase
        if phase in (_NONE, _EXPECT):
            return
        if self._phase_at == 0.0 or self._pause_reasons or (phase == _BODY and self._progress):
            self._phase_at, self._progress = now, False
            return
        limits = self._limits
        if phase in (_HEAD, _FRESH):
            limit = limits.header_timeout
        elif phase == _BODY:
            limit = limits.body_idle_timeout
        else:
            limit = limits.client_idle_timeout
        if now - self._phase_at < limit:
            return
        if phase in (_HEAD, _BODY):
            log.debug("router: %s timed out reading a request from %s", phase, self._client_ip)
            self._reject(408)
        elif not self._queue:  # nothing sent yet, or idle: no answer owed
            self._stop_reading()
            self.close()
