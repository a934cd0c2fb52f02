"""Headers only a proxy may set never reach a real backend from an untrusted client.

A client that sends X-Real-IP, CF-Connecting-IP, X-Original-URL and the like
through the router (tests/support/router_harness.py: real sockets, a real HTTP
backend that records what it received) must not get them to the app, which
may believe them; a trusted proxy's are forwarded as it sent them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from hakit.config import Config
from hakit.router.headers import PROXY_ONLY
from tests.support.router_harness import Backend, ClusterHolder, RouterThread, make_config

SPOOFED = {
    "X-Real-IP": "10.9.9.9",
    "True-Client-IP": "10.9.9.9",
    "X-Client-IP": "10.9.9.9",
    "X-Cluster-Client-IP": "10.9.9.9",
    "CF-Connecting-IP": "10.9.9.9",
    "Fastly-Client-IP": "10.9.9.9",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Server": "intranet.example",
    "X-Forwarded-Scheme": "https",
    "X-Forwarded-Ssl": "on",
    "X-Forwarded-Prefix": "/internal",
    "X-Original-URL": "/admin/delete-all",
    "x-rewrite-url": "/admin/delete-all",
    "X-Forwarded-Host": "evil.example",  # replaced by the router's own
}


def send(port: int, lines: list[str]) -> bytes:
    """One request as raw header lines (the names exactly as written); the answer's head."""
    request = "GET /whoami HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, "the router closed the connection without answering"
            answer += chunk
    return answer


def trusting(cfg: Config) -> Config:
    router = cfg.router.model_copy(update={"trusted_proxies": ("127.0.0.0/8",)})
    return cfg.model_copy(update={"router": router})


def test_every_proxy_only_header_is_tested() -> None:
    assert {name.lower().encode() for name in SPOOFED} == PROXY_ONLY | {b"x-forwarded-host"}


def test_a_backend_never_sees_what_an_untrusted_client_claims(
    tmp_path: Path,
    backends: Callable[..., Backend],
    cluster: ClusterHolder,
    router_for: Callable[..., RouterThread],
) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(make_config(tmp_path, {"n1": n1.port}))
    claims = [f"{name}: {value}" for name, value in SPOOFED.items()]
    # The usual request, and one whose Connection names another header (the general path).
    for extra in ([], ["Connection: X-Named", "X-Named: 1"]):
        head = send(router.port, ["Host: app.example", *claims, "X-Kept: yes", *extra])
        assert head.startswith(b"HTTP/1.1 200 ")
        seen = n1.seen[-1]
        leaked = [name for name in SPOOFED if name != "X-Forwarded-Host" and seen.header(name)]
        assert leaked == []
        assert seen.header("X-Forwarded-Host") == ["app.example"]
        assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
        assert seen.header("X-Kept") == ["yes"]
        assert not any("10.9.9.9" in value or "/admin" in value for _, value in seen.headers)
    # A look-alike spelling is refused, not forwarded under a name the app may read the same.
    head = send(router.port, ["Host: app.example", "X_Real_IP: 10.9.9.9"])
    assert head.startswith(b"HTTP/1.1 400 ")
    assert len(n1.seen) == 2


def test_a_trusted_proxys_claims_reach_the_backend_as_sent(
    tmp_path: Path,
    backends: Callable[..., Backend],
    cluster: ClusterHolder,
    router_for: Callable[..., RouterThread],
) -> None:
    n1 = backends("n1")
    cluster.active("n1", 1)
    router = router_for(trusting(make_config(tmp_path, {"n1": n1.port})))
    claims = [f"{name}: {value}" for name, value in SPOOFED.items()]
    assert send(router.port, ["Host: app.example", *claims]).startswith(b"HTTP/1.1 200 ")
    seen = n1.seen[-1]
    for name, value in SPOOFED.items():
        assert seen.header(name) == [value], name
