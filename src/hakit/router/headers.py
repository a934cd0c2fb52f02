"""Pure HTTP/1.1 header and framing decisions for the proxy (no I/O).

The connection protocols (http.py, upstream.py) parse bytes and call these
functions to decide what to forward and how each body is delimited, so the
rules can be read (and tested) in one place.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Header = tuple[bytes, bytes]

# Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
# Upgrade is here until WebSocket tunnelling exists. Transfer-Encoding and
# Content-Length are removed too and re-added by the framing decision below.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
        b"content-length",
    }
)

# A client may name any header in Connection to make a proxy drop it. These
# never are: dropping them would desynchronise framing (Content-Length,
# Transfer-Encoding) or silently strip identity and session (Host, Cookie,
# Authorization), a known way to bypass checks behind a proxy.
NEVER_CONNECTION_STRIPPED = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"cookie",
        b"set-cookie",
        b"authorization",
        b"content-type",
    }
)

# RFC 9110 9.2.2: repeating these has the same effect as sending them once.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class Body(enum.Enum):
    """How a message body is delimited on one connection."""

    NONE = "none"  # no body at all
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # chunked transfer coding, terminated by a zero chunk
    UNTIL_CLOSE = "until-close"  # everything until the sender closes (responses only)


class BadRequest(ValueError):
    """A request parsed but must not be forwarded; maps to HTTP 400."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: bytes
    target: bytes
    version: str  # "1.0" or "1.1", as the client sent it
    headers: tuple[Header, ...]  # as received, names in their original case
    keep_alive: bool  # the client wants the connection kept (parser's verdict)
    body: Body  # NONE, LENGTH or CHUNKED
    content_length: int  # with Body.LENGTH; 0 otherwise
    transfer_encoding: bytes  # the received value with Body.CHUNKED; b"" otherwise
    client_ip: str

    @property
    def host(self) -> bytes | None:
        return header_value(self.headers, b"host")

    @property
    def accept(self) -> str | None:
        value = header_value(self.headers, b"accept")
        return value.decode("latin-1") if value is not None else None

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT_METHODS

    @property
    def is_head(self) -> bool:
        return self.method == b"HEAD"


@dataclass(frozen=True, slots=True)
class ResponseFraming:
    body: Body  # how the body goes to the client
    keep_alive: bool  # the client connection stays open afterwards


def header_value(headers: Iterable[Header], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip().lower() for token in value.split(b",") if token.strip()]


def connection_named(headers: Iterable[Header]) -> frozenset[bytes]:
    """Header names listed in Connection (lower case), minus the protected ones."""
    named: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            named.update(_tokens(value))
    return frozenset(named - NEVER_CONNECTION_STRIPPED)


def end_to_end(headers: Iterable[Header]) -> list[Header]:
    """``headers`` without hop-by-hop ones and without those named in Connection."""
    headers = list(headers)
    dropped = HOP_BY_HOP | connection_named(headers)
    return [(key, value) for key, value in headers if key.lower() not in dropped]


def request_head(
    method: bytes,
    target: bytes,
    version: str,
    headers: Sequence[Header],
    keep_alive: bool,
    client_ip: str,
) -> RequestHead:
    """Validate what the parser accepted and work out the request's body framing.

    llhttp already rejects conflicting Content-Length / Transfer-Encoding and a
    Transfer-Encoding not ending in chunked; what remains are the Host rules
    (RFC 9112 3.2: exactly one Host in HTTP/1.1).
    """
    hosts = [value for key, value in headers if key.lower() == b"host"]
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    if not hosts and version == "1.1":
        raise BadRequest("HTTP/1.1 request without a Host header")
    transfer_encoding = header_value(headers, b"transfer-encoding")
    length = header_value(headers, b"content-length")
    if transfer_encoding is not None:
        body, content_length = Body.CHUNKED, 0
    elif length is not None:
        if not length.strip().isdigit():
            raise BadRequest("Content-Length is not a number")
        body, content_length = Body.LENGTH, int(length)
    else:
        body, content_length = Body.NONE, 0
    return RequestHead(
        method=method,
        target=target,
        version=version,
        headers=tuple(headers),
        keep_alive=keep_alive,
        body=body,
        content_length=content_length,
        transfer_encoding=transfer_encoding or b"",
        client_ip=client_ip,
    )


def upstream_request_headers(request: RequestHead, default_host: bytes) -> list[Header]:
    """The headers sent to the backend: end-to-end ones, X-Forwarded-*, framing.

    Host is kept as the client sent it (the app builds its URLs from it);
    X-Forwarded-For gets the client appended to any earlier proxies.
    """
    headers = end_to_end(request.headers)
    earlier = [value for key, value in headers if key.lower() == b"x-forwarded-for"]
    headers = [
        (key, value)
        for key, value in headers
        if key.lower() not in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
    ]
    if not any(key.lower() == b"host" for key, _ in headers):
        headers.append((b"Host", default_host))
    client = request.client_ip.encode("ascii", "replace")
    headers.append((b"X-Forwarded-For", b", ".join([*earlier, client])))
    headers.append((b"X-Forwarded-Proto", b"http"))
    host = request.host
    if host is not None:
        headers.append((b"X-Forwarded-Host", host))
    if request.body is Body.LENGTH:
        headers.append((b"Content-Length", str(request.content_length).encode()))
    elif request.body is Body.CHUNKED:
        headers.append((b"Transfer-Encoding", request.transfer_encoding))
    return headers


def response_has_body(status: int, request_method: bytes) -> bool:
    """RFC 9112 6.3: HEAD responses and 1xx/204/304 never carry a body."""
    return not (request_method == b"HEAD" or status < 200 or status in (204, 304))


def upstream_body(status: int, request_method: bytes, headers: Iterable[Header]) -> Body:
    """How the backend delimits this response's body."""
    if not response_has_body(status, request_method):
        return Body.NONE
    headers = list(headers)
    if header_value(headers, b"transfer-encoding") is not None:
        return Body.CHUNKED
    if header_value(headers, b"content-length") is not None:
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
    out = end_to_end(headers)
    length = header_value(headers, b"content-length")
    transfer_encoding = header_value(headers, b"transfer-encoding")
    if framing.body is Body.LENGTH or (framing.body is Body.NONE and length is not None):
        # Kept on bodiless responses too: on HEAD and 304 it describes the representation.
        if length is not None:
            out.append((b"Content-Length", length))
    elif framing.body is Body.CHUNKED:
        out.append((b"Transfer-Encoding", transfer_encoding or b"chunked"))
    elif framing.body is Body.NONE and transfer_encoding is not None and request.version == "1.1":
        out.append((b"Transfer-Encoding", transfer_encoding))
    if not framing.keep_alive:
        out.append((b"Connection", b"close"))
    elif request.version == "1.0":
        out.append((b"Connection", b"keep-alive"))
    return out


def encode_head(first_line: bytes, headers: Iterable[Header]) -> bytes:
    """A message head: first line, headers, blank line."""
    parts = [first_line, b"\r\n"]
    for key, value in headers:
        parts += (key, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk_prefix(size: int) -> bytes:
    return b"%x\r\n" % size


LAST_CHUNK = b"0\r\n\r\n"
CRLF = b"\r\n"
