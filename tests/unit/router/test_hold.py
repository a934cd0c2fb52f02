"""How requests wait for a node, or are repeated elsewhere (hold.py), and the
Upgrade header decisions (tunnel.py): pure tables."""

from __future__ import annotations

import pytest

from hakit.router.headers import Body, RequestHead
from hakit.router.hold import (
    GIVE_UP,
    HOLD,
    HOLD_BUFFERED,
    MAX_ATTEMPTS,
    RETRY_FRESH,
    RETRY_NEXT,
    TOO_LARGE,
    after_failure,
    drainable,
    hold_plan,
    hold_remaining,
    may_retry_unanswered,
)
from hakit.router.tunnel import requested_upgrade, switching_response_headers


def request(
    method: bytes,
    body: Body = Body.NONE,
    length: int = 0,
    expect: bytes | None = None,
) -> RequestHead:
    headers: list[tuple[bytes, bytes]] = [(b"Host", b"app")]
    if expect is not None:
        headers.append((b"Expect", expect))
    return RequestHead(
        method=method,
        target=b"/",
        version="1.1",
        headers=tuple(headers),
        keep_alive=True,
        body=body,
        content_length=length,
        transfer_encoding=b"chunked" if body is Body.CHUNKED else b"",
        client_ip="127.0.0.1",
    )


LIMIT = 1000  # hold_body_limit in these cases

PLAN_CASES = [
    # (request, body bytes received so far, plan)
    (request(b"GET"), 0, HOLD),
    (request(b"HEAD"), 0, HOLD),
    (request(b"OPTIONS"), 0, HOLD),
    (request(b"DELETE"), 0, HOLD),
    (request(b"POST"), 0, HOLD),  # no body at all
    (request(b"POST", Body.LENGTH, 0), 0, HOLD),  # Content-Length: 0
    # Any method with a body that fits: read into memory while it waits.
    (request(b"POST", Body.LENGTH, 5), 0, HOLD_BUFFERED),
    (request(b"POST", Body.LENGTH, 5), 5, HOLD_BUFFERED),
    (request(b"PUT", Body.LENGTH, LIMIT), LIMIT, HOLD_BUFFERED),  # exactly the limit
    (request(b"GET", Body.LENGTH, 10), 10, HOLD_BUFFERED),
    (request(b"POST", Body.CHUNKED), 0, HOLD_BUFFERED),
    (request(b"POST", Body.CHUNKED), LIMIT, HOLD_BUFFERED),
    # Larger: answered at once, by its Content-Length before a byte of it arrived,
    # or as a chunked body grows past the limit.
    (request(b"POST", Body.LENGTH, LIMIT + 1), 0, TOO_LARGE),
    (request(b"GET", Body.LENGTH, LIMIT + 1), 0, TOO_LARGE),
    (request(b"POST", Body.CHUNKED), LIMIT + 1, TOO_LARGE),
    # The client waits for 100 Continue: nothing to buffer, whatever the size; if it
    # sends its body anyway, reading pauses (flow control) instead of a 503.
    (request(b"POST", Body.LENGTH, 5, b"100-continue"), 0, HOLD),
    (request(b"POST", Body.LENGTH, 5, b"100-Continue "), 0, HOLD),
    (request(b"POST", Body.LENGTH, LIMIT * 10, b"100-continue"), 0, HOLD),
    (request(b"POST", Body.LENGTH, LIMIT * 10, b"100-continue"), LIMIT * 2, HOLD),
    (request(b"POST", Body.CHUNKED, 0, b"100-continue"), 0, HOLD),
    (request(b"POST", Body.LENGTH, 5, b"something-else"), 0, HOLD_BUFFERED),
]


@pytest.mark.parametrize(("req", "received", "expected"), PLAN_CASES)
def test_hold_plan(req: RequestHead, received: int, expected: int) -> None:
    assert hold_plan(req, received, LIMIT) == expected


@pytest.mark.parametrize(
    ("started", "now", "timeout", "expected"),
    [
        (None, 100.0, 0.0, 0.0),  # holding off
        (None, 100.0, 5.0, 5.0),  # first wait: the whole hold
        (100.0, 103.0, 5.0, 2.0),  # what is left of it
        (100.0, 106.0, 5.0, 0.0),  # used up
        (100.0, 103.0, -1.0, 0.0),
    ],
)
def test_hold_remaining(started: float | None, now: float, timeout: float, expected: float) -> None:
    assert hold_remaining(started, now, timeout) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("req", "sent", "expected"),
    [
        (request(b"GET"), 0, True),
        (request(b"HEAD"), 0, True),
        (request(b"GET", Body.LENGTH, 4), 4, False),  # a body we no longer have
        (request(b"POST"), 0, False),  # the node may have acted on it
        (request(b"POST", Body.LENGTH, 4), 4, False),  # even one the router had buffered
        (request(b"PUT"), 0, False),
        (request(b"DELETE"), 0, False),
    ],
)
def test_may_retry_unanswered(req: RequestHead, sent: int, expected: bool) -> None:
    assert may_retry_unanswered(req, sent) is expected


@pytest.mark.parametrize(
    ("req", "sent", "attempts", "pooled", "answered", "expected"),
    [
        # A pooled connection the backend had closed: the same node, a new connection.
        (request(b"GET"), 0, 1, True, False, RETRY_FRESH),
        (request(b"PUT"), 0, 1, True, False, RETRY_FRESH),  # idempotent, bodiless
        # A fresh connection dropped unanswered: a safe request goes to the next node.
        (request(b"GET"), 0, 1, False, False, RETRY_NEXT),
        (request(b"PUT"), 0, 1, False, False, GIVE_UP),  # the node may have acted on it
        (request(b"POST"), 0, 1, True, False, GIVE_UP),  # not idempotent
        (request(b"GET", Body.LENGTH, 4), 4, 1, True, False, GIVE_UP),  # had a body
        (request(b"GET"), 0, 1, True, True, GIVE_UP),  # the backend began to answer
        (request(b"GET"), 0, MAX_ATTEMPTS, True, False, GIVE_UP),  # tries used up
        (request(b"GET"), 0, MAX_ATTEMPTS, False, False, GIVE_UP),
    ],
)
def test_after_failure(
    req: RequestHead, sent: int, attempts: int, pooled: bool, answered: bool, expected: int
) -> None:
    assert after_failure(req, sent, attempts, pooled=pooled, answered=answered) == expected


@pytest.mark.parametrize(
    ("req", "received", "expected"),
    [
        (request(b"GET"), 0, True),
        (request(b"POST", Body.LENGTH, 100), 0, True),  # the rest fits the drain limit
        (request(b"POST", Body.LENGTH, 100 + LIMIT), 99, False),
        (request(b"POST", Body.LENGTH, 100 + LIMIT), 100, True),
        (request(b"POST", Body.CHUNKED), 0, False),  # no telling how much is left
        # Waiting for a 100 Continue that will not come: it may or may not send now.
        (request(b"POST", Body.LENGTH, 5, b"100-continue"), 0, False),
        (request(b"POST", Body.LENGTH, 0, b"100-continue"), 0, True),
    ],
)
def test_drainable(req: RequestHead, received: int, expected: bool) -> None:
    assert drainable(req, received, LIMIT) is expected


def test_requested_upgrade() -> None:
    headers = [(b"Host", b"app"), (b"Upgrade", b" websocket ")]
    assert requested_upgrade("1.1", headers) == b"websocket"
    assert requested_upgrade("1.0", headers) is None  # no Upgrade in HTTP/1.0
    assert requested_upgrade("1.1", [(b"Host", b"app")]) is None
    assert requested_upgrade("1.1", [(b"Upgrade", b"  ")]) is None


def test_switching_response_headers_keep_only_the_upgrade_hop_headers() -> None:
    headers = [
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade, X-Private"),
        (b"X-Private", b"dropped"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Sec-WebSocket-Accept", b"abc"),
    ]
    assert switching_response_headers(headers) == [
        (b"Sec-WebSocket-Accept", b"abc"),
        (b"Connection", b"upgrade"),
        (b"Upgrade", b"websocket"),
    ]
    assert switching_response_headers([(b"Connection", b"upgrade")]) is None
