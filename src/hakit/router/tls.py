"""TLS termination for the router's listener, and a plain-HTTP port that redirects to it.

``server_context`` builds the listener's ``ssl.SSLContext`` from router.tls_cert
and router.tls_key with modern defaults: TLS 1.2 or later, forward-secret AEAD
ciphers only for TLS 1.2 (Mozilla's "intermediate" list; TLS 1.3 suites are all
strong), the server's cipher order, no compression (CRIME), no renegotiation,
ALPN offering http/1.1 (the only protocol spoken here). Every problem with the
files is reported naming the file and what was expected.

``RedirectProtocol`` serves router.redirect_http: every request gets
``308 Permanent Redirect`` to the same path on https:// (308 keeps the method
and body, unlike 301/302), for a valid Host only, and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import cast

import httptools

from hakit.errors import HakitError
from hakit.router.headers import (
    BadRequest,
    origin_form,
    valid_host,
)
from hakit.router.limits import ProxyLimits
from hakit.router.pages import error_page
from hakit.router.responses import (
    encode_head,
)

log = logging.getLogger("hakit.router")

# Mozilla "intermediate" (server side TLS 5.7) for TLS 1.2: ECDHE/DHE key exchange, AEAD only.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)


def _read_pem(path: Path, what: str, key: str, marker: bytes) -> None:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise HakitError(
            f"router: cannot read the TLS {what} file {path} ({error.strerror or error}); "
            f"expected a readable PEM file (router.{key})"
        ) from None
    if marker not in data:
        raise HakitError(
            f"router: the TLS {what} file {path} holds no PEM {what} "
            f"(no '{marker.decode()}' line); expected a PEM file (router.{key})"
        )


class _EncryptedKey(Exception):
    """OpenSSL asked for a passphrase (never prompt on the terminal: fail instead)."""


def _encrypted_key() -> bytes:
    raise _EncryptedKey()


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The listener's TLS context; HakitError naming the file when one is unusable."""
    _read_pem(cert, "certificate", "tls_cert", b"-----BEGIN CERTIFICATE-----")
    _read_pem(key, "key", "tls_key", b"PRIVATE KEY-----")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    )
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key, password=_encrypted_key)
    except _EncryptedKey:
        raise HakitError(
            f"router: the TLS key {key} is encrypted with a passphrase; expected an "
            "unencrypted PEM key readable only by the router's user (chmod 600)"
        ) from None
    except ssl.SSLError as error:
        if getattr(error, "reason", None) == "KEY_VALUES_MISMATCH":
            raise HakitError(
                f"router: the TLS key {key} does not belong to the certificate {cert}; "
                "expected the private key the certificate was issued for (router.tls_key)"
            ) from None
        raise HakitError(
            f"router: cannot load the TLS certificate {cert} with the key {key} ({error}); "
            "expected a PEM certificate (chain) and its PEM private key"
        ) from None
    return context


# --- the HTTP -> HTTPS redirect ------------------------------------------------------------


def redirect_location(host: bytes | None, target: bytes, https_port: int) -> bytes:
    """The https:// URL for a request to ``host`` (Host value) and ``target``; BadRequest if invalid."""
    target, authority = origin_form(target)
    host = authority if authority is not None else host
    if not host or not valid_host(host):
        raise BadRequest("a redirect needs a valid Host")
    name = host
    if not host.endswith(b"]") and b":" in host:  # drop the port (an IPv6 literal keeps its colons)
        name = host.rpartition(b":")[0]
    if not name:
        raise BadRequest("a redirect needs a host name")
    port = b"" if https_port == 443 else b":%d" % https_port
    return b"https://" + name + port + target


class RedirectProtocol(asyncio.Protocol):
    """One connection to router.redirect_http: answers its first request with 308, then closes."""

    def __init__(self, https_port: int, limits: ProxyLimits) -> None:
        self._https_port = https_port
        self._limits = limits
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._url: list[bytes] = []
        self._host: bytes | None = None
        self._hosts = 0
        self._fed = 0
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._limits.header_timeout, self._timed_out)

    def _timed_out(self) -> None:
        if self._fed:
            self._answer(408, None)
        elif self._transport is not None:  # never said anything: no answer owed
            self._done = True
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._done = True

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._fed += len(data)
        if self._fed > self._limits.max_head_bytes:
            self._answer(431, None)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # answered in on_headers_complete
        except httptools.HttpParserError:
            self._answer(400, None)

    # --- httptools callbacks ---

    def on_url(self, part: bytes) -> None:
        self._url.append(part)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            self._host = value
            self._hosts += 1

    def on_headers_complete(self) -> None:
        if self._hosts > 1:
            self._answer(400, None)
            return
        try:
            location = redirect_location(self._host, b"".join(self._url), self._https_port)
        except BadRequest:
            self._answer(400, None)
            return
        self._answer(308, location)

    def _answer(self, status: int, location: bytes | None) -> None:
        if self._done or self._transport is None:
            return
        self._done = True
        if location is None:
            response = error_page(status).encode(keep_alive=False)
        else:
            response = encode_head(
                b"HTTP/1.1 308 Permanent Redirect",
                (
                    (b"Location", location),
                    (b"Content-Length", b"0"),
                    (b"Connection", b"close"),
                ),
            )
        self._transport.write(response)
        self._transport.close()
