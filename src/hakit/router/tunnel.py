"""Upgrade (WebSocket and any other protocol): the headers, then a byte tunnel.

A request with ``Connection: upgrade`` and ``Upgrade: <protocols>`` is sent to
the backend with both headers (the only hop-by-hop headers ever forwarded).
If the backend answers ``101 Switching Protocols``, the router relays the 101
and from then on copies bytes both ways without looking at them: the client
and backend transports are handed to a ``Tunnel``. Any other answer is relayed
like a normal response, and the client connection is closed after it (its
parser stopped at the upgrade request).

The tunnel keeps memory bounded the same way the HTTP exchange does: when
one side's write buffer passes its high-water mark, reading from the other
side pauses until it drains. An end of stream from one side is passed on as a
half-close (``write_eof``) when the other transport can do that (TCP), so
protocols that close one direction first keep working; the tunnel ends when
both directions ended or either connection is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from hakit.router.headers import Header, end_to_end, header_value

log = logging.getLogger("hakit.router")


# --- decisions (pure) --------------------------------------------------------------


def requested_upgrade(version: str, headers: Sequence[Header]) -> bytes | None:
    """The Upgrade value of an HTTP/1.1 request that asks to switch protocols, else None.

    The caller knows from the parser that ``Connection`` named ``upgrade``;
    HTTP/1.0 has no Upgrade (RFC 9110 7.8), so such requests go on without it.
    """
    if version != "1.1":
        return None
    value = header_value(headers, b"upgrade")
    if value is None or not value.strip():
        return None
    return value.strip()


def upgrade_request_headers(token: bytes) -> list[Header]:
    """The hop-by-hop headers that carry an upgrade request to the backend."""
    return [(b"Connection", b"upgrade"), (b"Upgrade", token)]


def switching_response_headers(headers: Sequence[Header]) -> list[Header] | None:
    """The backend's 101 headers as the client receives them, or None if unusable.

    RFC 9110 7.8: a 101 names the protocol switched to in Upgrade, and Upgrade
    always travels with ``Connection: upgrade``; without them the answer cannot
    be relayed faithfully.
    """
    token = header_value(headers, b"upgrade")
    if token is None or not token.strip():
        return None
    return [*end_to_end(headers), *upgrade_request_headers(token.strip())]


# --- the byte tunnel (I/O) -------------------------------------------------------


class _Side(asyncio.Protocol):
    """One of the tunnel's two connections: what it reads is written to the other."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, name: str) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.name = name
        self.peer: _Side = self  # set by Tunnel once both sides exist
        self.eof = False  # this side finished sending
        self.read = 0  # bytes read from this side

    def data_received(self, data: bytes) -> None:
        self.read += len(data)
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        return self.tunnel.side_eof(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.side_lost(self, exc)

    def pause_writing(self) -> None:
        # Our peer sends faster than this side can take: stop reading the peer.
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


class UpgradeRefused(Exception):
    """The backend's 101 cannot be relayed (no Upgrade header, or nothing asked for it)."""


class Tunnel:
    """Copies bytes between a client and a backend connection until both ended.

    Takes over both transports (``set_protocol``); ``client_rest`` and
    ``backend_rest`` are bytes each side sent after its HTTP head, read before
    the switch. ``on_closed`` runs once, when both connections are closed.
    """

    def __init__(
        self,
        client: asyncio.Transport,
        backend: asyncio.Transport,
        *,
        client_rest: bytes = b"",
        backend_rest: bytes = b"",
        high_water: int,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self.client = _Side(self, client, "client")
        self.backend = _Side(self, backend, "backend")
        self.client.peer, self.backend.peer = self.backend, self.client
        self._on_closed = on_closed
        self._lost: set[str] = set()
        self.closed = False
        for side in (self.client, self.backend):
            side.transport.set_protocol(side)
        if backend_rest:
            self.backend.data_received(backend_rest)
        if client_rest:
            self.client.data_received(client_rest)
        for side in (self.client, self.backend):
            if side.transport.is_closing():
                continue
            # A pause the HTTP side asked for is not ours to keep; a full buffer is.
            if side.peer.transport.get_write_buffer_size() > high_water:
                side.transport.pause_reading()
            else:
                side.transport.resume_reading()

    @property
    def bytes_from_client(self) -> int:
        return self.client.read

    @property
    def bytes_from_backend(self) -> int:
        return self.backend.read

    def abort(self) -> None:
        """Drop both connections now."""
        self.client.transport.abort()
        self.backend.transport.abort()

    def side_eof(self, side: _Side) -> bool:
        """``side`` will send no more; returns whether to keep its transport open."""
        peer = side.peer.transport
        if side.peer.eof or not peer.can_write_eof() or peer.is_closing():
            # Both directions are done, or the other side cannot half-close.
            self._close_both()
            return False
        peer.write_eof()  # pass the half-close on; the other direction still flows
        return True

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        self._lost.add(side.name)
        if exc is not None:
            log.debug("tunnel: %s connection lost: %r", side.name, exc)
        # Whatever was already read from the lost side still reaches the other: close, not abort.
        side.peer.transport.close()
        if len(self._lost) == 2 and not self.closed:
            self.closed = True
            if self._on_closed is not None:
                self._on_closed()

    def _close_both(self) -> None:
        self.client.transport.close()
        self.backend.transport.close()


def open_tunnel(
    client: asyncio.Transport | None,
    backend: asyncio.Transport | None,
    *,
    client_rest: bytes,
    backend_rest: bytes,
    high_water: int,
    on_closed: Callable[[], None],
) -> Tunnel | None:
    """A ``Tunnel`` between both transports once a 101 was relayed; None (the other one
    aborted) when either connection is already gone."""
    if client is None or backend is None:
        if client is not None:
            client.abort()
        if backend is not None:
            backend.abort()
        return None
    return Tunnel(
        client,
        backend,
        client_rest=client_rest,
        backend_rest=backend_rest,
        high_water=high_water,
        on_closed=on_closed,
    )
