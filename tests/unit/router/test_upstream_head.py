"""The backend's response head as UpstreamConnection reports it (headers.ResponseHead).

Wherever the backend's reads split the response, with a 1xx before it in the
same read or not, the same head and body must come out.
"""

from __future__ import annotations

from typing import Any

import pytest

from hakit.config import NodeConfig
from hakit.router.headers import (
    Body,
    Header,
)
from hakit.router.limits import ProxyLimits
from hakit.router.responses import (
    ResponseHead,
)
from hakit.router.upstream import UpstreamConnection

RESPONSE = (
    b"\r\nHTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
    b"HTTP/1.1 200 OK\r\n"
    b"Server: test\r\n"
    b"CONNECTION: keep-alive, X-Hop\r\n"
    b"X-Hop: secret\r\n"
    b"Content-Length:   5  \r\n"
    b"keep-alive: timeout=5\r\n"
    b"Set-Cookie: a=1\r\n"
    b"X-Spaced:\t v \r\n"
    b"\r\n"
    b"hello"
)


class Transport:
    def __init__(self) -> None:
        self.aborted = False

    def is_closing(self) -> bool:
        return self.aborted

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


class Sink:
    """Records what the connection reports (the ResponseSink an exchange implements)."""

    def __init__(self) -> None:
        self.interim: list[tuple[int, list[Header]]] = []
        self.heads: list[tuple[int, bytes, bytes | None, list[bytes] | None, list[Header]]] = []
        self.body = b""
        self.complete: bool | None = None
        self.failed: BaseException | None = None

    def response_interim(self, status: int, reason: bytes, headers: list[Header]) -> None:
        self.interim.append((status, list(headers)))

    def response_head(self, status: int, reason: bytes, head: ResponseHead, body: Body) -> None:
        block = b"".join(head.lines[1:])  # the end-to-end lines, encoded
        self.heads.append((status, block, head.length, head.connection, list(head.headers)))

    def response_body(self, data: bytes) -> None:
        self.body += data

    def response_flush(self) -> None:
        pass

    def response_complete(self, conn: Any, reusable: bool) -> None:
        self.complete = reusable

    def upstream_failed(self, conn: Any, error: BaseException | None) -> None:
        self.failed = error


def exchange(*reads: bytes) -> Sink:
    conn = UpstreamConnection(NodeConfig(name="n1", port=1), ProxyLimits())
    conn.connection_made(Transport())  # type: ignore[arg-type]
    sink = Sink()
    conn.attach(sink, b"GET")  # type: ignore[arg-type]
    for data in reads:
        conn.data_received(data)
    return sink


def test_the_head_as_reported() -> None:
    sink = exchange(RESPONSE)
    assert sink.interim == [(100, [(b"X-Interim", b"1")])]
    [(status, block, length, connection, headers)] = sink.heads
    assert status == 200 and length is not None and int(length) == 5
    assert connection == [b"keep-alive, X-Hop"]
    # Hop-by-hop lines left out whatever their case (X-Hop goes on the general path).
    assert block.startswith(b"Server: test\r\nX-Hop: secret\r\nSet-Cookie: a=1\r\nX-Spaced: v")
    assert len(headers) == 7 and headers[3][0] == b"Content-Length"
    assert (sink.body, sink.complete, sink.failed) == (b"hello", True, None)


@pytest.mark.parametrize("cut", range(1, len(RESPONSE)))
def test_every_split_of_the_reads_gives_the_same_head(cut: int) -> None:
    whole = exchange(RESPONSE)
    split = exchange(RESPONSE[:cut], RESPONSE[cut:])
    assert (split.interim, split.heads, split.body) == (whole.interim, whole.heads, whole.body)
    assert split.complete is True


def test_a_head_in_many_small_reads() -> None:
    whole = exchange(RESPONSE)
    pieces = exchange(*(RESPONSE[i : i + 3] for i in range(0, len(RESPONSE), 3)))
    assert (pieces.interim, pieces.heads, pieces.body) == (whole.interim, whole.heads, whole.body)
