"""The agent's admin API against failed authentications, over real loopback connections.

Each failure is logged with the client's address and what was wrong, never the
token sent; after FAILURE_LIMIT failures within FAILURE_WINDOW a client gets 429
(even with the right token) until the oldest failure ages out. Time is the API's
injected clock, moved by the test: nothing here waits for a window to pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from hakit.operator.admin_api import (
    FAILURE_LIMIT,
    FAILURE_WINDOW,
    AdminApi,
    FailedLogins,
    client_of,
)

TOKEN = "0123456789abcdef-admin-token"
GUESS = "not-the-token-but-secret-looking"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Api:
    """A real AdminApi on 127.0.0.1, with a clock the test moves and the operations it ran."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.performed: list[str] = []

        async def perform(operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
            self.performed.append(operation)
            return {"ok": True}

        self.api = AdminApi(TOKEN, perform, FailedLogins(clock=self.clock))
        self.port = 0

    async def request(
        self, token: str | None, *, source: str = "127.0.0.1", scheme: str = "Bearer"
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """GET /status from ``source`` (a loopback address): status, headers, JSON body."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(source, 0)
        )
        auth = f"Authorization: {scheme} {token}\r\n" if token is not None else ""
        writer.write(f"GET /status HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        await writer.drain()
        data = await reader.read()  # the API closes after one answer
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        return int(status_line.split()[1]), headers, json.loads(body)


def serve(scenario: Callable[[Api], Awaitable[None]]) -> Api:
    api = Api()

    async def run() -> None:
        _, api.port = await api.api.start("127.0.0.1", 0)
        try:
            await scenario(api)
        finally:
            await api.api.close()

    asyncio.run(run())
    return api


def test_failed_authentications_are_logged_with_the_address_not_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hakit.admin")

    async def scenario(api: Api) -> None:
        assert (await api.request(GUESS))[0] == 401
        assert (await api.request(None))[0] == 401
        assert (await api.request(TOKEN, scheme="Basic"))[0] == 401
        assert (await api.request(TOKEN))[0] == 200

    api = serve(scenario)
    assert api.performed == ["status"]
    messages = [r.getMessage() for r in caplog.records if r.name == "hakit.admin"]
    assert messages == [
        "admin API: failed authentication from 127.0.0.1 (GET /status: wrong token); "
        f"1 of {FAILURE_LIMIT} allowed in {FAILURE_WINDOW:g}s",
        "admin API: failed authentication from 127.0.0.1 (GET /status: no Authorization "
        f"header); 2 of {FAILURE_LIMIT} allowed in {FAILURE_WINDOW:g}s",
        "admin API: failed authentication from 127.0.0.1 (GET /status: not a Bearer token); "
        f"3 of {FAILURE_LIMIT} allowed in {FAILURE_WINDOW:g}s",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert GUESS not in caplog.text and TOKEN not in caplog.text


def test_repeated_failures_are_refused_until_the_window_passes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hakit.admin")

    async def scenario(api: Api) -> None:
        for _ in range(FAILURE_LIMIT):
            assert (await api.request(GUESS))[0] == 401
            api.clock.now += 1
        # Locked out: even the right token is refused, and nothing is performed.
        status, headers, body = await api.request(TOKEN)
        assert (status, headers["retry-after"]) == (429, str(int(FAILURE_WINDOW) - 5))
        assert "too many failed authentications from 127.0.0.1" in body["error"]
        assert api.performed == []
        # Another client is not affected.
        assert (await api.request(TOKEN, source="127.0.0.2"))[0] == 200
        api.clock.now += 30
        status, headers, _ = await api.request(TOKEN)
        assert (status, headers["retry-after"]) == (429, str(int(FAILURE_WINDOW) - 35))
        # Once the first failure is older than the window, one more try is allowed.
        api.clock.now = 1000.0 + FAILURE_WINDOW
        assert (await api.request(TOKEN))[0] == 200

    api = serve(scenario)
    assert api.performed == ["status", "status"]
    lockouts = [r.getMessage() for r in caplog.records if "refused (429)" in r.getMessage()]
    assert lockouts == [
        f"admin API: 127.0.0.1 is refused (429) for up to {FAILURE_WINDOW:g}s after "
        f"{FAILURE_LIMIT} failed authentications"
    ]


def test_a_success_clears_the_failures() -> None:
    async def scenario(api: Api) -> None:
        for _ in range(2):
            for _ in range(FAILURE_LIMIT - 1):
                assert (await api.request(GUESS))[0] == 401
            assert (await api.request(TOKEN))[0] == 200

    assert serve(scenario).performed == ["status", "status"]


def test_concurrent_guesses_get_no_more_than_the_limit() -> None:
    statuses: list[int] = []

    async def scenario(api: Api) -> None:
        answers = await asyncio.gather(*(api.request(f"{GUESS}{i}") for i in range(20)))
        statuses.extend(status for status, _, _ in answers)

    serve(scenario)
    assert sorted(statuses) == [401] * FAILURE_LIMIT + [429] * (20 - FAILURE_LIMIT)


# --- the bookkeeping ---------------------------------------------------------------------------


def test_failures_are_counted_per_ipv4_address_or_ipv6_64() -> None:
    assert client_of("192.0.2.7") == "192.0.2.7"
    assert client_of("::ffff:192.0.2.7") == "192.0.2.7"  # IPv4 on a dual-stack socket
    assert client_of("2001:db8:1:2:aaaa::1") == client_of("2001:db8:1:2:bbbb::2")
    assert client_of("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_of("2001:db8:1:3::1") != client_of("2001:db8:1:2::1")
    assert client_of("fe80::1%eth0") == "fe80::/64"


def test_the_failure_table_is_bounded() -> None:
    clock = Clock()
    failures = FailedLogins(limit=2, window=60, clock=clock, max_clients=3)
    for client in ("a", "b", "c", "d"):
        failures.failed(client)
        failures.failed(client)
    assert failures.wait("a") == 0  # the oldest client was forgotten first
    assert failures.wait("d") == 60
    clock.now += 61
    assert failures.wait("d") == 0  # aged out
