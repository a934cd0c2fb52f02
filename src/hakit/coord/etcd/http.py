"""A small keep-alive HTTP/1.1 client for etcd's JSON gateway: POST a JSON body, read JSON.

Why not ``requests`` (still used for the watch's stream, hakit.coord.etcd.watch): it
costs ~650 µs of CPU per request where ``http.client`` costs ~150 µs (measured on
the 2-core test machine against a local etcd), and an idle agent asks a few
requests every second: that difference was a third of its CPU budget.

One ``Endpoint`` per etcd endpoint: a pool of idle keep-alive connections (any
thread takes one, uses it alone, and gives it back), TLS from the section's files
(``tls_context``). A connection the server closed while it was idle is noticed
before it is used (readable with nothing to read: as urllib3 does) and replaced; a
request that fails on the way is never sent again here (the caller tries the next
endpoint, as before): a transaction is never applied twice by this layer.
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

IDLE_KEPT = 4  # idle connections kept per endpoint


class HttpError(Exception):
    """No answer: the connection was refused, reset or timed out, or TLS failed."""


class Answer:
    """An answer: its status and body (what the transport reads of it)."""

    __slots__ = ("body", "status_code")

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def tls_context(ca_cert: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """Verifying the server (against ``ca_cert``, else the system's CAs), with the
    client certificate when given."""
    context = ssl.create_default_context(cafile=str(ca_cert) if ca_cert is not None else None)
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


class Endpoint:
    """One endpoint's base URL (``http[s]://host:port`` + the API path) and connections."""

    def __init__(self, url: str, api_path: str, context: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"an endpoint needs a host and a port: {url!r}")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._context = context if self._https else None
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self._api = api_path.rstrip("/")
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def get_url(self, path: str) -> str:
        return f"{self.base_url}{self._api}{path}"

    def post(
        self,
        path: str,
        body: dict[str, Any],
        timeout: tuple[float, float],
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """POST ``body`` as JSON to the API's ``path``; ``timeout``: (connect, read)."""
        connect, read = timeout
        data = json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        conn = self._take()
        try:
            if conn is None:
                conn = self._connect(connect)
            assert conn.sock is not None
            conn.sock.settimeout(read)
            conn.request("POST", self._api + path, body=data, headers=sent)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as error:
            if conn is not None:
                conn.close()
            raise HttpError(f"{type(error).__name__}: {error}") from error
        if response.will_close:
            conn.close()
        else:
            self._give(conn)
        return Answer(response.status, payload)

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._context
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        conn.connect()
        return conn

    def _take(self) -> http.client.HTTPConnection | None:
        """An idle connection still open, or None."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            sock = conn.sock
            if sock is not None and not _dropped(sock):
                return conn
            conn.close()

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < IDLE_KEPT:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _dropped(sock: Any) -> bool:
    """An idle keep-alive socket that is readable was closed by the server (or holds
    bytes nobody asked for): not to be used again."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
