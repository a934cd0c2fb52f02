"""Tunables of the proxy's data plane: sizes, timeouts, trusted peers.

``ProxyLimits.from_config`` takes the ``[router]`` keys; the fields without a
key have defaults that suit most sites.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from hakit.config import RouterConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_HEAD_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    # Above this many bytes queued for a peer, we stop reading from the other side
    # (backpressure); below the low mark we resume. Bounds memory per exchange.
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    # Request body bytes held while the backend connection is being opened.
    request_buffer: int = 64 * 1024
    # Apache's LimitRequestFields / LimitRequestFieldSize / LimitRequestLine:
    # more header fields, or one field (or the request line) longer -> 431 (414).
    max_header_fields: int = 100
    max_header_bytes: int = 8190
    # The whole head (request line, fields, or a chunked body's trailers); larger
    # -> 431. Bounds what one connection makes us hold while a head arrives.
    max_head_bytes: int = _HEAD_BYTES
    # A response may end before its request body has arrived (a canned page, an
    # early error); up to this many unread body bytes are drained to keep the
    # client connection, more and the connection is closed instead.
    drain_limit: int = 64 * 1024
    connect_timeout: float = 5.0
    # The backend's response head must begin within this long after the request was
    # sent (while a request body is still being sent, without progress for this long).
    response_timeout: float = 300.0
    # A request head must arrive in full within this long of its first byte (a new
    # connection: of being accepted); else 408 and close (slowloris).
    header_timeout: float = 10.0
    # A request body with no byte for this long (while we are reading) -> 408 / close.
    body_idle_timeout: float = 30.0
    client_idle_timeout: float = 60.0  # keep-alive client connection with no request
    upstream_idle_timeout: float = 30.0  # pooled backend connection unused
    # Idle connections kept per backend. Fewer than the concurrent requests means a
    # new backend connection for part of the requests under load (measured: with 50
    # clients and 32 kept, ~15 % of requests reconnected; benchmarks/RESULTS.md).
    upstream_idle_per_backend: int = 256
    # A passive down mark also ends after this long, in case an agent never republishes.
    down_mark_max_age: float = 5.0
    # Peers whose X-Forwarded-*/Forwarded headers we extend; anyone else's are replaced.
    trusted_networks: tuple[Network, ...] = ()

    @classmethod
    def from_config(cls, router: RouterConfig) -> ProxyLimits:
        """The limits a ``[router]`` section asks for (defaults for the rest)."""
        return cls(
            max_header_fields=router.max_header_fields,
            max_header_bytes=router.max_header_bytes,
            # The whole head must hold the limits above with room to spare, as in Apache.
            max_head_bytes=max(_HEAD_BYTES, 2 * router.max_header_bytes),
            connect_timeout=router.connect_timeout,
            response_timeout=router.response_timeout,
            header_timeout=router.header_timeout,
            body_idle_timeout=router.body_idle_timeout,
            client_idle_timeout=router.client_idle_timeout,
            trusted_networks=router.trusted_networks,
        )

    @property
    def sweep_interval(self) -> float:
        """How often client connections' timeouts are checked (they fire up to this late)."""
        shortest = min(
            self.header_timeout,
            self.body_idle_timeout,
            self.client_idle_timeout,
            self.response_timeout,  # swept too (exchange.sweep)
            self.upstream_idle_timeout,  # the pool's idle expiry (UpstreamPool.sweep)
        )
        return min(max(shortest / 4, 0.05), 1.0)
