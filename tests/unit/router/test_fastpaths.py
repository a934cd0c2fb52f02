"""The router's one-pass hot-path helpers agree with the general functions they shortcut."""

from __future__ import annotations

import pytest

from hakit.router.forwarding import upstream_request_head, upstream_request_headers
from hakit.router.headers import (
    Body,
    Header,
    RequestHead,
    end_to_end,
    header_value,
    request_head,
)
from hakit.router.responses import (
    ResponseHead,
    client_head,
    client_headers,
    encode_head,
    response_fields,
    upstream_body,
)


def make(
    headers: list[Header],
    *,
    method: bytes = b"GET",
    version: str = "1.1",
    trusted: bool = False,
    ip: str = "192.0.2.7",
    scheme: bytes = b"http",
) -> RequestHead:
    return request_head(
        method, b"/a?b=1", version, headers, True, ip, client_trusted=trusted, scheme=scheme
    )


REQUESTS = [
    make([(b"Host", b"example.org")]),
    make([(b"host", b"example.org:8080"), (b"Accept", b"*/*"), (b"Cookie", b"a=1")]),
    make([], version="1.0"),  # no Host: the backend's address
    make([(b"Host", b"h"), (b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=5")]),
    make([(b"Host", b"h"), (b"Connection", b"X-Secret, close"), (b"X-Secret", b"1")]),
    make([(b"Host", b"h"), (b"Connection", b"Cookie"), (b"Cookie", b"a=1")]),
    make([(b"Host", b"h"), (b"X-Forwarded-For", b"10.0.0.1"), (b"Forwarded", b"for=x")]),
    make(
        [(b"Host", b"h"), (b"X-Forwarded-For", b"10.0.0.1"), (b"X-Forwarded-Proto", b"https")],
        trusted=True,
    ),
    make([(b"Host", b"h"), (b"Content-Length", b"5")], method=b"POST"),
    make([(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")], method=b"PUT"),
    make([(b"Host", b"[::1]:80")], ip="2001:db8::1", scheme=b"https"),
    make([(b"Host", b"x%41")]),  # quoted in Forwarded
    make(
        [(b"Host", b"h"), (b"TE", b"trailers"), (b"Upgrade", b"h2c"), (b"Proxy-Connection", b"x")]
    ),
]


@pytest.mark.parametrize("request_", REQUESTS)
def test_upstream_request_head_is_the_general_head_encoded(request_: RequestHead) -> None:
    fast = upstream_request_head(request_, b"10.1.1.1:8080")
    general = encode_head(
        b"%s %s HTTP/1.1" % (request_.method, request_.target),
        upstream_request_headers(request_, b"10.1.1.1:8080"),
    )
    if fast is None:  # left to the general path: only for what the docstring names
        names = {key.lower() for key, _ in request_.headers}
        assert request_.client_trusted or b"connection" in names
    else:
        assert fast == general


def test_the_usual_request_takes_the_fast_path() -> None:
    assert upstream_request_head(REQUESTS[0], b"x:1") is not None
    assert upstream_request_head(REQUESTS[3], b"x:1") is not None  # Connection: keep-alive


RESPONSES = [
    [(b"Content-Type", b"text/plain"), (b"Content-Length", b"20"), (b"Connection", b"keep-alive")],
    [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3"), (b"ETag", b'"x"')],
    [(b"Connection", b"X-Hop, close"), (b"X-Hop", b"1"), (b"X-Kept", b"2")],
    [(b"Connection", b"Set-Cookie"), (b"Set-Cookie", b"a=1"), (b"Keep-Alive", b"5")],
    [(b"content-length", b"1"), (b"Content-Length", b"2")],
    [],
]


@pytest.mark.parametrize("headers", RESPONSES)
def test_response_fields_match_end_to_end_and_header_value(headers: list[Header]) -> None:
    out, length, coding = response_fields(headers)
    assert out == end_to_end(headers)
    assert length == header_value(headers, b"content-length")
    assert coding == header_value(headers, b"transfer-encoding")
    expected = (
        Body.CHUNKED
        if coding is not None
        else Body.LENGTH
        if length is not None
        else Body.UNTIL_CLOSE
    )
    assert upstream_body(200, b"GET", headers) is expected


def parsed(headers: list[Header]) -> ResponseHead:
    head = ResponseHead()
    for name, value in headers:
        head.add(name, value)
    head.in_head = False
    head.add(b"X-Trailer", b"dropped")
    return head


@pytest.mark.parametrize("headers", RESPONSES)
@pytest.mark.parametrize("body", list(Body))
@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_client_head_is_the_general_head_encoded(
    headers: list[Header], body: Body, keep_alive: bool, version: str
) -> None:
    request = make([(b"Host", b"h")] if version == "1.1" else [], version=version)
    head = parsed(headers)
    assert head.headers == headers
    extra = [(b"Set-Cookie", b"ROUTEID=x; Path=/")]
    general = client_headers(response_fields(headers), request, body, keep_alive) + extra
    expected = encode_head(b"HTTP/1.1 200 OK", general)
    if head.strips_more:
        assert b"x-hop" in {name.lower() for name, _ in headers}
    else:
        assert (
            client_head(head, b"HTTP/1.1 200 OK\r\n", request, body, keep_alive, extra) == expected
        )
