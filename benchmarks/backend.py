"""A minimal, fast HTTP/1.1 backend for the router benchmark (uvloop + httptools).

    .venv/bin/python benchmarks/backend.py [--port 0]

Prints its port once listening. Answers ``/small`` (20 bytes), ``/16k``
(16 KiB) and ``/status`` (``{"state": "RUNNING"}``, so the router's health
checks route to it); anything else gets 404. Keep-alive, pipelining-safe
(responses are written in request order from one parser callback). The
benchmark uses nginx serving static files by default (C speed); this one is
the fallback when ``--backend python`` is given. Request bodies are ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from typing import cast

import httptools
import uvloop

SMALL = b"hello from backend!\n"  # 20 bytes
LARGE = bytes(range(256)) * 64  # 16 KiB


def _response(status: bytes, body: bytes, content_type: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
    return head % (status, content_type, len(body)) + body


# Whole responses built once: the hot path only looks one up and writes it.
RESPONSES = {
    b"/small": _response(b"200 OK", SMALL, b"text/plain"),
    b"/16k": _response(b"200 OK", LARGE, b"application/octet-stream"),
    b"/status": _response(b"200 OK", b'{"state": "RUNNING"}', b"application/json"),
}
NOT_FOUND = _response(b"404 Not Found", b"not found\n", b"text/plain")


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path = self.url.split(b"?", 1)[0]
        self.url = b""
        self.transport.write(RESPONSES.get(path, NOT_FOUND))
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, host, port, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
