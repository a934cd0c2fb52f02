"""Pure HTTP/1.1 header and framing decisions for the proxy (no I/O).

The connection protocols (http.py, upstream.py) parse bytes and call these
functions to decide what to forward and how each body is delimited, so the
rules can be read (and tested) in one place.

Requests are held to RFC 9112 strictly: llhttp (httptools) rejects most
malformed framing itself (its lenient flags are all off by default: obs-fold,
bare CR/LF, control characters, signs or lists in Content-Length, duplicate
Content-Length, Content-Length with Transfer-Encoding, bad chunk sizes); what it
lets through and we refuse is checked here: extra spaces in the request line,
HTTP versions other than 1.0/1.1, transfer codings other than ``chunked``,
Transfer-Encoding in HTTP/1.0, bodies on GET/HEAD, an invalid Host, absolute-
or asterisk-form targets we cannot serve, look-alike names of framing headers
(``Content_Length``), and HTAB inside framing header values.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

Header = tuple[bytes, bytes]

# Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
# Upgrade is here: tunnel.py adds it back to an upgrade request it forwards.
# Transfer-Encoding and Content-Length are removed too and re-added by the
# framing decision below.
HOP_BY_HOP: Final = frozenset(
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


def lengths_mask(names: Iterable[bytes]) -> int:
    """One bit per length of ``names``: ``(mask >> len(key)) & 1`` is 0 for a header name of
    another length, known to be none of them without lowering it.

    The hot loops below test this first. Most headers fail it, and each one spared
    saves a ``bytes.lower()`` method call and the hash of its new result (~500
    instructions a header; benchmarks/router_instructions.py).
    """
    mask = 0
    for name in names:
        mask |= 1 << len(name)
    return mask


_HOP_BY_HOP_LENGTHS: Final = lengths_mask(HOP_BY_HOP)

# A client may name any header in Connection to make a proxy drop it. These
# never are: dropping them would desynchronise framing (Content-Length,
# Transfer-Encoding) or silently strip identity and session (Host, Cookie,
# Authorization), a known way to bypass checks behind a proxy.
NEVER_CONNECTION_STRIPPED: Final = frozenset(
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

# What the router says about the client; whatever an untrusted client sent
# under these names is replaced, a trusted proxy's is extended.
FORWARDING: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)

# Other headers only a proxy may set: the client's address, port, scheme or original
# URL as other proxies, CDNs and frameworks name them (nginx's X-Real-IP, Akamai's
# True-Client-IP, CF-Connecting-IP, Fastly-Client-IP; X-Original-URL and X-Rewrite-URL
# override the path IIS or Symfony route by, a way round path rules). A backend that
# believes one sent by a client lets the client choose its address or its path, so an
# untrusted client's are dropped; a trusted proxy's are forwarded as it sent them.
PROXY_ONLY: Final = frozenset(
    {
        b"x-real-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"x-forwarded-scheme",
        b"x-forwarded-ssl",
        b"x-forwarded-prefix",
        b"x-original-url",
        b"x-rewrite-url",
    }
)

# Names a backend may read the same as the real ones (CGI/WSGI turn "-" and "_"
# into the same variable): such look-alikes are refused, not forwarded.
_LOOKALIKE_TARGETS: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"host"} | FORWARDING | PROXY_ONLY
)

# RFC 9110 9.2.2: repeating these has the same effect as sending them once.
IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# Methods whose request content has no defined meaning and which backends may
# read as bodiless: a body there is the CL.0 desync (RFC 9110 9.3.1 allows refusing).
_NO_BODY_METHODS: Final = frozenset({b"GET", b"HEAD"})

# Transfer codings that exist (RFC 9112 7) but that we do not decode -> 501.
_KNOWN_CODINGS: Final = frozenset({b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"})


class Body(enum.Enum):
    """How a message body is delimited on one connection."""

    NONE = "none"  # no body at all
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # chunked transfer coding, terminated by a zero chunk
    UNTIL_CLOSE = "until-close"  # everything until the sender closes (responses only)


class BadRequest(ValueError):
    """A request that must not be forwarded; ``status`` is the answer (400 unless said)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class RequestHead:
    """A parsed, checked request head (one per request; read-only by convention).

    A plain class with its own ``__init__`` rather than a dataclass: compiled
    (hakit/router/native.py), a dataclass's generated ``__init__`` still runs as
    interpreted Python, ~3,400 instructions per request for these 13 fields
    (measured with benchmarks/router_instructions.py); frozen, it costs more still.
    """

    __slots__ = (
        "body",
        "client_ip",
        "client_trusted",
        "content_length",
        "counted_for",
        "headers",
        "keep_alive",
        "method",
        "scheme",
        "sticky_memo",
        "target",
        "transfer_encoding",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: tuple[Header, ...],
        keep_alive: bool,
        body: Body,
        content_length: int,
        transfer_encoding: bytes,
        client_ip: str,
        client_trusted: bool = False,
        scheme: bytes = b"http",
    ) -> None:
        self.method = method
        self.target = target  # origin-form (or "*" for OPTIONS), as forwarded
        self.version = version  # "1.0" or "1.1", as the client sent it
        self.headers = headers  # as received, names in their original case
        self.keep_alive = keep_alive  # the client wants the connection kept (parser's verdict)
        self.body = body  # NONE, LENGTH or CHUNKED
        self.content_length = content_length  # with Body.LENGTH; 0 otherwise
        self.transfer_encoding = transfer_encoding  # the value with Body.CHUNKED; b"" otherwise
        self.client_ip = client_ip
        # The peer is a proxy we trust (router.trusted_proxies): its forwarding headers are kept.
        self.client_trusted = client_trusted
        self.scheme = scheme  # how the client reached us: b"http" or b"https" (TLS)
        # The sticky strategy's cookie lookup, done once per request (sticky.py):
        # (cookie name, its value or None); None before the first lookup.
        self.sticky_memo: tuple[bytes, bytes | None] | None = None
        # The node the router counts this request in flight for (server.Router.choose).
        self.counted_for: str | None = None

    def __repr__(self) -> str:
        return (
            f"RequestHead({self.method!r} {self.target!r} HTTP/{self.version}, "
            f"{len(self.headers)} headers, body {self.body.name}, from {self.client_ip})"
        )

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


@functools.lru_cache(maxsize=256)
def _strip_named(connection: bytes) -> frozenset[bytes]:
    """What a Connection value (several joined with ",") makes us strip beyond hop-by-hop.

    Cached: the values repeat (``keep-alive``, ``close``), so each is parsed once.
    """
    return frozenset(_tokens(connection)) - NEVER_CONNECTION_STRIPPED - HOP_BY_HOP


def strips_beyond_hop_by_hop(connection: list[bytes]) -> bool:
    """The Connection values ``connection`` name headers beyond the hop-by-hop ones.

    The values almost every peer sends are answered by comparison: the cached
    ``_strip_named`` costs a call through ``lru_cache`` (~750 instructions a response).
    """
    if len(connection) == 1:
        value = connection[0]
        if (
            value == b"keep-alive"
            or value == b"close"
            or value == b"Keep-Alive"
            or value == b"Close"
        ):
            return False
        return bool(_strip_named(value))
    return bool(_strip_named(b",".join(connection)))


def _without_named(out: list[Header], connection: list[bytes]) -> list[Header]:
    named = _strip_named(b",".join(connection))
    if named:  # only when Connection names more than hop-by-hop ones
        return [(key, value) for key, value in out if key.lower() not in named]
    return out


def end_to_end(headers: Iterable[Header]) -> list[Header]:
    """``headers`` without hop-by-hop ones and without those named in Connection."""
    out: list[Header] = []
    connection: list[bytes] = []
    for key, value in headers:  # one pass (every response goes through here)
        name = key.lower()
        if name not in HOP_BY_HOP:
            out.append((key, value))
        elif name == b"connection":
            connection.append(value)
    return _without_named(out, connection) if connection else out


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
                not (_HOP_BY_HOP_LENGTHS >> len(name)) & 1
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
    if connection and _strip_named(
        connection[0] if len(connection) == 1 else b",".join(connection)
    ):
        out = _without_named(out, connection)
    return out, length, coding


# --- the raw request head ------------------------------------------------------------------

_TCHAR: Final = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
# RFC 9112 3: request-line = method SP request-target SP HTTP-version CRLF, with
# exactly one SP each (llhttp accepts several). Empty lines before it are allowed (2.2).
_REQUEST_LINE: Final = re.compile(
    rb"[\r\n]*([" + _TCHAR + rb"]+) ([^\x00-\x20\x7f]+) HTTP/(\d)\.(\d)\r\n"
)
# The same for HTTP/1.0 and 1.1 only, whose minor digit is then read by index: no
# group() call and no lookup (every request; the general one only words the refusal).
_REQUEST_LINE_1X: Final = re.compile(
    rb"[\r\n]*[" + _TCHAR + rb"]+ [^\x00-\x20\x7f]+ HTTP/1\.[01]\r\n"
)
_ONE: Final = ord("1")
# A framing header whose value holds HTAB: valid OWS, but no client sends it, and
# "Transfer-Encoding:\tchunked" is a classic TE.TE obfuscation other parsers split on.
_FRAMING_TAB: Final = re.compile(
    rb"\r\n(?:content-length|transfer-encoding):[^\r\n]*\t", re.IGNORECASE
)


def check_raw_head(data: bytes, start: int) -> int:
    """Check the request head starting at ``data[start:]``; return the offset just past it.

    What llhttp tolerates and we do not: request-line spacing, versions other
    than 1.0/1.1 (505), HTAB in Content-Length/Transfer-Encoding values. The
    caller knows the whole head is in ``data`` (the parser completed it).
    """
    return raw_head(data, start)[0]


def raw_head(data: bytes, start: int) -> tuple[int, str]:
    """``check_raw_head``, and the head's HTTP version ("1.1" or "1.0")."""
    line_1x = _REQUEST_LINE_1X.match(data, start)
    if line_1x is not None:
        line_end = line_1x.end()
        version = "1.1" if data[line_end - 3] == _ONE else "1.0"
    else:
        line = _REQUEST_LINE.match(data, start)
        if line is None:
            raise BadRequest(
                "malformed request line (RFC 9112 3: method SP target SP version CRLF)"
            )
        raise BadRequest("HTTP version not supported", 505)
    end = data.find(b"\r\n\r\n", line_end - 2)
    if end < 0:
        raise BadRequest("request head without its end")
    end += 4
    if data.find(b"\t", line_end, end) >= 0 and _FRAMING_TAB.search(data, line_end - 2, end):
        raise BadRequest("HTAB in a Content-Length or Transfer-Encoding value")
    return end, version


# --- the parsed request head --------------------------------------------------------------

# RFC 3986 3.2.2/3.2.3: host [ ":" port ]; IP-literal in brackets, else reg-name / IPv4.
_HOST: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")


@functools.lru_cache(maxsize=1024)
def valid_host(value: bytes) -> bool:
    """``value`` is a syntactically valid Host field value (RFC 9110 7.2); may be empty."""
    return _HOST.fullmatch(value) is not None


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """(origin-form target, authority or None) for ``target`` (RFC 9112 3.2)."""
    if target.startswith(b"/"):
        return target, None
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https"):
        # Absolute-form: the authority replaces Host (RFC 9112 3.2.2); forwarded as origin-form.
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        authority, path = rest[:cut], rest[cut:]
        if not authority or authority.find(b"@") >= 0 or not valid_host(authority):
            raise BadRequest("absolute-form target with an invalid authority")
        if path.startswith(b"?"):
            path = b"/" + path
        return path or b"/", authority
    raise BadRequest("request target is neither origin-form nor an http(s) absolute URI")


_FRAMING: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})
_FRAMING_LENGTHS: Final = lengths_mask(_FRAMING)


def _codings(values: list[bytes]) -> list[bytes]:
    return [token.strip().lower() for value in values for token in value.split(b",")]


def request_head(  # noqa: C901 (one pass per request; a call per branch would cost more)
    method: bytes,
    target: bytes,
    version: str,
    headers: Sequence[Header],
    keep_alive: bool,
    client_ip: str,
    *,
    client_trusted: bool = False,
    scheme: bytes = b"http",
) -> RequestHead:
    """Validate what the parser accepted and work out the request's body framing.

    Raises ``BadRequest`` (with the status to answer) for anything that must
    not reach a backend; see the module docstring for the rules.
    """
    if version != "1.1" and version != "1.0":
        raise BadRequest("HTTP version not supported", 505)
    # One pass, for every request; the lists are made only when a header needs them.
    host: bytes | None = None
    hosts = 0
    lengths: list[bytes] | None = None
    codings: list[bytes] | None = None
    for key, value in headers:
        if (_FRAMING_LENGTHS >> len(key)) & 1 and (name := key.lower()) in _FRAMING:
            if name == b"host":
                if not hosts:
                    host = value
                hosts += 1
            elif name == b"content-length":
                if lengths is None:
                    lengths = [value]
                else:
                    lengths.append(value)
            elif codings is None:
                codings = [value]
            else:
                codings.append(value)
        # find, not `in`: CPython's `bytes in bytes` first tries the operand as an int and
        # builds a TypeError it then drops (~1,700 instructions a test, measured).
        elif key.find(b"_") >= 0 and key.lower().replace(b"_", b"-") in _LOOKALIKE_TARGETS:
            raise BadRequest(f"look-alike header name {key!r}")
    if hosts > 1:
        raise BadRequest("more than one Host header")
    if host is None:
        if version == "1.1":
            raise BadRequest("HTTP/1.1 request without a Host header")
    elif not valid_host(host):
        raise BadRequest("invalid Host header")
    if target == b"*":
        if method != b"OPTIONS":
            raise BadRequest("asterisk-form target with a method other than OPTIONS")
    elif not target.startswith(b"/"):
        target, authority = origin_form(target)
        if authority is not None:
            headers = [(k, v) for k, v in headers if k.lower() != b"host"]
            headers.append((b"Host", authority))
    if codings is not None:
        if lengths is not None:
            raise BadRequest("Content-Length with Transfer-Encoding")
        if version == "1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1)")
        tokens = _codings(codings)
        if tokens != [b"chunked"]:
            if tokens[-1] == b"chunked" and all(t in _KNOWN_CODINGS for t in tokens[:-1]):
                raise BadRequest("transfer coding not implemented", 501)
            raise BadRequest("Transfer-Encoding other than a single chunked")
        body, content_length = Body.CHUNKED, 0
    elif lengths is not None:
        if len(lengths) > 1 or not lengths[0].isdigit():
            raise BadRequest("invalid Content-Length")
        body, content_length = Body.LENGTH, int(lengths[0])
    else:
        body, content_length = Body.NONE, 0
    if (
        body is not Body.NONE
        and method in _NO_BODY_METHODS
        and (body is Body.CHUNKED or content_length)
    ):
        raise BadRequest(f"{method.decode()} request with a body")
    return RequestHead(
        method,
        target,
        version,
        tuple(headers),
        keep_alive,
        body,
        content_length,
        b"chunked" if body is Body.CHUNKED else b"",
        client_ip,
        client_trusted,
        scheme,
    )


# --- what goes to the backend ---------------------------------------------------------------

_NOT_FORWARDED: Final = HOP_BY_HOP | FORWARDING | PROXY_ONLY | {b"host"}
_NOT_FORWARDED_LENGTHS: Final = lengths_mask(_NOT_FORWARDED)
_TOKEN: Final = re.compile(rb"[" + _TCHAR + rb"]+")


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
        out = _without_named(out, connection)
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


# --- responses ---------------------------------------------------------------------------


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
