"""The agent's admin API: operator commands over authenticated HTTP.

Each agent serves it on its node's ``admin_port`` (host: the node's ``host``),
so the CLI can reach the cluster from any machine that has the config and the
token. Every endpoint takes and returns JSON, one request per connection:

==========  ===============  ===========================================
method      path             body
==========  ===============  ===========================================
POST        /switchover      ``{"to": NODE, "reason": ..., "actor": ...}``
POST        /failover        ``{"to": NODE, "reason", "actor", "force"}``
POST        /pause           ``{"reason", "actor"}``
POST        /resume          ``{"reason", "actor"}``
GET         /status          -
==========  ===============  ===========================================

Every request needs ``Authorization: Bearer <[admin] token>``; the token is
compared in constant time and a missing or wrong one is answered 401 before
the body is read. Errors are ``{"error": sentence}`` with 400 (malformed), 404
(unknown path or node), 405 (wrong method), 409 (refused: the sentence says
why and what to do) or 500. What the endpoints do is ``hakit.operator.perform``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hakit.errors import HakitError
from hakit.operator import OperatorError

log = logging.getLogger("hakit.admin")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0
ROUTES = {
    "/switchover": ("POST", "switchover"),
    "/failover": ("POST", "failover"),
    "/pause": ("POST", "pause"),
    "/resume": ("POST", "resume"),
    "/status": ("GET", "status"),
}
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

Perform = Callable[[str, Mapping[str, Any]], Awaitable[dict[str, Any]]]


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        self.status = status
        self.message = message
        self.headers = headers
        super().__init__(message)


def authorized(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    if header is None:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def response(
    status: int, body: Mapping[str, Any], headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    data = json.dumps(body, sort_keys=True).encode()
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        "Connection: close",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, path, headers with lower-case names) of a request head."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise _Refused(400, "the request head is not text") from None
    line, *header_lines = text.split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(400, f"malformed request line {line[:80]!r}")
    headers: dict[str, str] = {}
    for header in header_lines:
        if not header:
            continue
        name, sep, value = header.partition(":")
        if not sep or not name or name != name.strip():
            raise _Refused(400, f"malformed header line {header[:80]!r}")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1].split("?", 1)[0], headers


class AdminApi:
    """Serves the admin API for one agent; ``perform(operation, params)`` does the work."""

    def __init__(self, token: str, perform: Perform) -> None:
        if len(token) < 16:
            raise HakitError("admin API: the token is shorter than 16 characters")
        self._token = token
        self._perform = perform
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        try:
            self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        except OSError as error:
            raise HakitError(
                f"admin API: cannot listen on {host}:{port} ({error.strerror or error}); "
                "change the node's admin_port or stop the program using that port"
            ) from error
        bound = self._server.sockets[0].getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        log.info("admin API on %s:%s", *self.address)
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    answer = await self._answer(reader)
            except _Refused as refused:
                answer = response(refused.status, {"error": refused.message}, refused.headers)
            writer.write(answer)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a broken or slow client: hang up
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        method, path, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        if not authorized(headers.get("authorization"), self._token):
            raise _Refused(
                401,
                "missing or wrong admin token; send Authorization: Bearer <[admin] token>",
                (("WWW-Authenticate", 'Bearer realm="hakit"'),),
            )
        route = ROUTES.get(path)
        if route is None:
            raise _Refused(404, f"no endpoint {path}; expected one of {', '.join(ROUTES)}")
        expected, operation = route
        if method != expected:
            raise _Refused(405, f"{path} takes {expected}, not {method}", (("Allow", expected),))
        params = await self._body(reader, headers) if method == "POST" else {}
        try:
            result = await self._perform(operation, params)
        except OperatorError as error:
            raise _Refused(error.status, str(error)) from None
        except HakitError as error:  # e.g. the coordination store is unreachable
            raise _Refused(503, str(error)) from None
        return response(200, result)

    async def _body(
        self, reader: asyncio.StreamReader, headers: Mapping[str, str]
    ) -> dict[str, Any]:
        if "transfer-encoding" in headers:
            raise _Refused(400, "send the body with Content-Length, not Transfer-Encoding")
        text = headers.get("content-length", "0")
        if not text.isdigit():
            raise _Refused(400, f"Content-Length {text!r} is not a number")
        length = int(text)
        if length > MAX_BODY:
            raise _Refused(413, f"the body is larger than {MAX_BODY} bytes")
        raw = await reader.readexactly(length) if length else b"{}"
        try:
            params = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Refused(
                400, 'the body is not JSON; expected an object such as {"to": "node2"}'
            ) from None
        if not isinstance(params, dict):
            raise _Refused(400, "the body is not a JSON object")
        return params
