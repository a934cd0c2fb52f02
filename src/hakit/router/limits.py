"""Tunables of the proxy's data plane (not yet TOML keys: defaults suit most sites)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    # Above this many bytes queued for a peer, we stop reading from the other side
    # (backpressure); below the low mark we resume. Bounds memory per exchange.
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    # Request body bytes held while the backend connection is being opened.
    request_buffer: int = 64 * 1024
    # Request line plus headers; larger -> 431.
    max_head_bytes: int = 64 * 1024
    # A response may end before its request body has arrived (a canned page, an
    # early error); up to this many unread body bytes are drained to keep the
    # client connection, more and the connection is closed instead.
    drain_limit: int = 64 * 1024
    connect_timeout: float = 5.0
    client_idle_timeout: float = 60.0  # keep-alive client connection with no request
    upstream_idle_timeout: float = 30.0  # pooled backend connection unused
    upstream_idle_per_backend: int = 32
    # A passive down mark also ends after this long, in case an agent never republishes.
    down_mark_max_age: float = 5.0
