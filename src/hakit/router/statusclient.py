"""The router's checks of each node over plain HTTP, without httpx.

``hakit.health.probe.StatusProber`` speaks HTTP through httpx: about 8 MiB of
imports in every process that loads it, and a heavy path per request. That
suits an agent probing its one app; the router checks every node every
``router.check_interval`` and should stay small and idle-cheap. For an
``http://`` status or health URL, ``LightStatusProber`` makes the same GET
with asyncio and httptools (the router's own parser) and reads the answer
with the same rules and the same classification (hakit.health.probe): redirects
are not followed, a new connection per probe (a restarted app never gets a
pooled connection to its dead predecessor), no proxy, the body capped. HTTPS
URLs and status commands still go through ``StatusProber`` (``make_prober``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol
from urllib.parse import urlsplit

import httptools

from hakit.config import HealthCheckConfig
from hakit.contract import AppState
from hakit.health.probe import (
    HEALTH_BODY_LIMIT,
    STATUS_BODY_LIMIT,
    Observation,
    StatusProber,
    classify_health_response,
    classify_status_response,
    closed_detail,
    refused_detail,
    substitute,
)

# httpx's Response.is_redirect: these statuses with a Location header.
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Prober(Protocol):
    """What the router's checks use of a prober (StatusProber has the same)."""

    @property
    def target(self) -> str: ...

    async def probe(self) -> Observation: ...

    async def aclose(self) -> None: ...


def make_prober(check: HealthCheckConfig, host: str, port: int, timeout: float) -> Prober:
    """``LightStatusProber`` for an http:// URL, else ``StatusProber``.

    Raises what StatusProber raises for a check it cannot run (ConfigError).
    """
    template = check.status_url or check.url
    if template is not None:
        url = substitute(template, host, port, url=True)
        if urlsplit(url).scheme.lower() == "http":
            return LightStatusProber(check, url, timeout)
    return StatusProber(check, host, port, timeout)


class LightStatusProber:
    """``StatusProber`` for one ``http://`` URL (status_url or url), on asyncio alone."""

    def __init__(self, check: HealthCheckConfig, url: str, timeout: float) -> None:
        self._check = check
        self._url = url
        self._timeout = timeout
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"no host in {url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        # As httpx sends it: the URL's authority (no default port), nothing to pool.
        authority = parts.netloc.rpartition("@")[2]
        if authority.endswith(":80"):
            authority = authority[:-3]
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")

    @property
    def target(self) -> str:
        """What is probed, for messages."""
        return self._url

    async def probe(self) -> Observation:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                state, http_status, detail = await self._get()
        except TimeoutError:
            state, http_status = AppState.TIMEOUT, None
            detail = f"no answer from {self.target} within {self._timeout:g}s"
        return Observation(state, http_status, detail, time.monotonic() - started)

    async def aclose(self) -> None:
        """Nothing to close: each probe has its own connection."""

    async def _get(self) -> tuple[AppState, int | None, str]:
        url = self._url
        is_status = self._check.status_url is not None
        limit = STATUS_BODY_LIMIT if is_status else HEALTH_BODY_LIMIT
        loop = asyncio.get_running_loop()
        answer = _Answer(self._request, limit, loop.create_future())
        try:
            transport, _ = await loop.create_connection(lambda: answer, self._host, self._port)
        except ConnectionRefusedError:
            return AppState.DOWN, None, refused_detail(url)
        except OSError as exc:
            return AppState.DOWN, None, f"cannot connect to {url}: {exc or type(exc).__name__}"
        try:
            problem = await answer.done
        finally:
            transport.abort()
        if problem is not None:
            return (
                AppState.DOWN,
                None,
                closed_detail(url, problem),
            )
        status, body = answer.status, bytes(answer.body[:limit])
        if is_status:
            content_type = answer.header("content-type") or ""
            state, detail = classify_status_response(status, body, content_type)
        else:
            state, detail = classify_health_response(
                status, body, self._check.expect_status, self._check.expect_body
            )
        location = answer.header("location")
        if status in _REDIRECTS and location:
            detail += f" (redirect to {location})"
        return state, status, detail


class _Answer(asyncio.Protocol):
    """One request written, one response read (its head and up to ``limit`` body bytes).

    ``done`` resolves to None once the response is complete (or the body
    reached the limit), else to what went wrong.
    """

    def __init__(self, request: bytes, limit: int, done: asyncio.Future[str | None]) -> None:
        self.done = done
        self.status = 0
        self.body = bytearray()
        self._request = request
        self._limit = limit
        self._headers: list[tuple[str, str]] = []
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.BaseTransport | None = None
        self._in_head = False
        self._head_done = False  # a final (non-1xx) head arrived
        self._until_close = False  # its body ends when the server closes

    def header(self, name: str) -> str | None:
        """A header's value (several joined with ", ", as httpx does), or None."""
        values = [value for key, value in self._headers if key == name]
        return ", ".join(values) if values else None

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish("it switched protocols")
        except httptools.HttpParserError as error:
            self._finish(f"malformed HTTP ({error})")
        else:
            if len(self.body) >= self._limit:
                self._finish(None)  # enough to judge; the rest is not read

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_done and self._until_close and exc is None:
            self._finish(None)  # the close ends this body
        elif not self._head_done:
            self._finish(f"{exc}" if exc else "it closed before sending a response")
        else:
            self._finish(f"{exc}" if exc else "it closed before the end of the body")

    # --- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self._parser.get_status_code()
        if status < 200:
            return  # an interim answer: the final one follows
        self.status = status
        self._head_done = True
        self._until_close = (
            self.header("content-length") is None and self.header("transfer-encoding") is None
        )

    def on_body(self, data: bytes) -> None:
        if len(self.body) < self._limit:
            self.body += data

    def on_message_complete(self) -> None:
        if self._head_done:
            self._finish(None)

    def _finish(self, problem: str | None) -> None:
        if not self.done.done():
            self.done.set_result(problem)
        if self._transport is not None:
            self._transport.close()
