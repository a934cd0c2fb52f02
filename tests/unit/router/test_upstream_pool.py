"""Idle backend connections expire by the router's periodic sweep (no timer per request)."""

from __future__ import annotations

import time

from hakit.config import NodeConfig
from hakit.router.limits import ProxyLimits
from hakit.router.upstream import UpstreamConnection, UpstreamPool


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


NODE = NodeConfig(name="n1", host="127.0.0.1", port=8080)


def pooled(pool: UpstreamPool, limits: ProxyLimits) -> tuple[UpstreamConnection, FakeTransport]:
    conn = UpstreamConnection(NODE, limits)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    pool._open.add(conn)
    conn.on_lost = pool._forget
    pool.put(conn)
    return conn, transport


def test_idle_connections_expire_at_the_sweep_after_the_timeout() -> None:
    limits = ProxyLimits(upstream_idle_timeout=30.0)
    pool = UpstreamPool(limits)
    old, old_transport = pooled(pool, limits)
    old.idle_since -= 31  # idle longer than the timeout
    fresh, fresh_transport = pooled(pool, limits)
    assert pool.idle_count(NODE) == 2
    pool.sweep(time.monotonic())
    assert old_transport.closed and not fresh_transport.closed
    assert pool.idle_count(NODE) == 1
    assert pool.take(NODE) is fresh  # the most recently used is reused first
    assert pool.take(NODE) is None


def test_the_pool_keeps_at_most_its_limit_per_backend() -> None:
    limits = ProxyLimits(upstream_idle_per_backend=2)
    pool = UpstreamPool(limits)
    transports = [pooled(pool, limits)[1] for _ in range(3)]
    assert pool.idle_count(NODE) == 2
    assert [t.closed for t in transports] == [False, False, True]


def test_the_sweep_interval_covers_the_idle_timeout() -> None:
    limits = ProxyLimits(
        header_timeout=60,
        body_idle_timeout=60,
        client_idle_timeout=60,
        response_timeout=60,
        upstream_idle_timeout=0.4,
    )
    assert limits.sweep_interval == 0.1
