"""The pure request rules of the router: raw head checks, parsed head checks, forwarding headers."""

from __future__ import annotations

import ipaddress

import pytest

from hakit.config import RouterConfig
from hakit.router.forwarding import forwarded_node, upstream_request_head, upstream_request_headers
from hakit.router.headers import (
    BadRequest,
    Body,
    Header,
    RequestHead,
    check_raw_head,
    request_head,
    valid_host,
)
from hakit.router.http import is_trusted, parser_error_status
from hakit.router.limits import ProxyLimits
from hakit.router.tls import redirect_location

# --- the raw head ---------------------------------------------------------------------------


def test_raw_head_returns_the_offset_after_the_head() -> None:
    head = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n"
    assert check_raw_head(head + b"BODY", 0) == len(head)
    # Mid-buffer (pipelined) and after empty lines (RFC 9112 2.2).
    before = b"previous body"
    assert check_raw_head(before + b"\r\n" + head, len(before)) == len(before) + 2 + len(head)
    assert check_raw_head(b"GET / HTTP/1.0\r\n\r\n", 0) == 18  # no fields at all


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET  / HTTP/1.1", 400),
        (b"GET /  HTTP/1.1", 400),
        (b"GET / HTTP/1.1 ", 400),
        (b"GET\t/ HTTP/1.1", 400),
        (b"GET /", 400),
        (b" GET / HTTP/1.1", 400),
        (b"G(T / HTTP/1.1", 400),
        (b"GET / HTTP/1.10", 400),
        (b"GET / HTTP/2.0", 505),
        (b"GET / HTTP/0.9", 505),
        (b"PRI * HTTP/2.0", 505),
    ],
)
def test_raw_request_line_rules(line: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as refused:
        check_raw_head(line + b"\r\nHost: x\r\n\r\n", 0)
    assert refused.value.status == status


@pytest.mark.parametrize(
    ("field", "refused"),
    [
        (b"Transfer-Encoding:\tchunked", True),
        (b"transfer-encoding: chunked\t", True),
        (b"Content-Length:\t5", True),
        (b"Content-Length: 5", False),
        (b"User-Agent: a\tb", False),  # HTAB is valid in field values; only framing ones are strict
    ],
)
def test_htab_only_refused_in_framing_fields(field: bytes, refused: bool) -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\n" + field + b"\r\n\r\n"
    if refused:
        with pytest.raises(BadRequest):
            check_raw_head(head, 0)
    else:
        assert check_raw_head(head, 0) == len(head)


# --- the parsed head -----------------------------------------------------------------------


def head(
    headers: list[Header],
    method: bytes = b"POST",
    target: bytes = b"/",
    version: str = "1.1",
) -> RequestHead:
    return request_head(method, target, version, headers, True, "192.0.2.7")


H = (b"Host", b"app.example")


@pytest.mark.parametrize(
    ("headers", "body", "length"),
    [
        ([H], Body.NONE, 0),
        ([H, (b"Content-Length", b"12")], Body.LENGTH, 12),
        ([H, (b"Content-Length", b"007")], Body.LENGTH, 7),
        ([H, (b"Transfer-Encoding", b"chunked")], Body.CHUNKED, 0),
        ([H, (b"Transfer-Encoding", b"CHUNKED")], Body.CHUNKED, 0),
        ([H, (b"Transfer-Encoding", b" chunked ")], Body.CHUNKED, 0),
    ],
)
def test_body_framing(headers: list[Header], body: Body, length: int) -> None:
    request = head(headers)
    assert (request.body, request.content_length) == (body, length)


@pytest.mark.parametrize(
    ("headers", "method", "version", "status"),
    [
        ([], b"GET", "1.1", 400),  # no Host
        ([H, H], b"GET", "1.1", 400),
        ([(b"Host", b"a b")], b"GET", "1.1", 400),
        ([(b"Host", b"a/b")], b"GET", "1.1", 400),
        ([H, (b"Content-Length", b"1"), (b"Transfer-Encoding", b"chunked")], b"POST", "1.1", 400),
        ([H, (b"Content-Length", b"1"), (b"Content-Length", b"1")], b"POST", "1.1", 400),
        ([H, (b"Content-Length", b"+1")], b"POST", "1.1", 400),
        ([H, (b"Transfer-Encoding", b"chunked, chunked")], b"POST", "1.1", 400),
        (
            [H, (b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
            b"POST",
            "1.1",
            400,
        ),
        ([H, (b"Transfer-Encoding", b"identity")], b"POST", "1.1", 400),
        ([H, (b"Transfer-Encoding", b"chunked, gzip")], b"POST", "1.1", 400),
        ([H, (b"Transfer-Encoding", b"gzip, chunked")], b"POST", "1.1", 501),
        ([H, (b"Transfer-Encoding", b"chunked")], b"POST", "1.0", 400),
        ([H, (b"Content-Length", b"3")], b"GET", "1.1", 400),
        ([H, (b"Transfer-Encoding", b"chunked")], b"HEAD", "1.1", 400),
        ([H, (b"Content_Length", b"3")], b"POST", "1.1", 400),
        ([H, (b"X_Forwarded_For", b"10.0.0.1")], b"GET", "1.1", 400),
        ([H, (b"X_Real_IP", b"10.0.0.1")], b"GET", "1.1", 400),
        ([H, (b"x_original_url", b"/admin")], b"GET", "1.1", 400),
        ([H], b"GET", "2.0", 505),
        ([H], b"GET", "0.9", 505),
    ],
)
def test_refused_heads(headers: list[Header], method: bytes, version: str, status: int) -> None:
    with pytest.raises(BadRequest) as refused:
        head(headers, method=method, version=version)
    assert refused.value.status == status


def test_accepted_edge_cases() -> None:
    assert head([], method=b"GET", version="1.0").body is Body.NONE  # 1.0 needs no Host
    assert head([H, (b"Content-Length", b"0")], method=b"GET").body is Body.LENGTH
    assert head([(b"Host", b"")], method=b"GET").host == b""  # RFC 9112 3.2: empty is valid
    assert head([H, (b"X_Custom", b"1")], method=b"GET").headers[-1] == (b"X_Custom", b"1")


def test_absolute_form_becomes_origin_form_with_its_host() -> None:
    request = head([(b"Host", b"ignored.example")], b"GET", b"http://App.example:8080/p?q=1")
    assert request.target == b"/p?q=1"
    assert [value for key, value in request.headers if key.lower() == b"host"] == [
        b"App.example:8080"
    ]
    assert head([H], b"GET", b"https://app.example").target == b"/"
    assert head([H], b"GET", b"http://app.example?x").target == b"/?x"
    for bad in (b"ftp://app.example/", b"http://u@app.example/", b"http:///x", b"foo"):
        with pytest.raises(BadRequest):
            head([H], b"GET", bad)


def test_asterisk_form_only_with_options() -> None:
    assert head([H], b"OPTIONS", b"*").target == b"*"
    with pytest.raises(BadRequest):
        head([H], b"GET", b"*")


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (b"app.example", True),
        (b"app.example:8443", True),
        (b"192.0.2.1:80", True),
        (b"[2001:db8::1]:443", True),
        (b"[2001:db8::1]", True),
        (b"", True),
        (b"a b", False),
        (b"a/b", False),
        (b"user@a", False),
        (b"a:b:c", False),
        (b'a"b', False),
        (b"[zz::1]", False),
    ],
)
def test_valid_host(value: bytes, valid: bool) -> None:
    assert valid_host(value) is valid


# --- what goes to the backend --------------------------------------------------------------


def forwarded(
    headers: list[Header], trusted: bool, client: str = "192.0.2.7", scheme: bytes = b"http"
) -> dict[bytes, list[bytes]]:
    request = head(headers, b"GET")
    request.client_trusted, request.client_ip, request.scheme = trusted, client, scheme
    out: dict[bytes, list[bytes]] = {}
    for key, value in upstream_request_headers(request, b"127.0.0.1:8101"):
        out.setdefault(key.lower(), []).append(value)
    return out


CLAIMS = [
    (b"Host", b"app.example"),
    (b"X-Forwarded-For", b"10.0.0.1, 10.0.0.2"),
    (b"X-Forwarded-Proto", b"https"),
    (b"X-Forwarded-Host", b"public.example"),
    (b"Forwarded", b"for=10.0.0.1;proto=https"),
]


def test_untrusted_forwarding_headers_are_replaced() -> None:
    out = forwarded(CLAIMS, trusted=False)
    assert out[b"x-forwarded-for"] == [b"192.0.2.7"]
    assert out[b"x-forwarded-proto"] == [b"http"]
    assert out[b"x-forwarded-host"] == [b"app.example"]
    assert out[b"forwarded"] == [b"for=192.0.2.7;proto=http;host=app.example"]
    assert out[b"host"] == [b"app.example"]


def test_trusted_forwarding_headers_are_extended() -> None:
    out = forwarded(CLAIMS, trusted=True)
    assert out[b"x-forwarded-for"] == [b"10.0.0.1, 10.0.0.2, 192.0.2.7"]
    assert out[b"x-forwarded-proto"] == [b"https"]  # the outer proxy saw the real scheme
    assert out[b"x-forwarded-host"] == [b"public.example"]
    assert out[b"forwarded"] == [
        b"for=10.0.0.1;proto=https, for=192.0.2.7;proto=http;host=app.example"
    ]
    # Several header lines from a trusted proxy are one list (RFC 9110 5.3).
    lines = [H, (b"X-Forwarded-For", b"10.0.0.1"), (b"X-Forwarded-For", b"10.0.0.2")]
    assert forwarded(lines, trusted=True)[b"x-forwarded-for"] == [b"10.0.0.1, 10.0.0.2, 192.0.2.7"]


def test_forwarded_quotes_ipv6_and_hosts_with_ports() -> None:
    out = forwarded([(b"Host", b"app.example:8443")], False, client="2001:db8::7", scheme=b"https")
    assert out[b"forwarded"] == [b'for="[2001:db8::7]";proto=https;host="app.example:8443"']
    assert out[b"x-forwarded-for"] == [b"2001:db8::7"]
    assert out[b"x-forwarded-proto"] == [b"https"]
    assert forwarded_node("192.0.2.1") == b"192.0.2.1"


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    headers = [
        H,
        (b"Connection", b"keep-alive, X-Drop, X-Forwarded-For, Cookie"),
        (b"X-Drop", b"1"),
        (b"Cookie", b"a=b"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"X-Kept", b"2"),
    ]
    out = forwarded(headers, trusted=False)
    assert b"x-drop" not in out and b"keep-alive" not in out and b"te" not in out
    assert b"connection" not in out
    assert out[b"cookie"] == [b"a=b"] and out[b"x-kept"] == [b"2"]
    assert out[b"x-forwarded-for"] == [b"192.0.2.7"]  # naming it cannot remove ours


# What other proxies, CDNs and frameworks read as the client's address, port, scheme or URL.
PROXY_CLAIMS = [
    (b"X-Real-IP", b"10.9.9.9"),
    (b"True-Client-IP", b"10.9.9.9"),
    (b"X-Client-IP", b"10.9.9.9"),
    (b"X-Cluster-Client-IP", b"10.9.9.9"),
    (b"CF-Connecting-IP", b"10.9.9.9"),
    (b"Fastly-Client-IP", b"10.9.9.9"),
    (b"X-Forwarded-Port", b"443"),
    (b"X-Forwarded-Server", b"intranet.example"),
    (b"X-Forwarded-Scheme", b"https"),
    (b"X-Forwarded-Ssl", b"on"),
    (b"X-Forwarded-Prefix", b"/internal"),
    (b"X-Original-URL", b"/admin/delete-all"),
    (b"x-rewrite-url", b"/admin/delete-all"),  # any case
]


def encoded(headers: list[Header], trusted: bool, connection: bytes = b"") -> bytes:
    """The head the backend receives, by the path the router takes for it."""
    extra = [(b"Connection", connection), (b"X-Named", b"1")] if connection else []
    request = head([*headers, *extra], b"GET")
    request.client_trusted = trusted
    fast = upstream_request_head(request, b"127.0.0.1:8101")
    if fast is not None:
        assert not connection  # the usual request: one pass
        return fast
    assert connection or trusted
    general = upstream_request_headers(request, b"127.0.0.1:8101")
    return b"".join(key + b": " + value + b"\r\n" for key, value in general)


@pytest.mark.parametrize("connection", [b"", b"X-Named"], ids=["one-pass", "general"])
def test_proxy_only_headers_of_an_untrusted_client_are_dropped(connection: bytes) -> None:
    sent = encoded([H, *PROXY_CLAIMS, (b"X-Kept", b"2")], trusted=False, connection=connection)
    for name, _ in PROXY_CLAIMS:
        assert name.lower() + b":" not in sent.lower(), name
    assert b"10.9.9.9" not in sent and b"/admin" not in sent
    assert b"X-Kept: 2\r\n" in sent and b"X-Forwarded-For: 192.0.2.7\r\n" in sent
    out = forwarded([H, *PROXY_CLAIMS], trusted=False)
    assert not {name.lower() for name, _ in PROXY_CLAIMS} & out.keys()


@pytest.mark.parametrize("connection", [b"", b"X-Named"], ids=["one-pass", "general"])
def test_proxy_only_headers_of_a_trusted_proxy_are_forwarded_as_sent(connection: bytes) -> None:
    sent = encoded([H, *PROXY_CLAIMS], trusted=True, connection=connection)
    for name, value in PROXY_CLAIMS:
        assert name + b": " + value + b"\r\n" in sent
    out = forwarded([H, *PROXY_CLAIMS, (b"X-Real-IP", b"10.8.8.8")], trusted=True)
    assert out[b"x-real-ip"] == [b"10.9.9.9", b"10.8.8.8"]  # every line, in order


def test_missing_host_gets_the_backend_and_framing_is_rebuilt() -> None:
    request = request_head(b"POST", b"/", "1.0", [(b"Content-Length", b"05")], False, "192.0.2.7")
    out = upstream_request_headers(request, b"127.0.0.1:8101")
    assert (b"Host", b"127.0.0.1:8101") in out and (b"Content-Length", b"5") in out
    assert not any(key == b"X-Forwarded-Host" for key, _ in out)
    chunked = head([H, (b"Transfer-Encoding", b" Chunked")])
    out = upstream_request_headers(chunked, b"127.0.0.1:8101")
    assert (b"Transfer-Encoding", b"chunked") in out


# --- connection-level pure helpers ------------------------------------------------------------


def test_parser_errors_map_to_statuses() -> None:
    assert parser_error_status(ValueError("Invalid HTTP version")) == 505
    assert parser_error_status(ValueError("Pause on PRI/Upgrade")) == 505
    assert parser_error_status(ValueError("Invalid header value char")) == 400


def test_trusted_peers() -> None:
    networks = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    assert is_trusted("10.1.2.3", networks)
    assert is_trusted("::ffff:10.1.2.3", networks)  # IPv4 on a dual-stack socket
    assert is_trusted("2001:db8::5", networks)
    assert not is_trusted("192.0.2.1", networks)
    assert not is_trusted("unknown", networks)


def test_limits_from_config() -> None:
    router = RouterConfig(
        max_header_fields=50,
        max_header_bytes=40_000,
        header_timeout=2,
        body_idle_timeout=3,
        client_idle_timeout=4,
        connect_timeout=1,
        response_timeout=9,
        trusted_proxies=("10.0.0.0/8",),
    )
    limits = ProxyLimits.from_config(router)
    assert (limits.max_header_fields, limits.max_header_bytes) == (50, 40_000)
    assert limits.max_head_bytes == 80_000  # room for the field limit
    assert (limits.header_timeout, limits.body_idle_timeout, limits.client_idle_timeout) == (
        2,
        3,
        4,
    )
    assert (limits.connect_timeout, limits.response_timeout) == (1, 9)
    assert limits.trusted_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert limits.sweep_interval == 0.5
    assert ProxyLimits.from_config(RouterConfig()).max_head_bytes == 64 * 1024
    assert ProxyLimits(header_timeout=0.01).sweep_interval == 0.05  # floor


# --- the HTTPS redirect --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "target", "port", "location"),
    [
        (b"app.example", b"/a?b=1", 443, b"https://app.example/a?b=1"),
        (b"app.example:80", b"/", 443, b"https://app.example/"),
        (b"app.example:8080", b"/x", 8443, b"https://app.example:8443/x"),
        (b"[2001:db8::1]:80", b"/", 443, b"https://[2001:db8::1]/"),
        (b"[2001:db8::1]", b"/", 8443, b"https://[2001:db8::1]:8443/"),
        (b"ignored", b"http://other.example/p", 443, b"https://other.example/p"),
    ],
)
def test_redirect_location(host: bytes, target: bytes, port: int, location: bytes) -> None:
    assert redirect_location(host, target, port) == location


@pytest.mark.parametrize(
    ("host", "target"),
    [(None, b"/"), (b"", b"/"), (b"a b", b"/"), (b":80", b"/"), (b"app", b"*"), (b"a", b"x")],
)
def test_redirect_needs_a_valid_host_and_target(host: bytes | None, target: bytes) -> None:
    with pytest.raises(BadRequest):
        redirect_location(host, target, 443)
