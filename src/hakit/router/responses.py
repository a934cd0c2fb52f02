"""What goes to the client: a node's response head as the router relays it (pure, no I/O).

The backend's response head is collected (``ResponseHead``), its framing decided
against the request (``response_framing``: the body delimited by length,
chunks or the connection's end) and the head the client gets encoded. Split
from headers.py, which decides what a request is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from hakit.config import NodeConfig
from hakit.router.headers import (
    HOP_BY_HOP,
    HOP_BY_HOP_LENGTHS,
    Body,
    Header,
    RequestHead,
    strip_named,
    strips_beyond_hop_by_hop,
    without_named,
)
from hakit.router.hooks import ExchangeHooks


@dataclass(frozen=True, slots=True)
class ResponseFraming:
    body: Body  # how the body goes to the client
    keep_alive: bool  # the client connection stays open afterwards


# A response head's headers sorted in one pass (``response_fields``): the end-to-end
# ones (as ``end_to_end`` returns them: a new list, the caller's), the first
# Content-Length value and the first Transfer-Encoding value. A plain tuple: one
# per response.
ResponseFields = tuple[list[Header], bytes | None, bytes | None]


class ResponseHead:
    """A backend's response head, sorted while it is parsed (upstream.py).

    ``add`` is the parser's header callback: each header is kept as received
    (``headers``) and, if end-to-end, encoded at once (``lines``); the framing
    ones are noted. So the usual response is forwarded without another pass
    over its headers (``client_head``). One per backend connection, ``reset``
    for each response (and each 1xx before it).
    """

    __slots__ = ("coding", "connection", "headers", "in_head", "length", "lines")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.in_head = True  # False once the head ended: later fields are trailers (dropped)
        self.headers: list[Header] = []  # as received
        self.lines: list[bytes] = [b""]  # [0]: room for the status line; end-to-end headers
        self.length: bytes | None = None  # the first Content-Length value
        self.coding: bytes | None = None  # the first Transfer-Encoding value
        self.connection: list[bytes] | None = None  # the Connection values

    def add(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            self.headers.append((name, value))
            if (
                not (HOP_BY_HOP_LENGTHS >> len(name)) & 1
                or (lower := name.lower()) not in HOP_BY_HOP
            ):
                lines = self.lines  # appends: compiled (mypyc), cheaper than += a tuple
                lines.append(name)
                lines.append(b": ")
                lines.append(value)
                lines.append(b"\r\n")
            elif lower == b"content-length":
                if self.length is None:
                    self.length = value
            elif lower == b"transfer-encoding":
                if self.coding is None:
                    self.coding = value
            elif lower == b"connection":
                if self.connection is None:
                    self.connection = [value]
                else:
                    self.connection.append(value)

    @property
    def strips_more(self) -> bool:
        """Connection names headers beyond the hop-by-hop ones (``lines`` still has them)."""
        connection = self.connection
        if connection is None:
            return False
        return strips_beyond_hop_by_hop(connection)


def client_head(
    head: ResponseHead,
    status_line: bytes,
    request: RequestHead,
    body: Body,
    keep_alive: bool,
    extra: Iterable[Header] = (),
) -> bytes:
    """``head`` as the client receives it, encoded: ``status_line`` (with its CRLF), the
    end-to-end headers, ``client_headers``' framing ones, then ``extra``.

    Not when ``head.strips_more`` (then ``client_headers(response_fields(head.headers))``).
    Uses up ``head.lines``.
    """
    lines = head.lines
    lines[0] = status_line
    length, coding = head.length, head.coding
    if body is Body.LENGTH or (body is Body.NONE and length is not None):
        if length is not None:
            lines += (b"Content-Length: ", length, b"\r\n")
    elif body is Body.CHUNKED:
        lines += (b"Transfer-Encoding: ", coding or b"chunked", b"\r\n")
    elif body is Body.NONE and coding is not None and request.version == "1.1":
        lines += (b"Transfer-Encoding: ", coding, b"\r\n")
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    elif request.version == "1.0":
        lines.append(b"Connection: keep-alive\r\n")
    for key, value in extra:
        lines += (key, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def response_fields(headers: Iterable[Header]) -> ResponseFields:
    """The end-to-end headers and the framing ones, in one pass (every response)."""
    out: list[Header] = []
    connection: list[bytes] = []
    length = coding = None
    for key, value in headers:
        name = key.lower()
        if name not in HOP_BY_HOP:
            out.append((key, value))
        elif name == b"content-length":
            if length is None:
                length = value
        elif name == b"transfer-encoding":
            if coding is None:
                coding = value
        elif name == b"connection":
            connection.append(value)
    if connection and strip_named(connection[0] if len(connection) == 1 else b",".join(connection)):
        out = without_named(out, connection)
    return out, length, coding


def response_has_body(status: int, request_method: bytes) -> bool:
    """RFC 9112 6.3: HEAD responses and 1xx/204/304 never carry a body."""
    return not (request_method == b"HEAD" or status < 200 or status in (204, 304))


def upstream_body(status: int, request_method: bytes, headers: Iterable[Header]) -> Body:
    """How the backend delimits this response's body."""
    if not response_has_body(status, request_method):
        return Body.NONE
    _, length, coding = response_fields(headers)
    if coding is not None:
        return Body.CHUNKED
    if length is not None:
        return Body.LENGTH
    return Body.UNTIL_CLOSE


def response_framing(upstream: Body, request: RequestHead) -> ResponseFraming:
    """How the client receives a body the backend delimited as ``upstream``.

    HTTP/1.1 clients get a chunked re-encoding of bodies the backend
    delimited by closing, so their connection survives. HTTP/1.0 clients
    cannot read chunked: they get the body delimited by our close.
    """
    keep = request.keep_alive
    if upstream in (Body.CHUNKED, Body.UNTIL_CLOSE):
        if request.version == "1.1":
            return ResponseFraming(Body.CHUNKED, keep)
        return ResponseFraming(Body.UNTIL_CLOSE, False)
    return ResponseFraming(upstream, keep)


def client_response_headers(
    status: int, headers: Sequence[Header], request: RequestHead, framing: ResponseFraming
) -> list[Header]:
    """The backend's response headers as the client receives them."""
    return client_headers(response_fields(headers), request, framing.body, framing.keep_alive)


def client_headers(
    fields: ResponseFields, request: RequestHead, body: Body, keep_alive: bool
) -> list[Header]:
    """``client_response_headers`` from the sorted fields (the list is ``fields``' own)."""
    out, length, transfer_encoding = fields
    if body is Body.LENGTH or (body is Body.NONE and length is not None):
        # Kept on bodiless responses too: on HEAD and 304 it describes the representation.
        if length is not None:
            out.append((b"Content-Length", length))
    elif body is Body.CHUNKED:
        out.append((b"Transfer-Encoding", transfer_encoding or b"chunked"))
    elif body is Body.NONE and transfer_encoding is not None and request.version == "1.1":
        out.append((b"Transfer-Encoding", transfer_encoding))
    if not keep_alive:
        out.append(_CONNECTION_CLOSE)
    elif request.version == "1.0":
        out.append(_CONNECTION_KEEP_ALIVE)
    return out


_CONNECTION_CLOSE: Final = (b"Connection", b"close")
_CONNECTION_KEEP_ALIVE: Final = (b"Connection", b"keep-alive")


def encode_head(first_line: bytes, headers: Iterable[Header]) -> bytes:
    """A message head: first line, headers, blank line."""
    parts = [first_line, b"\r\n"]
    for key, value in headers:
        parts += (key, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk_prefix(size: int) -> bytes:
    return b"%x\r\n" % size


LAST_CHUNK: Final = b"0\r\n\r\n"
CRLF: Final = b"\r\n"


# Status lines of the answers seen most, encoded once.
STATUS_LINES: Final = {
    (status, reason): b"HTTP/1.1 %d %s\r\n" % (status, reason)
    for status, reason in (
        (200, b"OK"),
        (201, b"Created"),
        (204, b"No Content"),
        (301, b"Moved Permanently"),
        (302, b"Found"),
        (303, b"See Other"),
        (304, b"Not Modified"),
        (307, b"Temporary Redirect"),
        (400, b"Bad Request"),
        (401, b"Unauthorized"),
        (403, b"Forbidden"),
        (404, b"Not Found"),
        (500, b"Internal Server Error"),
        (502, b"Bad Gateway"),
        (503, b"Service Unavailable"),
    )
}


def encode_status_head(status_line: bytes, headers: Iterable[Header]) -> bytes:
    """A response head from its status line (with its CRLF) and headers."""
    parts = [status_line]
    for key, value in headers:
        parts += (key, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def hooked_client_head(
    head: ResponseHead,
    status_line: bytes,
    request: RequestHead,
    body: Body,
    keep_alive: bool,
    hooks: ExchangeHooks,
    node: NodeConfig,
    status: int,
) -> bytes:
    """``client_head`` with what ``hooks`` (a sticky strategy) do to the response's
    headers: appended after the backend's when that is all they do, else on the header
    list (built then, as it is when Connection names end-to-end headers to drop)."""
    if head.strips_more or not hooks.appends_to_responses:
        out = client_headers(response_fields(head.headers), request, body, keep_alive)
        hooks.response(request, node, status, out)
        return encode_status_head(status_line, out)
    extra: list[Header] = []
    hooks.response(request, node, status, extra)
    return client_head(head, status_line, request, body, keep_alive, extra)
