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
POST        /failsafe        ``{"node": ACTIVE, "epoch": E}`` (failsafe mode, agent to agent)
GET         /snapshot/...    replicated storage: this node's snapshot repository, read-only
                             (hakit.snapshot.peerstore: the paths, the key rule)
==========  ===============  ===========================================

Every request needs ``Authorization: Bearer <[admin] token>``; the token is
compared in constant time and a missing or wrong one is answered 401 before
the body is read, and logged with the client's address (never the token). After
``FAILURE_LIMIT`` failures within ``FAILURE_WINDOW`` an address gets 429 with
``Retry-After`` until the oldest of them ages out (``FailedLogins``). Errors are
``{"error": sentence}`` with 400 (malformed), 404 (unknown path or node), 405
(wrong method), 409 (refused: the sentence says why and what to do), 429 or 500.
What the endpoints do is ``hakit.operator.commands.perform``; ``load_token`` reads
the token for the agent that serves the API and for the CLI that calls it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.config import MIN_TOKEN_LENGTH, Config
from hakit.errors import HakitError
from hakit.operator.commands import OperatorError

log = logging.getLogger("hakit.admin")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0
# A streamed snapshot object: each piece read from disk, then written within this.
STREAM_PIECE = 1024 * 1024
WRITE_TIMEOUT = 30.0
ROUTES = {
    "/switchover": ("POST", "switchover"),
    "/failover": ("POST", "failover"),
    "/pause": ("POST", "pause"),
    "/resume": ("POST", "resume"),
    "/status": ("GET", "status"),
    # Failsafe mode: an active asks this node to confirm it is not promoting (hakit.agent.failsafe).
    "/failsafe": ("POST", "failsafe"),
}
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

Perform = Callable[[str, Mapping[str, Any]], Awaitable[dict[str, Any]]]

# Failed authentications per client: after FAILURE_LIMIT within FAILURE_WINDOW seconds,
# every request from that client is answered 429 (even with the right token) until
# the oldest of them ages out. A lockout rather than a growing delay: a delay holds
# one connection per attempt and a guesser simply opens many, while a count checked
# before the token is compared, with no await in between, caps guesses at
# FAILURE_LIMIT per window whatever the concurrency. The token is long and random
# (MIN_TOKEN_LENGTH), so guessing was hopeless anyway; the cap keeps a scanner or a
# client with a stale token from flooding the log. 5 in a minute leaves room for an
# operator's typos; a success clears the count.
FAILURE_LIMIT = 5
FAILURE_WINDOW = 60.0
MAX_CLIENTS = 4096  # clients with recent failures remembered; the oldest go first


def client_of(address: str) -> str:
    """Whose failures count together: an IPv4 address, or an IPv6 /64 (one host's
    share: its owner can use any address in it)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address  # not IP (a Unix socket): as is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailedLogins:
    """Recent failed authentications per client, and whether a client must wait."""

    def __init__(
        self,
        limit: int = FAILURE_LIMIT,
        window: float = FAILURE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}  # oldest-failing client first

    def wait(self, client: str) -> float:
        """Seconds ``client`` must wait before it may try again (0: it may now)."""
        times = self._recent(client)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(times[0] + self.window - self._clock(), 0.0)

    def failed(self, client: str) -> int:
        """Count a failure of ``client``; return its failures within the window."""
        times = self._recent(client) or deque(maxlen=self.limit)
        times.append(self._clock())
        self._failures.pop(client, None)
        self._failures[client] = times  # now the most recent
        while len(self._failures) > self._max_clients:
            del self._failures[next(iter(self._failures))]
        return len(times)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _recent(self, client: str) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        horizon = self._clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times


@dataclass(frozen=True, slots=True)
class _Streamed:
    """An answer whose body is an open file, sent piece by piece after ``head``."""

    head: bytes
    fd: int
    size: int


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        self.status = status
        self.message = message
        self.headers = headers
        super().__init__(message)


def authorized(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    return refusal(header, token) is None


def refusal(header: str | None, token: str) -> str | None:
    """Why ``Authorization: header`` does not carry ``token`` (None: it does), for the
    log: it names what was wrong, never what was sent."""
    if header is None:
        return "no Authorization header"
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return "not a Bearer token"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "wrong token"
    return None


def response(
    status: int,
    body: Mapping[str, Any],
    headers: tuple[tuple[str, str], ...] = (),
    *,
    raw: tuple[str, int] | None = None,  # (content type, length) of a body sent apart
) -> bytes:
    data = json.dumps(body, sort_keys=True).encode() if raw is None else b""
    kind, length = raw or ("application/json", len(data))
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        f"Content-Type: {kind}",
        f"Content-Length: {length}",
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

    def __init__(
        self,
        token: str,
        perform: Perform,
        failures: FailedLogins | None = None,
        *,
        repository: Path | None = None,  # replicated storage: served read-only at /snapshot/
    ) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise HakitError(f"admin API: the token is shorter than {MIN_TOKEN_LENGTH} characters")
        self._token = token
        self._perform = perform
        self._repository = repository
        self.failures = failures or FailedLogins()
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
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "unknown")
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    answer = await self._answer(reader, address)
            except _Refused as refused:
                answer = response(refused.status, {"error": refused.message}, refused.headers)
            if isinstance(answer, _Streamed):
                await self._stream(answer, writer)
            else:
                writer.write(answer)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a broken or slow client: hang up
        finally:
            writer.close()

    @staticmethod
    async def _stream(answer: _Streamed, writer: asyncio.StreamWriter) -> None:
        """The head, then the file piece by piece: memory stays at one piece per client."""
        try:
            writer.write(answer.head)
            left = answer.size
            while left > 0:
                piece = await asyncio.to_thread(os.read, answer.fd, min(STREAM_PIECE, left))
                if not piece:
                    break  # shorter than its stat said (objects never shrink): hang up
                left -= len(piece)
                writer.write(piece)
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await writer.drain()
        finally:
            os.close(answer.fd)

    async def _answer(self, reader: asyncio.StreamReader, address: str) -> bytes | _Streamed:
        method, path, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        self._authenticate(address, method, path, headers.get("authorization"))
        if path.startswith("/snapshot/"):
            return await self._snapshot(method, path)
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

    async def _snapshot(self, method: str, path: str) -> bytes | _Streamed:
        """This node's repository, read-only (hakit.snapshot.peerstore)."""
        from hakit.snapshot.peerstore import (
            MANIFESTS_PATH,
            OBJECTS_PATH,
            check_key,
            open_served_object,
        )
        from hakit.snapshot.store import LocalStore

        if self._repository is None:
            raise _Refused(
                404, "this node serves no snapshot repository (storage is not replicated)"
            )
        if path == MANIFESTS_PATH:
            if method != "GET":
                raise _Refused(405, f"{path} takes GET, not {method}", (("Allow", "GET"),))
            generations = await asyncio.to_thread(LocalStore(self._repository).list_manifests)
            return response(200, {"generations": generations})
        if not path.startswith(OBJECTS_PATH):
            raise _Refused(
                404, f"no endpoint {path[:80]}; expected {MANIFESTS_PATH} or {OBJECTS_PATH}<key>"
            )
        if method not in ("GET", "HEAD"):
            raise _Refused(
                405,
                f"{OBJECTS_PATH}<key> takes GET or HEAD, not {method}",
                (("Allow", "GET, HEAD"),),
            )
        key = path.removeprefix(OBJECTS_PATH)
        try:
            check_key(key)  # before any path is built from it
        except HakitError as error:
            raise _Refused(400, str(error)) from None
        try:
            opened = await asyncio.to_thread(open_served_object, self._repository, key)
        except HakitError as error:
            raise _Refused(500, str(error)) from None
        if opened is None:
            raise _Refused(404, f"no object {key} here")
        head = response(200, {}, raw=("application/octet-stream", opened.size))
        if method == "HEAD":
            os.close(opened.fd)
            return head
        return _Streamed(head, opened.fd, opened.size)

    def _authenticate(self, address: str, method: str, path: str, header: str | None) -> None:
        """Raise 429 for a client with too many recent failures, 401 for a wrong token.

        No await here: the count is read and updated in one step of the event loop."""
        client = client_of(address)
        wait = self.failures.wait(client)
        if wait > 0:
            seconds = max(math.ceil(wait), 1)
            raise _Refused(
                429,
                f"too many failed authentications from {address}; "
                f"try again in {seconds}s with the right token",
                (("Retry-After", str(seconds)),),
            )
        why = refusal(header, self._token)
        if why is None:
            self.failures.succeeded(client)
            return
        count = self.failures.failed(client)
        log.warning(
            "admin API: failed authentication from %s (%s %s: %s); %d of %d allowed in %gs",
            address,
            method[:16],
            path[:80],
            why,
            count,
            self.failures.limit,
            self.failures.window,
        )
        if count >= self.failures.limit:
            log.warning(
                "admin API: %s is refused (429) for up to %gs after %d failed authentications",
                client,
                self.failures.window,
                count,
            )
        raise _Refused(
            401,
            "missing or wrong admin token; send Authorization: Bearer <[admin] token>",
            (("WWW-Authenticate", 'Bearer realm="hakit"'),),
        )

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


def load_token(cfg: Config) -> str | None:
    """The admin API's bearer token: ``[admin] token`` or the first line of token_file."""
    admin = cfg.admin
    if admin.token is not None:
        return admin.token
    if admin.token_file is None:
        return None
    try:
        lines = admin.token_file.read_text().splitlines()
    except OSError as error:
        raise HakitError(
            f"admin.token_file {admin.token_file}: cannot read it ({error.strerror}); "
            "expected a readable file whose first line is the admin API's token"
        ) from None
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_LENGTH:
        raise HakitError(
            f"admin.token_file {admin.token_file}: the token is shorter than "
            f"{MIN_TOKEN_LENGTH} characters; "
            "expected a long random secret on the first line"
        )
    return token
