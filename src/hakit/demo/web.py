"""Request and response values the endpoints work with, and request body reading.

Bodies are read as a stream (``Content-Length`` or chunked, which a router may
forward), so a large upload goes to disk without being held in memory.
"""

from __future__ import annotations

import io
import json
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any

from hakit.errors import HakitError

CHUNK = 256 * 1024
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


class HttpError(HakitError):
    """Ends a request with ``status`` and a JSON ``{"error": message}`` body."""

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.status = status
        self.headers = headers
        super().__init__(message)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    file: Path | None = None  # streamed instead of ``body`` when set
    after_send: Callable[[], None] | None = None  # e.g. a crash fault: answer, then die


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
    return Response(status, body, JSON, headers or [])


def error_response(
    status: int, message: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    return json_response(status, {"error": message}, headers)


class Body:
    """The request body, readable once, as chunks or whole."""

    def __init__(self, rfile: io.BufferedIOBase, headers: Message) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        raw_length = headers.get("Content-Length")
        try:
            self._length = int(raw_length) if raw_length is not None else 0
        except ValueError:
            self._length = -1
        self.consumed = not self._chunked and self._length == 0

    def chunks(self) -> Iterator[bytes]:
        if self.consumed:
            return
        if self._length < 0:
            raise HttpError(400, "Content-Length is not a number")
        yield from (self._chunked_parts() if self._chunked else self._exact(self._length))
        self.consumed = True

    def read(self, limit: int) -> bytes:
        data = bytearray()
        for chunk in self.chunks():
            data += chunk
            if len(data) > limit:
                raise HttpError(413, f"request body larger than {limit} bytes")
        return bytes(data)

    def _exact(self, length: int) -> Iterator[bytes]:
        remaining = length
        while remaining > 0:
            chunk = self._rfile.read(min(CHUNK, remaining))
            if not chunk:
                raise HttpError(400, "request body ended before Content-Length bytes")
            remaining -= len(chunk)
            yield chunk

    def _chunked_parts(self) -> Iterator[bytes]:
        while True:
            size_line = self._rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(400, "malformed chunked request body") from None
            if size == 0:
                for _ in range(100):  # trailers end with an empty line
                    if self._rfile.readline(8192) in (b"\r\n", b"\n", b""):
                        return
                raise HttpError(400, "too many trailer lines in chunked body")
            yield from self._exact(size)
            self._rfile.readline(1024)  # the CRLF after each chunk


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Message
    body: Body
    match: re.Match[str] | None = None  # set by the router table

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    def cookie(self, name: str) -> str | None:
        try:
            jar = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel else None

    def fields(self, limit: int = 16 * 1024 * 1024) -> dict[str, Any]:
        """A JSON object or form fields. ``curl -d '{...}'`` sends JSON labelled as a
        form, so a form body that is a JSON object is read as JSON."""
        raw = self.body.read(limit)
        text = raw.decode("utf-8", errors="replace")
        if self.content_type == JSON or (
            self.content_type == FORM and text.lstrip().startswith("{")
        ):
            try:
                value = json.loads(text or "{}")
            except json.JSONDecodeError as exc:
                raise HttpError(400, f"request body is not valid JSON: {exc}") from None
            if not isinstance(value, dict):
                raise HttpError(400, "request body must be a JSON object")
            return value
        return dict(urllib.parse.parse_qsl(text))


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    """``/path?a=1`` -> (``/path``, {"a": "1"})."""
    path, _, query = target.partition("?")
    return path, dict(urllib.parse.parse_qsl(query))
