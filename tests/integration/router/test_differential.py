"""Differential tests: the hakit router and a real HAProxy in front of the same backend.

Each case sends the same raw request bytes to both proxies over a plain
socket and compares what comes back: status and reason, interim (1xx)
responses, end-to-end headers, the body (decoded from its framing, hashed),
and whether the client connection stays usable afterwards (a follow-up
request on it). The backend answers every request with a scripted response
and, for /echo, with what it received (method, target, headers, body hash),
so differences in what each proxy *forwards* show up in the body.

Not compared, because each proxy owns them: Date, Server, Via, Connection,
Keep-Alive, Transfer-Encoding (framing is compared through the decoded body),
the proxies' own cookies (HAProxy's SERVERID, hakit's ROUTEID), X-Forwarded-*
and Forwarded on the way in, and the bodies of the proxies' own error pages.

Where the two legitimately differ, the case lists the aspect with the reason;
the aspect is left out of the comparison and, where it matters, hakit's side
is checked against what it should do instead.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hakit.config import AppConfig, ClusterConfig, Config, Mode, NodeConfig, RouterConfig
from hakit.coord.base import Lease, NodeRecord
from hakit.coord.view import ClusterView
from tests.support.haproxy import HAProxy, HAProxyOptions, Server, start_haproxy
from tests.support.router_harness import RouterThread

pytestmark = pytest.mark.xdist_group("router-differential")  # one set of servers per worker

HOST = b"app.example"
LARGE = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB, not all the same byte
TIMEOUT = 10.0

# Request headers the proxies add or own; left out of the backend's echo.
PROXY_REQUEST_HEADERS = frozenset(
    {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "forwarded",
        "via",
        "connection",
        "keep-alive",
        "proxy-connection",
    }
)
# Response headers each proxy owns (see the module docstring).
PROXY_RESPONSE_HEADERS = frozenset(
    {"date", "server", "via", "connection", "keep-alive", "proxy-connection", "transfer-encoding"}
)
PROXY_COOKIES = ("serverid=", "routeid=")


# --- the backend: scripted raw responses --------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _fixed(status: str, body: bytes, *headers: tuple[str, str], head_only: bool = False) -> bytes:
    head = _head(status, [*headers, ("Content-Length", str(len(body)))])
    return head if head_only else head + body


def _chunked(
    status: str, pieces: list[bytes], *headers: tuple[str, str], trailer: str = ""
) -> bytes:
    out = [_head(status, [*headers, ("Transfer-Encoding", "chunked")])]
    for index, piece in enumerate(pieces):
        extension = f";piece={index}" if trailer else ""
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), extension.encode(), piece))
    out.append(b"0\r\n" + (trailer.encode() + b"\r\n" if trailer else b"") + b"\r\n")
    return b"".join(out)


def echo(request: Request) -> bytes:
    """What the backend received, minus what the proxies add; stable order within a name."""
    headers = [
        [key.lower(), value]
        for key, value in request.headers
        if key.lower() not in PROXY_REQUEST_HEADERS
    ]
    headers.sort(key=lambda pair: pair[0])  # stable: same-name headers keep their order
    seen = {
        "method": request.method,
        "target": request.target,
        "version": request.version,
        "headers": headers,
        "body_sha256": hashlib.sha256(request.body).hexdigest(),
        "body_length": len(request.body),
        "trailers": sorted([k.lower(), v] for k, v in request.trailers),
    }
    return json.dumps(seen, sort_keys=True).encode()


def respond(request: Request) -> tuple[bytes, bool]:  # noqa: C901 (a table of backend behaviours)
    """The raw response for ``request`` and whether the backend closes after it."""
    head_only = request.method == "HEAD"
    path = request.target.split("?")[0]
    name = path.rsplit("/", 1)[-1] if path.startswith("/r/") else ""
    if name == "redirect":
        return _fixed("302 Found", b"moved", ("Location", "/target?x=1")), False
    if name == "redirect-absolute":
        location = ("Location", "http://other.example/new/place")
        return _fixed("301 Moved Permanently", b"", location, head_only=head_only), False
    if name == "nocontent":
        return _head("204 No Content", [("X-Done", "yes")]), False
    if name == "etag":
        tag = '"v1-abc"'
        if request.header("if-none-match") == tag:
            return _head(
                "304 Not Modified", [("ETag", tag), ("Cache-Control", "max-age=60")]
            ), False
        return _fixed(
            "200 OK", b"fresh content", ("ETag", tag), ("Cache-Control", "max-age=60")
        ), False
    if name == "chunked":
        return _chunked(
            "200 OK", [b"alpha-", b"beta-", b"gamma"], ("Content-Type", "text/plain")
        ), False
    if name == "chunked-trailer":
        pieces = [b"with-", b"extensions"]
        return _chunked(
            "200 OK", pieces, ("Trailer", "X-Checksum"), trailer="X-Checksum: abc"
        ), False
    if name == "large":
        return _fixed("200 OK", LARGE, ("Content-Type", "application/octet-stream")), False
    if name == "large-chunked":
        pieces = [LARGE[i : i + 65536] for i in range(0, len(LARGE), 65536)]
        return _chunked("200 OK", pieces), False
    if name == "cookies":
        cookies = (
            ("Set-Cookie", "JSESSIONID=abc123.node1; Path=/; HttpOnly"),
            ("Set-Cookie", "theme=dark; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/"),
            (
                "Set-Cookie",
                "seraph.rememberme.cookie=1%3Axyz; Max-Age=1209600; Secure; SameSite=Lax",
            ),
        )
        return _fixed("200 OK", b"cookies", *cookies), False
    if name == "multi":
        headers: tuple[tuple[str, str], ...] = (
            ("Vary", "Accept-Encoding"),
            ("X-Multi", "first"),
            ("Vary", "Cookie"),
            ("X-Multi", "second, third"),
            ("Link", "</a.css>; rel=preload"),
            ("Link", "</b.js>; rel=preload"),
            ("Cache-Control", "private"),
            ("Cache-Control", "no-transform"),
        )
        return _fixed("200 OK", b"multi", *headers), False
    if name == "close-delimited":
        return _head("200 OK", [("Content-Type", "text/plain")]) + b"until the backend closes", True
    if name == "empty-header":
        return _fixed("200 OK", b"e", ("X-Empty", ""), ("X-Spaces", "a  b")), False
    if name == "obs-text":
        return _fixed("200 OK", b"o", ("X-Latin", "caf\xe9")), False
    if name == "hop":
        headers = (
            ("Connection", "X-Internal"),
            ("X-Internal", "secret"),
            ("Keep-Alive", "timeout=5"),
        )
        return _fixed("200 OK", b"hop", *headers), False
    if name == "gzip":
        body = gzip.compress(b"compressed " * 100, mtime=0)
        headers = (
            ("Content-Encoding", "gzip"),
            ("Content-Type", "text/plain"),
            ("Vary", "Accept-Encoding"),
        )
        return _fixed("200 OK", body, *headers), False
    if name == "head-length":
        return _fixed("200 OK", b"h" * 1234, head_only=head_only), False
    if name == "head-chunked":
        if head_only:
            return _head("200 OK", [("Transfer-Encoding", "chunked")]), False
        return _chunked("200 OK", [b"chunked body"]), False
    if name == "early-hints":
        hints = _head("103 Early Hints", [("Link", "</style.css>; rel=preload; as=style")])
        return hints + _fixed(
            "200 OK", b"after hints", ("Link", "</style.css>; rel=preload; as=style")
        ), False
    if name == "big-header":
        return _fixed(
            "200 OK", b"b", ("X-Big", "z" * 6000), ("Set-Cookie", "big=" + "q" * 1500)
        ), False
    if name == "empty":
        return _fixed("200 OK", b""), False
    if name.isdigit():  # /r/<status>
        status = int(name)
        extra = {
            201: [("Location", "/records/7")],
            401: [("WWW-Authenticate", 'Basic realm="app"'), ("WWW-Authenticate", "Bearer")],
            429: [("Retry-After", "3")],
            503: [("Retry-After", "30")],
        }.get(status, [])
        reasons = {
            201: "Created",
            299: "Whatever You Like",
            401: "Unauthorized",
            404: "Not Found",
            429: "Too Many Requests",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }
        body = json.dumps({"error": status}).encode()
        return _fixed(
            f"{status} {reasons.get(status, 'Status')}",
            body,
            *extra,
            ("Content-Type", "application/json"),
            head_only=head_only,
        ), False
    body = echo(request)
    return _fixed("200 OK", body, ("Content-Type", "application/json"), head_only=head_only), False


class ScriptedBackend:
    """A raw-socket HTTP/1.1 server (one thread per connection) answering via ``respond``."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(1.0)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        try:
            for _ in range(10_000):  # bounded: requests on one connection
                request = self._read_request(reader, conn)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                answer, close = respond(request)
                conn.sendall(answer)
                if close or (request.header("connection") or "").lower() == "close":
                    return
        except (OSError, ValueError):
            return
        finally:
            reader.close()
            conn.close()

    def _read_request(self, reader: Any, conn: socket.socket) -> Request | None:
        line = b""
        while not line.strip():  # idle keep-alive connections wait here
            if self._stop.is_set():
                return None
            try:
                line = reader.readline(70_000)
            except TimeoutError:
                continue
            if not line:
                return None
        method, target, version = line.decode("latin-1").split()
        headers = read_headers(reader)
        request = Request(method, target, version, headers, b"", [])
        if (request.header("expect") or "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in (request.header("transfer-encoding") or "").lower():
            request.body, request.trailers = read_chunked(reader)
        elif request.header("content-length") is not None:
            request.body = read_exactly(reader, int(request.header("content-length") or 0))
        return request

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)


# --- reading responses the way a client does -------------------------------------------------


def read_headers(reader: Any) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for _ in range(1000):  # bounded
        line = reader.readline(70_000)
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name, value.strip()))
    raise ValueError("more than 1000 header lines")


def read_exactly(reader: Any, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise ValueError(f"body cut short: {len(data)} of {size} bytes")
    return data


def read_chunked(reader: Any) -> tuple[bytes, list[tuple[str, str]]]:
    parts: list[bytes] = []
    for _ in range(1_000_000):  # bounded
        size = int(reader.readline(1000).split(b";")[0].strip(), 16)
        if size == 0:
            return b"".join(parts), read_headers(reader)
        parts.append(read_exactly(reader, size))
        if reader.readline(10) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
    raise ValueError("too many chunks")


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    interim: list[int] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


def read_response(reader: Any, method: str) -> tuple[Response, bool]:
    """One final response (after any 1xx); returns it and whether its body ended by a close."""
    interim: list[int] = []
    for _ in range(10):
        line = reader.readline(70_000)
        if not line:
            raise ConnectionError("closed before a response")
        _version, status, *reason = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        headers = read_headers(reader)
        code = int(status)
        if 100 <= code < 200:
            interim.append(code)
            continue
        response = Response(code, reason[0] if reason else "", headers, b"", interim)
        codings = ",".join(response.header("transfer-encoding")).lower()
        lengths = response.header("content-length")
        if method == "HEAD" or code in (204, 304):
            return response, False
        if "chunked" in codings:
            response.body, response.trailers = read_chunked(reader)
        elif lengths:
            response.body = read_exactly(reader, int(lengths[0]))
        else:
            response.body = reader.read()  # until the proxy closes
            return response, True
        return response, False
    raise ValueError("more than 10 interim responses")


# --- the cases -------------------------------------------------------------------------------


def req(method: str, target: str, *headers: str, body: bytes = b"", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}"]
    if version == "1.1" and not any(h.lower().startswith("host:") for h in headers):
        lines.append(f"Host: {HOST.decode()}")
    lines += headers
    if body and not any(
        h.lower().startswith(("content-length", "transfer-encoding")) for h in headers
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked_body(*pieces: bytes, trailer: bytes = b"") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return out + b"0\r\n" + (trailer + b"\r\n" if trailer else b"") + b"\r\n"


ALL_ASPECTS = frozenset(
    {"status", "reason", "interim", "headers", "body", "trailers", "keep_alive"}
)
ERROR_PAGE = "each proxy writes its own error page"


@dataclass(frozen=True)
class Case:
    name: str
    request: bytes  # sent in one write (may hold several pipelined requests)
    methods: tuple[str, ...] = ("GET",)  # one per request in ``request``, to frame responses
    differs: dict[str, str] = field(default_factory=dict)  # aspect -> why it legitimately differs
    hakit_check: Callable[[list[Response], str], None] | None = None  # hakit's side, when differs
    body_after_continue: bytes | None = None  # Expect: 100-continue: sent after the interim answer
    xfail: str | None = None  # hakit is wrong here: the bug, reported, not hidden


def _drops_named_header(responses: list[Response], _: str) -> None:
    assert responses[0].header("x-internal") == [], "hakit must drop headers named in Connection"


def _echo(responses: list[Response]) -> dict[str, Any]:
    return dict(json.loads(responses[0].body))


def _forwarded_as_http11_with_host(responses: list[Response], _: str) -> None:
    seen = _echo(responses)
    assert seen["version"] == "HTTP/1.1"
    assert [name for name, _ in seen["headers"]].count("host") == 1


def _forwarded_as_http11(responses: list[Response], _: str) -> None:
    assert _echo(responses)["version"] == "HTTP/1.1"


def _not_forwarded_named(responses: list[Response], _: str) -> None:
    names = [name for name, _ in _echo(responses)["headers"]]
    assert "x-secret-hop" not in names and "x-keep" in names


def _rechunked_and_kept(responses: list[Response], keep_alive: str) -> None:
    assert responses[0].header("transfer-encoding") == ["chunked"] and keep_alive == "reused"


def _origin_form(target: str, host: str) -> Callable[[list[Response], str], None]:
    def check(responses: list[Response], _: str) -> None:
        seen = _echo(responses)
        assert seen["target"] == target
        assert [value for name, value in seen["headers"] if name == "host"] == [host]

    return check


def _forwarded_without(header: str) -> Callable[[list[Response], str], None]:
    def check(responses: list[Response], _: str) -> None:
        assert header not in [name for name, _ in _echo(responses)["headers"]]

    return check


def _forwarded_chunked(responses: list[Response], _: str) -> None:
    headers = _echo(responses)["headers"]
    assert [value for name, value in headers if name == "transfer-encoding"] == ["chunked"]


def _rejected(responses: list[Response], keep_alive: str) -> None:
    assert responses[0].status == 400 and keep_alive == "closed"


# Aspects that differ on error answers: each proxy writes its own page.
ERROR_PAGE = "each proxy writes its own error page (HAProxy: 'Bad request', text/html)"
ERROR_ASPECTS = {"reason": ERROR_PAGE, "headers": ERROR_PAGE, "body": ERROR_PAGE}
# RFC 9110 6.2: an intermediary sends its own HTTP version in forwarded messages.
OWN_VERSION = (
    "RFC 9110 6.2: hakit forwards with its own version, HTTP/1.1; HAProxy keeps the client's "
    "HTTP/1.0 towards the backend"
)
# RFC 9112 3.2.1/3.2.2: towards an origin server a client sends origin-form, and the
# authority of an absolute-form target replaces Host.
ABSOLUTE_FORM = (
    "hakit forwards an absolute-form target as origin-form with its authority as Host "
    "(RFC 9112 3.2.1, 3.2.2); HAProxy 2.6 passes the absolute form on"
)
# RFC 9110 6.5.1 lets a recipient that removes the chunked coding discard trailers; hakit
# decodes and re-chunks bodies and drops trailers (http.py, upstream.py: "dropped for
# now"), so it also drops the Trailer header announcing them. HAProxy forwards both.
TRAILERS_DROPPED = "hakit drops trailers (allowed by RFC 9110 6.5.1); HAProxy forwards them"

MIB = b"x" * (1 << 20)
CASES = [
    Case("get-root", req("GET", "/")),
    Case("query-string", req("GET", "/echo?q=a+b&x=%20y&x=2&empty=&flag&utf=%C3%A9")),
    Case("encoded-path", req("GET", "/echo/a%2Fb/%7Euser/caf%C3%A9/%2e%2e%2F/x%00y")),
    Case("dot-segments-kept", req("GET", "/echo/./a/../b//c")),
    Case("path-parameter", req("GET", "/echo;jsessionid=abc.node1?x=1")),
    Case(
        "absolute-form-target",
        req("GET", "http://app.example/echo?x=1"),
        differs={"echo:target": ABSOLUTE_FORM},
        hakit_check=_origin_form("/echo?x=1", "app.example"),
    ),
    Case(
        "absolute-form-authority-over-host",
        req("GET", "http://other.example:8080/echo", "Host: app.example"),
        differs={
            "status": "RFC 9112 3.2.2: a proxy must replace Host with the target's authority; "
            "hakit does, HAProxy 2.6 refuses a Host that differs from it (400)",
            "keep_alive": "HAProxy closes after its 400",
            **ERROR_ASPECTS,
        },
        hakit_check=_origin_form("/echo", "other.example:8080"),
    ),
    Case("head", req("HEAD", "/echo"), ("HEAD",)),
    Case("head-with-length", req("HEAD", "/r/head-length"), ("HEAD",)),
    Case("head-with-chunked", req("HEAD", "/r/head-chunked"), ("HEAD",)),
    Case("redirect-302", req("GET", "/r/redirect")),
    Case("redirect-301-absolute", req("GET", "/r/redirect-absolute")),
    Case("no-content-204", req("GET", "/r/nocontent")),
    Case("not-modified-304", req("GET", "/r/etag", 'If-None-Match: "v1-abc"')),
    Case("etag-mismatch-200", req("GET", "/r/etag", 'If-None-Match: "old"')),
    Case("chunked-response", req("GET", "/r/chunked")),
    Case(
        "chunked-extensions-and-trailer",
        req("GET", "/r/chunked-trailer", "TE: trailers"),
        differs={"trailers": TRAILERS_DROPPED, "headers": TRAILERS_DROPPED},
    ),
    Case("large-response", req("GET", "/r/large")),
    Case("large-chunked-response", req("GET", "/r/large-chunked")),
    Case("big-response-header", req("GET", "/r/big-header")),
    Case("several-set-cookie", req("GET", "/r/cookies")),
    Case("same-name-response-headers", req("GET", "/r/multi")),
    Case(
        "close-delimited-response",
        req("GET", "/r/close-delimited"),
        differs={
            "headers": "hakit re-chunks a body the backend ends by closing (Transfer-Encoding "
            "is not compared; nor is anything else here)",
            "keep_alive": "so the client connection survives; HAProxy closes it after the body",
        },
        hakit_check=_rechunked_and_kept,
    ),
    Case("status-500", req("GET", "/r/500")),
    Case("status-404", req("GET", "/r/404")),
    Case("status-201-location", req("POST", "/r/201", body=b'{"title":"t"}'), ("POST",)),
    Case("custom-reason-299", req("GET", "/r/299")),
    Case("status-401-two-challenges", req("GET", "/r/401")),
    Case("status-429-retry-after", req("GET", "/r/429")),
    Case("status-503-from-app", req("GET", "/r/503")),
    Case("head-of-404", req("HEAD", "/r/404"), ("HEAD",)),
    Case("empty-header-value", req("GET", "/r/empty-header")),
    Case("obs-text-in-response-header", req("GET", "/r/obs-text")),
    Case("obs-text-in-request-header", req("GET", "/echo", "X-Name: Jos\xe9")),
    Case("gzip-body", req("GET", "/r/gzip", "Accept-Encoding: gzip")),
    Case("empty-body", req("GET", "/r/empty")),
    Case(
        "te-trailers-request-header",
        req("GET", "/echo", "TE: trailers"),
        differs={
            "echo:headers": "TE is hop-by-hop (RFC 9110 7.6.1, 10.1.4): hakit drops it, "
            "HAProxy 2.6 forwards it"
        },
        hakit_check=_forwarded_without("te"),
    ),
    Case("put-with-length", req("PUT", "/echo/records/1", body=b'{"title":"new"}'), ("PUT",)),
    Case("delete", req("DELETE", "/echo/records/1"), ("DELETE",)),
    Case("patch-with-length", req("PATCH", "/echo/records/1", body=b'{"x":1}'), ("PATCH",)),
    Case("options", req("OPTIONS", "/echo", "Origin: http://a.example"), ("OPTIONS",)),
    Case("options-asterisk", req("OPTIONS", "*"), ("OPTIONS",)),
    Case(
        "propfind-webdav",
        req("PROPFIND", "/echo/dav", "Depth: 1", body=b"<propfind/>"),
        ("PROPFIND",),
    ),
    Case(
        "post-chunked",
        req(
            "POST", "/echo", "Transfer-Encoding: chunked", body=chunked_body(b"a" * 99, b"b" * 5000)
        ),
        ("POST",),
    ),
    Case(
        "post-chunked-uppercase-coding",
        req("POST", "/echo", "Transfer-Encoding: CHUNKED", body=chunked_body(b"abc")),
        ("POST",),
        differs={
            "echo:headers": "coding names are case-insensitive (RFC 9112 7); hakit re-frames "
            "the body and names the coding `chunked`, HAProxy passes `CHUNKED` on"
        },
        hakit_check=_forwarded_chunked,
    ),
    Case(
        "post-chunked-with-trailer",
        req(
            "POST",
            "/echo",
            "Transfer-Encoding: chunked",
            body=chunked_body(b"first,", b"second", trailer=b"X-Sum: 42"),
        ),
        ("POST",),
        differs={"echo:trailers": TRAILERS_DROPPED},
    ),
    Case(
        "post-expect-100-continue",
        req("POST", "/echo", "Expect: 100-continue", "Content-Length: 11"),
        ("POST",),
        body_after_continue=b"hello world",
    ),
    Case("post-empty-length", req("POST", "/echo", "Content-Length: 0"), ("POST",)),
    Case("get-with-zero-length", req("GET", "/echo", "Content-Length: 0")),
    Case(
        "get-with-body",
        req("GET", "/echo", body=b"a GET body"),
        differs={
            "status": "a GET body has no defined meaning (RFC 9110 9.3.1) and is the CL.0 "
            "desync vector: hakit refuses it (headers.py), HAProxy forwards it",
            "keep_alive": "hakit closes after a 400",
            **ERROR_ASPECTS,
        },
        hakit_check=_rejected,
    ),
    Case(
        "post-one-mib",
        req("POST", "/echo", "Content-Type: application/octet-stream", body=MIB),
        ("POST",),
    ),
    Case("long-url", req("GET", "/echo?" + "q=" + "a" * 7900)),
    Case("long-header-value", req("GET", "/echo", "X-Long: " + "v" * 7900)),
    Case("ninety-headers", req("GET", "/echo", *(f"X-H{i}: value-{i}" for i in range(90)))),
    Case(
        "same-name-request-headers",
        req(
            "GET",
            "/echo",
            "Accept: text/html",
            "X-Multi: 1",
            "Accept: application/json",
            "X-Multi: 2",
        ),
    ),
    Case("mixed-case-host-with-port", req("GET", "/echo", "Host: APP.Example:8080")),
    Case("cookies-in-request", req("GET", "/echo", "Cookie: JSESSIONID=abc.node1; theme=dark")),
    Case(
        "http10-without-host",
        req("GET", "/echo", version="1.0"),
        differs={
            "echo:version": OWN_VERSION,
            "echo:headers": "an HTTP/1.1 request must carry Host (RFC 9112 3.2): hakit adds the "
            "backend's address; HAProxy's HTTP/1.0 request has none",
        },
        hakit_check=_forwarded_as_http11_with_host,
    ),
    Case(
        "http10-keep-alive",
        req("GET", "/echo", "Host: app.example", "Connection: keep-alive", version="1.0"),
        differs={"echo:version": OWN_VERSION},
        hakit_check=_forwarded_as_http11,
    ),
    Case(
        "http10-post-with-length",
        req("POST", "/echo", "Host: app.example", body=b"ten bytes!", version="1.0"),
        ("POST",),
        differs={"echo:version": OWN_VERSION},
        hakit_check=_forwarded_as_http11,
    ),
    Case(
        "http10-client-chunked-response",
        req("GET", "/r/chunked", "Host: app.example", version="1.0"),
    ),
    Case("connection-close", req("GET", "/echo", "Connection: close")),
    Case(
        "connection-names-request-header",
        req("GET", "/echo", "Connection: X-Secret-Hop", "X-Secret-Hop: 1", "X-Keep: 2"),
        differs={
            "echo:headers": "RFC 9110 7.6.1: a proxy must drop headers named in Connection; "
            "hakit does, HAProxy 2.6 forwards them"
        },
        hakit_check=_not_forwarded_named,
    ),
    Case(
        "connection-names-response-header",
        req("GET", "/r/hop"),
        differs={
            "headers": "RFC 9110 7.6.1: hakit drops X-Internal, named in the backend's "
            "Connection header; HAProxy 2.6 forwards it"
        },
        hakit_check=_drops_named_header,
    ),
    Case("early-hints-103", req("GET", "/r/early-hints")),
    Case("pipelined-two", req("GET", "/echo?first") + req("GET", "/r/chunked"), ("GET", "GET")),
    Case(
        "pipelined-post-then-get",
        req("POST", "/echo", body=b"one") + req("GET", "/echo?second"),
        ("POST", "GET"),
    ),
    Case(
        "bad-content-length",
        req("POST", "/echo", "Content-Length: abc"),
        ("POST",),
        differs=ERROR_ASPECTS,
    ),
    Case(
        "two-content-lengths",
        req("POST", "/echo", "Content-Length: 3", "Content-Length: 4", body=b"abcd"),
        ("POST",),
        differs=ERROR_ASPECTS,
    ),
    Case("space-before-colon", req("GET", "/echo", "X-Bad : 1"), differs=ERROR_ASPECTS),
    Case(
        "request-line-garbage",
        b"GET /echo HTTP/1.1 extra\r\nHost: a\r\n\r\n",
        differs=ERROR_ASPECTS,
    ),
    Case(
        "content-length-with-chunked",
        req(
            "POST",
            "/echo",
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
            body=chunked_body(b"hello"),
        ),
        ("POST",),
        differs={
            "status": "RFC 9112 6.1 lets a server reject Content-Length with Transfer-Encoding "
            "or drop the Content-Length; HAProxy forwards without it and closes afterwards, "
            "hakit rejects it (a request smuggling vector)",
            **ERROR_ASPECTS,
        },
        hakit_check=_rejected,
    ),
]


# --- servers and the exchange ----------------------------------------------------------------


def view() -> ClusterView:
    now = time.time()
    record = NodeRecord(node="node1", role="active", app_state="RUNNING", epoch=1, updated_at=now)
    return ClusterView(Lease.as_read("node1", 1, now + 600, now), {"node1": record}, now)


@dataclass
class Proxies:
    backend: ScriptedBackend
    haproxy: HAProxy
    hakit: RouterThread


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    tmp: Path = tmp_path_factory.mktemp("differential")
    backend = ScriptedBackend()
    haproxy = hakit = None
    try:
        # Sticky cookies on both (each proxy's own cookie is ignored); no `nocache`,
        # which adds Cache-Control to responses carrying HAProxy's cookie.
        options = HAProxyOptions(cookie="SERVERID insert indirect")
        haproxy = start_haproxy(tmp / "haproxy", [Server("node1", backend.port)], options)
        cfg = Config(
            cluster=ClusterConfig(mode=Mode.COLD_STANDBY, state_dir=tmp),
            app=AppConfig(start="true", home=tmp / "home", database_url="sqlite:///app.db"),
            router=RouterConfig(secret="differential-test-secret", state_poll_interval=60),
            nodes=(NodeConfig(name="node1", port=backend.port),),
        )
        hakit = RouterThread(cfg, view, timeout=TIMEOUT)  # the hakit router
        yield Proxies(backend, haproxy, hakit)
    finally:
        if hakit is not None:
            hakit.close()
        if haproxy is not None:
            haproxy.stop()
        backend.stop()


FOLLOW_UP = req("GET", "/echo?follow-up")


def exchange(port: int, case: Case) -> tuple[list[Response], str]:
    """Send the case's request; its responses and what became of the connection.

    The connection outcome is "closed" (the proxy closed it: expected after
    Connection: close or a body ended by a close), "reused" (a follow-up request
    on it was answered correctly) or "broken" (open, but the follow-up failed).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        reader = sock.makefile("rb")
        sock.sendall(case.request)
        responses = []
        closed = False
        for method in case.methods:
            response, closed = read_response(reader, method)
            responses.append(response)
            if closed:
                break
        said_close = any("close" in ",".join(r.header("connection")).lower() for r in responses)
        if closed or said_close or _asked_close(case.request):
            return responses, "closed" if _is_closed(sock) else "open after close"
        try:
            sock.sendall(FOLLOW_UP)
            follow, _ = read_response(reader, "GET")
        except (OSError, ValueError):
            return responses, "broken"
        ok = follow.status == 200 and json.loads(follow.body)["target"] == "/echo?follow-up"
        return responses, "reused" if ok else "broken"


def exchange_expect(port: int, case: Case) -> tuple[list[Response], str]:
    """Expect: 100-continue: the head first, the body only after the interim 100."""
    assert case.body_after_continue is not None
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        reader = sock.makefile("rb")
        sock.sendall(case.request)
        line = reader.readline(1000)
        read_headers(reader)
        assert line.startswith(b"HTTP/1.1 100"), f"no 100 Continue before the body: {line!r}"
        sock.sendall(case.body_after_continue)
        response, closed = read_response(reader, "POST")
        response.interim.insert(0, 100)
        return [response], "closed" if closed else "open"


def _asked_close(request: bytes) -> bool:
    head = request.split(b"\r\n\r\n", 1)[0].lower()
    return b"connection: close" in head or (b"http/1.0" in head and b"keep-alive" not in head)


def _is_closed(sock: socket.socket) -> bool:
    sock.settimeout(TIMEOUT)
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def normalize(
    responses: list[Response], keep_alive: str, differs: Collection[str]
) -> dict[str, Any]:
    """The comparable aspects of an outcome (see the module docstring), minus ``differs``.

    An aspect ``echo:<field>`` leaves that field out of the backend's echo; an
    echo's Content-Length is not compared (the echo itself is).
    """
    out: dict[str, Any] = {aspect: [] for aspect in ALL_ASPECTS - {"keep_alive"}}
    out["keep_alive"] = keep_alive
    for response in responses:
        body: Any = hashlib.sha256(response.body).hexdigest()
        is_echo = response.body.startswith(b'{"body_length"')
        if is_echo:  # readable in a failed assertion
            body = json.loads(response.body)
            for aspect in differs:
                if aspect.startswith("echo:"):
                    body.pop(aspect.removeprefix("echo:"))
        headers = []
        for key, value in response.headers:
            name = key.lower()
            if name in PROXY_RESPONSE_HEADERS or (is_echo and name == "content-length"):
                continue
            if name == "set-cookie" and value.lower().startswith(PROXY_COOKIES):
                continue
            headers.append((name, value))
        headers.sort(key=lambda pair: pair[0])  # stable: same-name headers keep their order
        out["status"].append(response.status)
        out["reason"].append(response.reason)
        out["interim"].append(response.interim)
        out["headers"].append(headers)
        out["trailers"].append(sorted((k.lower(), v) for k, v in response.trailers))
        out["body"].append(body)
    for aspect in differs:
        assert aspect in ALL_ASPECTS or aspect.startswith("echo:"), f"unknown aspect {aspect!r}"
        out.pop(aspect, None)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hakit_and_haproxy_agree(proxies: Proxies, case: Case) -> None:
    if case.xfail:
        pytest.xfail(case.xfail)
    run = exchange_expect if case.body_after_continue is not None else exchange
    theirs = normalize(*run(proxies.haproxy.port, case), case.differs)
    responses, keep_alive = run(proxies.hakit.port, case)
    ours = normalize(responses, keep_alive, case.differs)
    assert ours == theirs
    if case.hakit_check is not None:
        case.hakit_check(responses, keep_alive)


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)
