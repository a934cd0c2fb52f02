"""Pure HTTP/1.1 request-head decisions for the proxy (no I/O).

The connection protocols (http.py, upstream.py) parse bytes and call these
functions to decide what a request is and how its body is delimited, so the
rules can be read (and tested) in one place. What a node then receives is
forwarding.py's; what the client gets back, responses.py's.

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


HOP_BY_HOP_LENGTHS: Final = lengths_mask(HOP_BY_HOP)

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
def strip_named(connection: bytes) -> frozenset[bytes]:
    """What a Connection value (several joined with ",") makes us strip beyond hop-by-hop.

    Cached: the values repeat (``keep-alive``, ``close``), so each is parsed once.
    """
    return frozenset(_tokens(connection)) - NEVER_CONNECTION_STRIPPED - HOP_BY_HOP


def strips_beyond_hop_by_hop(connection: list[bytes]) -> bool:
    """The Connection values ``connection`` name headers beyond the hop-by-hop ones.

    The values almost every peer sends are answered by comparison: the cached
    ``strip_named`` costs a call through ``lru_cache`` (~750 instructions a response).
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
        return bool(strip_named(value))
    return bool(strip_named(b",".join(connection)))


def without_named(out: list[Header], connection: list[bytes]) -> list[Header]:
    named = strip_named(b",".join(connection))
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
    return without_named(out, connection) if connection else out


# --- the raw request head ------------------------------------------------------------------

TCHAR: Final = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
# RFC 9112 3: request-line = method SP request-target SP HTTP-version CRLF, with
# exactly one SP each (llhttp accepts several). Empty lines before it are allowed (2.2).
_REQUEST_LINE: Final = re.compile(
    rb"[\r\n]*([" + TCHAR + rb"]+) ([^\x00-\x20\x7f]+) HTTP/(\d)\.(\d)\r\n"
)
# The same for HTTP/1.0 and 1.1 only, whose minor digit is then read by index: no
# group() call and no lookup (every request; the general one only words the refusal).
_REQUEST_LINE_1X: Final = re.compile(
    rb"[\r\n]*[" + TCHAR + rb"]+ [^\x00-\x20\x7f]+ HTTP/1\.[01]\r\n"
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
