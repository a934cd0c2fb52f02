"""What goes to the backend: the request head as the router forwards it (pure, no I/O).

Hop-by-hop headers and the client's own forwarding headers are dropped (kept only
from a trusted proxy), and the router's X-Forwarded-* and RFC 7239 Forwarded
headers added. Split from headers.py, which decides what a request is; this
decides what a node receives.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from hakit.config import NodeConfig
from hakit.router.headers import (
    FORWARDING,
    HOP_BY_HOP,
    PROXY_ONLY,
    TCHAR,
    Body,
    Header,
    RequestHead,
    lengths_mask,
    strips_beyond_hop_by_hop,
    without_named,
)
from hakit.router.hooks import ExchangeHooks
from hakit.router.responses import encode_head
from hakit.router.tunnel import upgrade_request_headers

_NOT_FORWARDED: Final = HOP_BY_HOP | FORWARDING | PROXY_ONLY | {b"host"}
_NOT_FORWARDED_LENGTHS: Final = lengths_mask(_NOT_FORWARDED)
_TOKEN: Final = re.compile(rb"[" + TCHAR + rb"]+")


def forwarded_node(client_ip: str) -> bytes:
    """The RFC 7239 node for ``client_ip``: IPv6 bracketed and quoted (section 6)."""
    if ":" in client_ip:
        return b'"[' + client_ip.encode("ascii", "replace") + b']"'
    return client_ip.encode("ascii", "replace")


def _forwarded_value(value: bytes) -> bytes:
    """A token as is, anything else as a quoted-string (RFC 7239 4)."""
    if _TOKEN.fullmatch(value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@functools.lru_cache(maxsize=4096)
def _describe_client(client_ip: str, scheme: bytes, host: bytes | None) -> tuple[bytes, bytes]:
    """(X-Forwarded-For entry, Forwarded element) for a client; cached: clients repeat."""
    element = b"for=" + forwarded_node(client_ip) + b";proto=" + scheme
    if host:
        element += b";host=" + _forwarded_value(host)
    return client_ip.encode("ascii", "replace"), element


@functools.lru_cache(maxsize=4096)
def _forwarding(client_ip: str, scheme: bytes, host: bytes | None) -> tuple[Header, ...]:
    """The forwarding headers for a client none of whose own were kept (the usual case)."""
    client, element = _describe_client(client_ip, scheme, host)
    out = [(b"X-Forwarded-For", client), (b"X-Forwarded-Proto", scheme)]
    if host:
        out.append((b"X-Forwarded-Host", host))
    out.append((b"Forwarded", element))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _forwarding_lines(client_ip: str, scheme: bytes, host: bytes | None) -> bytes:
    """``_forwarding``, encoded as header lines."""
    return b"".join(
        key + b": " + value + b"\r\n" for key, value in _forwarding(client_ip, scheme, host)
    )


def upstream_request_head(request: RequestHead, default_host: bytes) -> bytes | None:
    """The head sent to the backend, encoded: request line and ``upstream_request_headers``.

    The usual request in one pass (this runs for every request); None when
    ``upstream_request_headers`` must do it: a trusted peer's forwarding
    headers, or a Connection header naming more than hop-by-hop ones.
    """
    parts = [request.method, b" ", request.target, b" HTTP/1.1\r\n"]
    host: bytes | None = None
    connection: list[bytes] | None = None
    trusted = request.client_trusted
    for key, value in request.headers:
        if (
            not (_NOT_FORWARDED_LENGTHS >> len(key)) & 1
            or (name := key.lower()) not in _NOT_FORWARDED
        ):
            parts += (key, b": ", value, b"\r\n")
        elif name == b"host":
            host = value
            parts += (key, b": ", value, b"\r\n")
        elif name == b"connection":
            if connection is None:
                connection = [value]
            else:
                connection.append(value)
        elif name in PROXY_ONLY:
            if trusted:
                parts += (key, b": ", value, b"\r\n")
        elif trusted and name in FORWARDING:
            return None
    if connection is not None and strips_beyond_hop_by_hop(connection):
        return None
    if host is None:
        parts += (b"Host: ", default_host, b"\r\n")
    parts.append(_forwarding_lines(request.client_ip, request.scheme, host))
    if request.body is Body.LENGTH:
        parts += (b"Content-Length: ", str(request.content_length).encode(), b"\r\n\r\n")
    elif request.body is Body.CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def upstream_request_headers(request: RequestHead, default_host: bytes) -> list[Header]:
    """The headers sent to the backend: end-to-end ones, forwarding headers, framing.

    Host is kept as the client sent it (the app builds its URLs from it). The
    forwarding headers (X-Forwarded-For/-Proto/-Host, Forwarded) describe the
    client: a trusted proxy's are extended (For, Forwarded) or kept (Proto,
    Host); anyone else's are replaced, so a client cannot choose the address
    the app sees. The ``PROXY_ONLY`` ones are kept from a trusted proxy, else dropped.
    """
    out: list[Header] = []
    host: bytes | None = None
    earlier: list[Header] | None = None  # a trusted peer's forwarding headers
    connection: list[bytes] | None = None
    for key, value in request.headers:  # one pass: this runs for every request
        name = key.lower()
        if name not in _NOT_FORWARDED:
            out.append((key, value))
        elif name == b"host":
            host = value
            out.append((key, value))
        elif name == b"connection":
            if connection is None:
                connection = [value]
            else:
                connection.append(value)
        elif name in PROXY_ONLY:
            if request.client_trusted:
                out.append((key, value))
        elif request.client_trusted and name in FORWARDING:
            if earlier is None:
                earlier = [(name, value)]
            else:
                earlier.append((name, value))
    if connection is not None:
        out = without_named(out, connection)
    if host is None:
        out.append((b"Host", default_host))
    scheme = request.scheme
    if earlier is None:
        out += _forwarding(request.client_ip, scheme, host)
    else:
        _extend_forwarding(out, earlier, request.client_ip, scheme, host)
    if request.body is Body.LENGTH:
        out.append((b"Content-Length", str(request.content_length).encode()))
    elif request.body is Body.CHUNKED:
        out.append((b"Transfer-Encoding", b"chunked"))
    return out


def _extend_forwarding(
    out: list[Header], earlier: list[Header], client_ip: str, scheme: bytes, host: bytes | None
) -> None:
    """The forwarding headers after a trusted proxy's (``earlier``, names in lower case)."""
    earlier_for: list[bytes] = []
    earlier_forwarded: list[bytes] = []
    proto: bytes | None = None
    forwarded_host: bytes | None = None
    for name, value in earlier:
        if name == b"x-forwarded-for":
            earlier_for.append(value)
        elif name == b"forwarded":
            earlier_forwarded.append(value)
        elif name == b"x-forwarded-proto":
            proto = proto or value
        else:  # x-forwarded-host
            forwarded_host = forwarded_host or value
    client, element = _describe_client(client_ip, scheme, host)
    out.append((b"X-Forwarded-For", b", ".join([*earlier_for, client]) if earlier_for else client))
    out.append((b"X-Forwarded-Proto", proto or scheme))
    if forwarded_host is not None or host:
        out.append((b"X-Forwarded-Host", forwarded_host or host or b""))
    if earlier_forwarded:
        element = b", ".join([*earlier_forwarded, element])
    out.append((b"Forwarded", element))


def backend_request_head(
    request: RequestHead,
    default_host: bytes,
    upgrade: bytes | None,
    hooks: ExchangeHooks,
    node: NodeConfig,
) -> bytes:
    """The head ``request`` goes to ``node`` with: encoded in one pass in the usual case;
    as a header list when it asks for a protocol upgrade (the ``upgrade`` token, re-sent
    hop by hop) or the hooks rewrite it (a sticky strategy)."""
    if upgrade is None and (not hooks.rewrites_requests or hooks.leaves_request(request)):
        head = upstream_request_head(request, default_host)
        if head is not None:
            return head
    headers = upstream_request_headers(request, default_host)
    if upgrade is not None:
        headers += upgrade_request_headers(upgrade)
    if hooks.rewrites_requests:
        hooks.request(request, node, headers)
    return encode_head(b"%s %s HTTP/1.1" % (request.method, request.target), headers)
