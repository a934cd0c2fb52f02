"""``[router]`` (the HTTP reverse proxy) and ``[[tcp_proxy]]`` (plain TCP failover proxies)."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from hakit.config.problems import error_at_key
from hakit.config.sections.base import _COOKIE_NAME, _NODE_NAME, _Section
from hakit.config.values import (
    AccessLogFormat,
    Balance,
    ByteCount,
    Duration,
    PositiveDuration,
    Size,
    Sticky,
    StickyDown,
    TcpCheck,
    parse_listen,
)


class RouterConfig(_Section):
    listen: str = "127.0.0.1:8080"  # host:port
    sticky: Sticky = Sticky.LB_COOKIE
    cookie_name: str = Field(default="ROUTEID", pattern=_COOKIE_NAME)
    app_cookie_name: str = Field(default="JSESSIONID", pattern=_COOKIE_NAME)
    retry_after: Duration = 30.0  # Retry-After on the maintenance page
    # Requests not yet sent to any node wait this long for one during a failover or
    # switchover before the maintenance page (0: no hold, the 503 page at once).
    hold_timeout: Duration = Field(
        default=15.0,
        description="how long requests not yet sent to any node wait for one "
        "during a failover or switchover before the maintenance page (0s: no hold)",
    )
    # A held request's body is read into memory up to this; larger: the 503 page at once.
    hold_body_limit: Size = Field(
        default=ByteCount(1 << 20),
        description="the largest request body the router holds in memory while it waits for "
        'a node during a failover or switchover (e.g. "1MiB"); larger bodies get the 503 page '
        "at once (not processed, please resend)",
    )
    state_poll_interval: PositiveDuration = 0.1  # how often the router reads the coordination store
    # --- stickiness and balancing (the router issue) ---
    # HMAC key for the lb-cookie; None: generated once into <state_dir>/router.secret (0600).
    secret: str | None = Field(default=None, min_length=16)
    sticky_down: StickyDown = StickyDown.MOVE
    sticky_hold: Duration = 10.0  # with sticky_down = "hold"
    drain_timeout: Duration = 300.0  # a draining node keeps its sticky users this long at most
    balance: Balance = Balance.LEAST_OUTSTANDING
    slowstart: Duration = 0.0  # a node coming back ramps its share of new users over this long
    # --- the router's own health checks of each node's /status (shared with the manager) ---
    check_interval: PositiveDuration = 1.0
    # --- limits and timeouts (Apache-like defaults) ---
    max_header_fields: int = Field(default=100, ge=1)
    max_header_bytes: int = Field(default=8190, ge=256)  # one request line or header field
    header_timeout: PositiveDuration = 10.0  # whole request head must arrive within (slowloris)
    body_idle_timeout: PositiveDuration = 30.0  # no request body byte for this long -> 408
    connect_timeout: PositiveDuration = 5.0  # to a backend
    response_timeout: PositiveDuration = 300.0  # backend's response head must start within
    client_idle_timeout: PositiveDuration = 60.0  # keep-alive client connection with no request
    # Peers whose X-Forwarded-For/Forwarded we extend; from anyone else they are overwritten.
    trusted_proxies: tuple[str, ...] = ()  # CIDRs, e.g. ["10.0.0.0/8"]
    # --- TLS termination (both files or neither) ---
    tls_cert: Path | None = None
    tls_key: Path | None = None
    redirect_http: str | None = None  # host:port answering 308 to https://
    # --- observability ---
    access_log: str | None = None  # a file path, "-" for stderr, None: off
    access_log_format: AccessLogFormat = AccessLogFormat.COMBINED
    admin_listen: str | None = None  # host:port serving /metrics and /nodes (Prometheus)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("redirect_http", "admin_listen")
    @classmethod
    def _optional_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"{json.dumps(network)} is not an IP network; expected a CIDR such as "
                    '"10.0.0.0/8" or an address such as "192.0.2.7"'
                ) from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> RouterConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "tls_cert and tls_key go together; expected both (TLS termination) or neither"
            )
        if self.redirect_http is not None and self.tls_cert is None:
            raise ValueError("redirect_http redirects to HTTPS; expected tls_cert and tls_key too")
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        """``listen`` as (host, port); IPv6 brackets removed."""
        return parse_listen(self.listen)

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)


class TcpProxyConfig(_Section):
    """A plain TCP failover proxy for a dependency (e.g. several LDAP mirrors)."""

    name: str = Field(pattern=_NODE_NAME)
    listen: str  # host:port
    upstreams: tuple[str, ...] = Field(min_length=1)  # host:port, in order of preference
    check: TcpCheck = TcpCheck.TCP
    send: str = ""  # with check = "send-expect"; "\\r\\n" escapes as in TOML strings
    expect: str = ""  # regex the answer must match
    interval: PositiveDuration = 2.0
    timeout: PositiveDuration = 2.0
    fall: int = Field(default=3, ge=1)
    rise: int = Field(default=2, ge=1)
    failback: bool = False  # return to an earlier upstream when it is healthy again
    connect_timeout: PositiveDuration = 3.0

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for upstream in value:
            parse_listen(upstream)
        return value

    @field_validator("expect")
    @classmethod
    def _expect(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"{json.dumps(value)} is not a valid regex ({error})") from None
        return value

    @model_validator(mode="after")
    def _send_expect(self) -> TcpProxyConfig:
        # Without a pattern a send-expect check only tests the connect: say so, not pass.
        if self.check is TcpCheck.SEND_EXPECT and not self.expect:
            raise error_at_key(
                "expect",
                'check = "send-expect" needs expect (a regex the answer must match); '
                'expected e.g. expect = "^220 " or check = "tcp"',
            )
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def upstream_addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(parse_listen(u) for u in self.upstreams)
